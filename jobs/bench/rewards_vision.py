"""Vision cases for `python -m jobs.bench rewards`: `clip` (transformers backend) and `image_reward`, tiny, CPU.

`jobs/bench/rewards.py` imports this module and appends `bench_cases()` to its table. Each case writes a tiny
random-weight model to a temporary directory in its `setup` (`rewards.blip.tiny`), so nothing is downloaded.
The table's `1-call/batch` column is the one-at-a-time over batched per-sample ratio; the
`image_reward/tiny batch_size=1` row runs one image per forward pass (how the PyPI package scores), so the
two `image_reward` rows side by side show what batching the forward pass buys, apart from per-call overhead.
The open_clip backend is not benched here: it needs the vision environment (see `.ci/vision_env.sh`).

Run just these: `python -m jobs.bench rewards --only image_reward` (or `--only clip`).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

import rewards
from jobs.bench.rewards import BenchCase
from rewards import Sample

PROMPTS = ["a photo of a cat", "red car at night", "an old house by the sea", "a dog on the beach at sunset"]
IMAGE_SHAPE = (96, 128)  # H, W: resized and cropped to the tiny models' 32 px


def t2i_samples(n: int) -> list[Sample]:
    """n distinct (prompt, random image) samples."""
    rng = np.random.default_rng(0)
    return [
        Sample(
            task="t2i",
            prompt=f"{PROMPTS[i % len(PROMPTS)]} #{i}",
            response="",
            image=rng.integers(0, 256, size=(*IMAGE_SHAPE, 3), dtype=np.uint8),
        )
        for i in range(n)
    ]


@contextlib.contextmanager
def tiny_image_reward() -> Iterator[dict[str, Any]]:
    from rewards.blip.tiny import write_tiny_image_reward

    with tempfile.TemporaryDirectory(prefix="bench_image_reward_") as directory:
        yield {"path": str(write_tiny_image_reward(Path(directory)))}


@contextlib.contextmanager
def tiny_clip() -> Iterator[dict[str, Any]]:
    from rewards.blip.tiny import write_tiny_clip

    with tempfile.TemporaryDirectory(prefix="bench_clip_") as directory:
        yield {"path": str(write_tiny_clip(Path(directory)))}


def bench_cases() -> list[BenchCase]:
    return [
        BenchCase(
            "clip/transformers-tiny",
            t2i_samples,
            lambda ctx: rewards.get("clip", path=ctx["path"], backend="transformers", batch_size=32),
            setup=tiny_clip,
            note="CLIPModel 2+2 layers, 32 px; batch_size 32",
        ),
        BenchCase(
            "image_reward/tiny",
            t2i_samples,
            lambda ctx: rewards.get("image_reward", path=ctx["path"], batch_size=32),
            setup=tiny_image_reward,
            note="native BLIP 2+2 layers, 32 px; batch_size 32",
        ),
        BenchCase(
            "image_reward/tiny batch_size=1",
            t2i_samples,
            lambda ctx: rewards.get("image_reward", path=ctx["path"], batch_size=1),
            setup=tiny_image_reward,
            note="one image per forward, as the package",
        ),
    ]
