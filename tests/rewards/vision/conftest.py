"""Fixtures for the vision rewards (`clip`, `image_reward`): tiny random models on disk, test images.

Two environments run these tests:
- the core `.venv` runs everything not marked `vision` (transformers CLIP backend, native ImageReward);
- the isolated `.venv-vision` (built by `.ci/vision_env.sh`) runs `-m vision`: the open_clip backend and the
  parity test against the PyPI `image-reward` package. Those tests skip themselves where open_clip or the
  package is not installed, so the core environment never imports torchvision.
In the vision environment the other tests run too (`pytest tests/rewards/vision` without `-m vision`): that
checks the transformers CLIP backend and the tokenizer path against transformers 4.x. For that the torchvision
shim is applied first (a no-op where torchvision is absent), since transformers 4.x imports torchvision when
it is installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rewards.base import Sample
from rewards.clip import ensure_torchvision_importable

ensure_torchvision_importable()

REPO_ROOT = Path(__file__).resolve().parents[3]
HAS_OPEN_CLIP = importlib.util.find_spec("open_clip") is not None
HAS_IMAGE_REWARD_PACKAGE = importlib.util.find_spec("ImageReward") is not None

needs_open_clip = pytest.mark.skipif(
    not HAS_OPEN_CLIP,
    reason="open_clip is not installed here; it runs in .venv-vision (bash .ci/vision_env.sh)",
)
needs_image_reward_package = pytest.mark.skipif(
    not HAS_IMAGE_REWARD_PACKAGE,
    reason="the image-reward package is not installed here; it runs in .venv-vision (bash .ci/vision_env.sh)",
)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vision: needs the isolated vision environment (.venv-vision)")


def random_image(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth-ish random RGB image (uint8 HxWx3): noise plus gradients, so resizing matters."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 255 / max(width - 1, 1), ys * 255 / max(height - 1, 1), (xs + ys) % 256], axis=-1)
    noise = rng.normal(0, 40, size=(height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


HOSTILE_TEXTS = [
    "",
    " \t\n",
    "a" * 100_000,
    "cat " * 25_000,
    "{" * 5000 + "}" * 10,
    "\\frac{" * 2000 + "x" + "}" * 2000,
    "1e999999999 ** 10**10**10",
    "\udcff\ud800 broken \udfff utf-8",
    "\x00\x01\x02 control",
    "日本語のテキスト 🐱🐶 emoji",
    "[CLS] [SEP] [PAD] [MASK] [DEC] [ENC] <|endoftext|> <|startoftext|>",
]


def bypass_sample(image) -> Sample:
    sample = Sample(task="t2i", prompt="a cat", response="a cat")
    object.__setattr__(sample, "image", image)
    return sample


def odd_image_samples() -> list[Sample]:
    valid_but_odd = [
        np.zeros((0, 5, 3), np.uint8),
        np.zeros((5, 0, 3), np.uint8),
        np.zeros((1, 1, 3), np.uint8),
        np.full((1, 500, 3), 255, np.uint8),  # aspect ratio 500
        np.full((3, 90, 3), 7, np.uint8),  # aspect ratio 30: scorable
        random_image(64, 64, 0)[::2, ::-1],  # non-contiguous view
        np.zeros((2000, 2, 3), np.uint8),
    ]
    samples = [Sample(task="t2i", prompt="a cat", response="a cat", image=image) for image in valid_but_odd]
    bypassing = [
        np.zeros((8, 8), np.uint8),
        np.zeros((8, 8, 4), np.uint8),
        np.zeros((8, 8, 3), np.float32),
        np.full((8, 8, 3), np.nan),
        np.zeros((2, 8, 8, 3), np.uint8),
        "image.png",
        [[0, 0, 0]],
        Image.new("RGBA", (9, 9)),  # accepted (converted to RGB)
        Image.new("RGB", (0, 0)),
        object(),
    ]
    return samples + [bypass_sample(image) for image in bypassing]


ODD_IMAGE_SCORABLE = [False, False, True, False, True, True, False] + [False] * 7 + [True, False, False]
"""Which of `odd_image_samples()` a vision reward scores: 1x1, aspect 30, the non-contiguous view, RGBA PIL."""


def t2i_samples(prompts: list[str], shapes: list[tuple[int, int]]) -> list[Sample]:
    return [
        Sample(task="t2i", prompt=prompt, response="", image=random_image(h, w, seed))
        for seed, (prompt, (h, w)) in enumerate(zip(prompts, shapes))
    ]


@pytest.fixture(scope="session")
def tiny_image_reward_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rewards.blip.tiny import write_tiny_image_reward

    return write_tiny_image_reward(tmp_path_factory.mktemp("tiny_image_reward"), seed=0)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rewards.blip.tiny import write_tiny_clip

    # seed 5 gives positive cosines for most of the test pairs, so scores are not all clamped to 0
    return write_tiny_clip(tmp_path_factory.mktemp("tiny_clip"), seed=5)
