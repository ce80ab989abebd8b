"""Where a learner rank or a rollout worker gets its network from.

A `NetworkSource` is either a checkpoint directory in the published format (loaded with
`model.load`) or a picklable zero-argument callable returning an `nn.Module` or a `LoadedModel`
(e.g. `functools.partial(model.tiny.tiny_backbone, ..., seed=0)`). Every process builds its own copy,
so a callable must be deterministic (seeded): data-parallel ranks must start from the same weights.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

NetworkSource = str | os.PathLike | Callable[[], Any]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def build_network(source: NetworkSource, dtype: str | None = None) -> tuple[nn.Module, Any]:
    """(network, tokenizer or None) from `source`, cast to `dtype` ("fp32" | "bf16") when given."""
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    torch_dtype = DTYPES[dtype] if dtype else None
    if isinstance(source, (str, os.PathLike)):
        import model

        loaded = model.load(os.fspath(source), dtype=torch_dtype)
        return loaded.network, loaded.tokenizer
    if not callable(source):
        raise TypeError(f"network source {source!r}: expected a checkpoint path or a callable returning a network")
    built = source()
    network, tokenizer = (built.network, getattr(built, "tokenizer", None)) if hasattr(built, "network") else (built, None)
    if not isinstance(network, nn.Module):
        raise TypeError(f"network source {source!r} returned {type(network).__name__}, not an nn.Module")
    if torch_dtype is not None:
        network = network.to(torch_dtype)
    return network, tokenizer
