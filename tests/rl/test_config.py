"""rl.config: defaults are algorithm.md's decisions; every cross-field check names its field."""

from __future__ import annotations

import dataclasses
import re

import pytest

from rl.config import (
    AdvantageConfig,
    AlgoConfig,
    DiffuGRPOConfig,
    KLConfig,
    MaskingConfig,
    RandomMaskingConfig,
)


def test_defaults_are_the_spec_decisions():
    cfg = AlgoConfig()
    assert (cfg.estimator, cfg.group_size, cfg.mu, cfg.clip_eps, cfg.beta) == ("unigrpo", 8, 4, 0.2, 0.01)
    m = cfg.masking
    assert (m.schedule, m.timesteps, m.p_min, m.p_max, m.count) == ("stratified", 1000, 0.05, 1.0, "exact")
    assert (m.share_across_group, m.tail, m.image_ratio) == (True, "mask", "linear")
    assert cfg.kl.estimator == "k3" and cfg.advantage.scale == "std"
    assert cfg.advantage.drop_groups_above is None and cfg.advantage.drop_groups_below is None
    assert cfg.diffu_grpo.prompt_mask_prob == 0.15
    assert (cfg.random_masking.t_min, cfg.random_masking.t_max) == (0.1, 0.9)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.mu = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: MaskingConfig(schedule="linear"), "schedule: got 'linear'; expected one of ['ramp', 'random', "
                                                  "'stratified'] or a plugin 'pkg.mod:fn' / 'path/to/file.py:fn'"),
        (lambda: MaskingConfig(count="poisson"), "count: 'poisson'"),
        (lambda: MaskingConfig(tail="drop"), "tail: 'drop'"),
        (lambda: MaskingConfig(image_ratio="sqrt"), "image_ratio: 'sqrt'"),
        (lambda: MaskingConfig(timesteps=0), "timesteps: 0 is not a positive integer"),
        (lambda: MaskingConfig(p_min=0.0), "p_min: need 0 < p_min <= p_max <= 1"),
        (lambda: MaskingConfig(p_min=0.5, p_max=0.4), "p_min: need 0 < p_min <= p_max <= 1"),
        (lambda: KLConfig(estimator="k4"), "estimator: got 'k4'; expected one of ['k1', 'k2', 'k3'] or a plugin"),
        (lambda: AdvantageConfig(scale="rank"), "scale: 'rank'"),
        (lambda: AdvantageConfig(eps=-1.0), "eps: -1.0 is negative"),
        (lambda: AdvantageConfig(drop_groups_below=0.9, drop_groups_above=0.1), "drop_groups_below: 0.9 is above"),
        (lambda: DiffuGRPOConfig(prompt_mask_prob=1.0), "prompt_mask_prob: 1.0 is outside"),
        (lambda: RandomMaskingConfig(t_min=0.0), "t_min: need 0 < t_min <= t_max <= 1"),
        (lambda: RandomMaskingConfig(copies=0), "copies: 0 is not a positive integer"),
        (lambda: AlgoConfig(estimator="ppo"), "estimator: got 'ppo'; expected one of ['coupled', 'diffu_grpo', "
                                                "'random_masking', 'unigrpo'] or a plugin"),
        (lambda: AlgoConfig(group_size=0), "group_size: 0"),
        (lambda: AlgoConfig(mu=0), "mu: 0 is not a positive integer"),
        (lambda: AlgoConfig(clip_eps=1.5), "clip_eps: 1.5 is outside"),
        (lambda: AlgoConfig(beta=-0.1), "beta: -0.1 is negative"),
        (lambda: AlgoConfig(logprob_chunk_size=0), "logprob_chunk_size: 0"),
    ],
)
def test_every_invalid_value_names_its_field(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_loads_through_the_project_config_machinery():
    configtree = pytest.importorskip("jobs.configtree")
    cfg = configtree.build(AlgoConfig, {"mu": 5, "masking": {"schedule": "ramp"}, "kl": {"estimator": "k2"},
                                        "advantage": {"drop_groups_above": 0.99}})
    assert cfg.mu == 5 and cfg.masking.schedule == "ramp" and cfg.kl.estimator == "k2"
    assert cfg.advantage.drop_groups_above == 0.99
    assert configtree.build(AlgoConfig, configtree.to_dict(cfg)) == cfg
