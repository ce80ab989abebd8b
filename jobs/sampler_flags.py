"""The text sampler's command-line flags of `jobs.rollout`, which does not read the config tree yet.

Each flag is a `TextSamplerConfig` field (`--gen-length` is `gen_length`, ...). `--threshold` takes a confidence in
(0, 1] or `none` (the fixed per-step count). docs/sampling.md explains `--cache` and `--threshold`. The jobs that
read the tree (`jobs.train`, `jobs.eval`, `jobs.sample`) set the same knobs as `--set rollout.sampler.<field>=...`.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Any

from model.sampling import CACHE_CHOICES, REMASKING_CHOICES, TextSamplerConfig

SAMPLER_KEYS: tuple[str, ...] = tuple(field.name for field in fields(TextSamplerConfig))
ROLLOUT_DEFAULTS: dict[str, Any] = asdict(TextSamplerConfig())
"""`jobs.rollout`: a typical RL rollout (TextSamplerConfig's defaults)."""
DEMO_DEFAULTS: dict[str, Any] = {**ROLLOUT_DEFAULTS, "gen_length": 40, "steps": 20, "block_length": 8,
                                 "temperature": 0.0}
"""The demo config's evaluation sampler (`jobs.heldout.eval_sampler` of jobs/configs/demo.yaml: greedy, 40 tokens),
for jobs/bench/sampler_modes.py, which reads no config yet."""


def threshold_arg(text: str) -> float | None:
    """`--threshold` value: 'none' -> None, else a float (range checked by `check_schedule`)."""
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a confidence in (0, 1] nor 'none'") from None


def add_sampler_flags(parser: argparse.ArgumentParser, defaults: Mapping[str, Any]) -> None:
    """Add the eight sampler flags; `defaults` must name every key of SAMPLER_KEYS."""
    if set(defaults) != set(SAMPLER_KEYS):
        raise ValueError(f"defaults: got keys {sorted(defaults)}; expected exactly {sorted(SAMPLER_KEYS)}")
    default = defaults.__getitem__
    group = parser.add_argument_group("text sampler (docs/sampling.md)")
    group.add_argument("--gen-length", type=int, default=default("gen_length"), help="response tokens L")
    group.add_argument("--steps", type=int, default=default("steps"), help="denoising steps over the whole response")
    group.add_argument("--block-length", type=int, default=default("block_length"), help="semi-autoregressive block")
    group.add_argument("--temperature", type=float, default=default("temperature"))
    group.add_argument("--remasking", default=default("remasking"), choices=list(REMASKING_CHOICES))
    group.add_argument("--cfg-scale", type=float, default=default("cfg_scale"))
    group.add_argument("--cache", default=default("cache"), choices=list(CACHE_CHOICES),
                       help="block KV cache: none (exact), prefix, dual")
    group.add_argument("--threshold", type=threshold_arg, default=default("threshold"), metavar="CONF|none",
                       help="reveal every masked token above this confidence per step (none: fixed count)")


def sampler_knobs(args: argparse.Namespace) -> dict[str, Any]:
    """The sampler settings in `args`, keyed as TextSamplerConfig fields."""
    given = vars(args)
    return {key: given[key] for key in SAMPLER_KEYS}
