"""jobs/sampler_flags.py: the sampler flags of jobs.rollout, and the demo sampler jobs.bench reads from it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from jobs.sampler_flags import (
    DEMO_DEFAULTS,
    ROLLOUT_DEFAULTS,
    SAMPLER_KEYS,
    add_sampler_flags,
    sampler_knobs,
    threshold_arg,
)


def parser_with(defaults):
    parser = argparse.ArgumentParser(prog="t", exit_on_error=False)
    add_sampler_flags(parser, defaults)
    return parser


def test_every_flag_maps_to_its_config_field():
    args = parser_with(ROLLOUT_DEFAULTS).parse_args(
        ["--gen-length", "64", "--steps", "16", "--block-length", "16", "--temperature", "0.5", "--remasking",
         "random", "--cfg-scale", "1.5", "--cache", "prefix", "--threshold", "none"])
    assert sampler_knobs(args) == {"gen_length": 64, "steps": 16, "block_length": 16, "temperature": 0.5,
                                   "remasking": "random", "cfg_scale": 1.5, "cache": "prefix", "threshold": None}
    assert set(SAMPLER_KEYS) == set(ROLLOUT_DEFAULTS) == set(DEMO_DEFAULTS)
    assert ROLLOUT_DEFAULTS == {"gen_length": 256, "steps": 128, "block_length": 32, "temperature": 0.9,
                                "remasking": "low_confidence", "cfg_scale": 0.0, "cache": "none", "threshold": None}
    assert sampler_knobs(parser_with(DEMO_DEFAULTS).parse_args([])) == DEMO_DEFAULTS


def test_demo_defaults_are_the_demo_configs_evaluation_sampler():
    """The copy jobs/bench/sampler_modes.py reads cannot drift from what jobs.eval samples with by default."""
    from jobs.config import DEFAULT_CONFIG, load_config
    from jobs.heldout import eval_sampler
    from jobs.sample import DEMO_PROBLEMS

    cfg = load_config(DEFAULT_CONFIG)
    assert eval_sampler(cfg) == DEMO_DEFAULTS
    assert DEMO_PROBLEMS.resolve() == Path(cfg.data.eval).resolve()


def test_threshold_values():
    assert threshold_arg("none") is None and threshold_arg(" None ") is None
    assert threshold_arg("0.75") == 0.75
    with pytest.raises(argparse.ArgumentTypeError, match="'high' is neither a confidence in \\(0, 1\\] nor 'none'"):
        threshold_arg("high")


def test_bad_flag_values_are_refused(capsys):
    parser = argparse.ArgumentParser(prog="t")
    add_sampler_flags(parser, ROLLOUT_DEFAULTS)
    with pytest.raises(SystemExit):
        parser.parse_args(["--cache", "full"])
    assert "argument --cache: invalid choice: 'full'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["--threshold", "high"])
    assert "argument --threshold: 'high' is neither a confidence" in capsys.readouterr().err


def test_defaults_must_name_every_knob():
    with pytest.raises(ValueError, match=r"defaults: got keys \['steps'\]; expected exactly \["):
        add_sampler_flags(argparse.ArgumentParser(), {"steps": 4})
