"""Where a learner rank or a rollout worker gets its network from.

A `NetworkSource` is either a checkpoint directory in the published format (loaded with
`model.load`) or a picklable zero-argument callable returning an `nn.Module` or a `LoadedModel`
(e.g. `functools.partial(model.tiny.tiny_backbone, ..., seed=0)`). Every process builds its own copy,
so a callable must be deterministic (seeded): data-parallel ranks must start from the same weights.
With `learner.lora` the network gets its LoRA adapters here, after the cast (model/lora.py, docs/lora.md):
learner ranks and rollout workers build the same adapted network.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

NetworkSource = str | os.PathLike | Callable[[], Any]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def build_network(source: NetworkSource, dtype: str | None = None, lora: Any = None) -> tuple[nn.Module, Any]:
    """(network, tokenizer or None) from `source`, cast to `dtype` ("fp32" | "bf16") when given, with the
    adapters of `lora` (an `actors.config.LoraConfig`; None: none)."""
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    torch_dtype = DTYPES[dtype] if dtype else None
    if isinstance(source, (str, os.PathLike)):
        import model

        loaded = model.load(os.fspath(source), dtype=torch_dtype)
        network, tokenizer = loaded.network, loaded.tokenizer
    else:
        network, tokenizer = _built(source, torch_dtype)
    if lora is not None:
        from model.lora import add_lora

        add_lora(network, lora)
    return network, tokenizer


def _built(source: Callable[[], Any], torch_dtype: torch.dtype | None) -> tuple[nn.Module, Any]:
    """(network, tokenizer or None) from a factory, cast to `torch_dtype` when given."""
    if not callable(source):
        raise TypeError(f"network source {source!r}: expected a checkpoint path or a callable returning a network")
    built = source()
    network, tokenizer = (built.network, getattr(built, "tokenizer", None)) if hasattr(built, "network") else (built, None)
    if not isinstance(network, nn.Module):
        raise TypeError(f"network source {source!r} returned {type(network).__name__}, not an nn.Module")
    if torch_dtype is not None:
        network = network.to(torch_dtype)
    return network, tokenizer
