"""Tiny policies that any process can rebuild bit-identically."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest

# The session-wide `ray_session` fixture lives in tests/conftest.py (shared with tests/jobs).


@functools.cache
def tiny_loaded():
    """The tiny LLaDA twin with its tokenizer (in this process)."""
    from model.tiny import tiny_model

    return tiny_model(0)


def policy_source(seed: int = 0) -> functools.partial:
    """A picklable factory for the tiny twin's network alone (no tokenizer: cheaper in every actor)."""
    from model.tiny import tiny_backbone

    cfg = tiny_loaded().network.config
    return functools.partial(tiny_backbone, cfg.vocab_size, mask_token_id=cfg.mask_token_id,
                             eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id,
                             bos_token_id=cfg.bos_token_id, seed=seed)


def sampler_source(seed: int = 0) -> functools.partial:
    """A picklable factory for the tiny twin with its tokenizer (rollout workers decode responses)."""
    from model.tiny import tiny_model

    return functools.partial(tiny_model, seed)


@pytest.fixture(scope="session")
def kit() -> SimpleNamespace:
    """kit.tiny_loaded() (network + tokenizer here), kit.policy_source(seed), kit.sampler_source(seed)."""
    return SimpleNamespace(tiny_loaded=tiny_loaded, policy_source=policy_source, sampler_source=sampler_source)
