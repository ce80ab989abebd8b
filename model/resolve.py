"""One resolver for every model argument: a checkpoint directory, 'demo', 'tiny' or 'tiny-mmada'.

Every job takes the policy as one string (`model.path` in the configs, `--model` on command lines); this
module is the only place that turns it into what the job needs, so every job accepts the same names:

- a directory in the published format (config.json, weights, tokenizer; docs/models.md);
- 'demo': the shipped gold-SFT policy in `model/assets/demo_policy` (docs/demo.md), a checkpoint like any other;
- 'tiny' / 'tiny-mmada': a random-weight tiny twin (LLaDA / MMaDA layout, model/tiny.py) drawn from `seed`,
  sized by `size` (tiny_model / tiny_mmada_model keywords, plus `rope_theta`).

Two entry points: `model_parts` for a driver that hands the policy to other processes (a picklable network
source, plus the tokenizer and the BackboneConfig, without loading checkpoint weights, but with the checkpoint
checked from its headers by `model.checkpoint.check`, so a job refuses a bad one before it starts Ray or any
process), and `load_model` for a job that samples in its own process (`model.load` runs the same check first). Errors are `ModelSpecError`s whose message starts with the caller's
key (`key="--model"` or `"model.path"`) and says what would be right.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported when a model is built: `--help` and argument checks stay fast
    import torch

REPO = Path(__file__).resolve().parent.parent
"""The installed project: the directory of the packages, i.e. the checkout, or site-packages for a plain install;
the shipped policies are in it, and jobs/paths.py finds relative config paths in it."""
DEMO_POLICY = REPO / "model" / "assets" / "demo_policy"
"""The shipped gold-SFT policy that the name 'demo' resolves to."""
TINY_NAMES = ("tiny", "tiny-mmada")
NAMES = ("demo", *TINY_NAMES)
_RIGHT = "give a checkpoint directory in the published format, or " + " / ".join(repr(n) for n in NAMES)


class ModelSpecError(ValueError):
    """A model argument that names no usable policy; the message starts with the caller's key."""


@dataclasses.dataclass(frozen=True)
class ModelParts:
    """What a driver needs to start workers on a policy without holding its weights itself."""

    source: str | Callable[[], Any]
    """For the workers (actors.network_source): the checkpoint directory as a string, or a seeded
    `functools.partial` factory of a tiny twin (picklable; every process builds the same weights)."""
    tokenizer: Any
    config: Any  # model.network.BackboneConfig


def tiny_twin(layout: str = "tiny", seed: int = 0, *, rope_theta: float | None = None,
              dtype: torch.dtype | None = None, **size) -> Any:
    """model.tiny's tiny_model ('tiny') or tiny_mmada_model ('tiny-mmada'), optionally with another RoPE base
    (dtype None: float32).

    The weights depend only on (layout, size, seed): with `rope_theta` the same weights are drawn again
    under a config with that base (jobs.sft's demo policy was trained with rope_theta 10000)."""
    import torch

    from model.checkpoint import LoadedModel
    from model.tiny import random_network, tiny_mmada_model, tiny_model

    dtype = dtype or torch.float32
    build = {"tiny": tiny_model, "tiny-mmada": tiny_mmada_model}[layout]
    loaded = build(seed, dtype=dtype, **size)
    if rope_theta is None or rope_theta == loaded.config.rope_theta:
        return loaded
    config = dataclasses.replace(loaded.config, rope_theta=rope_theta)
    return LoadedModel(network=random_network(config, seed=seed, dtype=dtype), tokenizer=loaded.tokenizer,
                       config=config, path=None)


def checkpoint_dir(spec: str | Path, *, key: str) -> Path | None:
    """The checkpoint directory `spec` names (None for a tiny twin), checked before anything is loaded."""
    spec = str(spec)
    if spec in TINY_NAMES:
        return None
    path = DEMO_POLICY if spec == "demo" else Path(spec)
    if not path.is_dir():
        raise ModelSpecError(f"{key}: {spec!r} is neither a checkpoint directory nor one of "
                             f"{' / '.join(repr(n) for n in NAMES)}")
    if not (path / "config.json").is_file():
        raise ModelSpecError(f"{key}: {spec!r} has no config.json; {_RIGHT}")
    return path


def model_parts(spec: str | Path, *, key: str, seed: int = 0, size: Mapping[str, Any] | None = None) -> ModelParts:
    """The network source, tokenizer and BackboneConfig of `spec`; a checkpoint's weights stay on disk.

    `seed` and `size` shape a tiny twin only (a checkpoint's config.json fixes its shape)."""
    path = checkpoint_dir(spec, key=key)
    if path is None:
        source = functools.partial(tiny_twin, str(spec), seed=seed, **dict(size or {}))
        built = source()
        return ModelParts(source, built.tokenizer, built.config)
    from model.checkpoint import check
    from model.tokenizer import load_tokenizer

    try:
        config = check(path).config  # config.json, the index and the safetensors headers; no tensor is read
        tokenizer = load_tokenizer(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelSpecError(f"{key}: cannot read the checkpoint in {str(path)!r}: {_reason(exc)}") from exc
    return ModelParts(str(path), tokenizer, config)


def _reason(exc: Exception) -> str:
    """The message of a loader error (a KeyError's str() would quote it)."""
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


def load_model(spec: str | Path, *, key: str, seed: int = 0, size: Mapping[str, Any] | None = None,
               dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu") -> Any:
    """`spec` loaded in this process as a model.LoadedModel (network, tokenizer, config, path).

    `dtype`: None keeps a checkpoint's stored dtype (a tiny twin is float32), else "fp32" / "bf16" / a torch dtype.
    `device`: where the network's tensors live (a checkpoint's are read straight there; a tiny twin is moved)."""
    path = checkpoint_dir(spec, key=key)
    if path is None:
        import torch

        from model.checkpoint import resolve_dtype

        loaded = tiny_twin(str(spec), seed, dtype=resolve_dtype(dtype, torch.float32), **dict(size or {}))
        loaded.network.to(device)
        return loaded
    import model

    try:
        return model.load(path, dtype=dtype, device=device)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelSpecError(f"{key}: cannot load a checkpoint from {str(path)!r}: {_reason(exc)}") from exc
