"""One local Ray for every actor test, and tiny policies that any process can rebuild bit-identically."""

from __future__ import annotations

import functools
import os

for _name, _value in {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                      "RAY_USAGE_STATS_ENABLED": "0", "DS_ACCELERATOR": "cpu"}.items():
    os.environ.setdefault(_name, _value)  # before ray / deepspeed are imported anywhere

from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402
import ray  # noqa: E402

RAY_CPUS = 4  # logical: 2 learner ranks + 2 rollout workers at once (the machine may have fewer cores)


@pytest.fixture(scope="session")
def ray_session():
    if not ray.is_initialized():
        ray.init(num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


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
