"""rewards.config: the algorithm.md §5 defaults and every validation branch."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

import rewards.config
from rewards import RewardsConfig, RewardTermConfig


def _weights(config, task):
    return [(term.name, term.weight) for term in config.terms_for(task)]


def test_defaults_are_algorithm_section_5():
    config = RewardsConfig()
    assert _weights(config, "text") == [("correctness", 2.0), ("format", 0.5)]
    assert _weights(config, "mmu") == [("correctness", 2.0), ("format", 0.5)]
    assert _weights(config, "captioning") == [("correctness", 2.0), ("format", 0.5), ("clip", 0.1)]
    assert config.tasks["captioning"][2].options == {"text_field": "response"}  # the caption, not the prompt
    assert config.tasks["t2i"][0].options == {}  # text-to-image scores the prompt
    assert _weights(config, "t2i") == [("clip", 0.1), ("image_reward", 0.1)]
    term = RewardTermConfig()
    assert (term.options, term.timeout_s, term.isolation) == ({}, 60.0, "auto")


def test_frozen_and_every_field_documented():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RewardTermConfig().weight = 3.0
    lines = inspect.getsource(rewards.config).splitlines()
    for cls in (RewardTermConfig, RewardsConfig):
        for f in dataclasses.fields(cls):
            assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            at = next(i for i, line in enumerate(lines) if line.startswith(f"    {f.name}: "))
            assert lines[at + 1].lstrip().startswith('"""'), f"{cls.__name__}.{f.name} has no docstring"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": " "}, "name: got ' '"),
        ({"weight": float("nan")}, "weight: got nan; expected a finite number"),
        ({"weight": True}, "weight: got True"),
        ({"options": {1: 2}}, "options: got {1: 2}"),
        ({"timeout_s": 0}, "timeout_s: got 0; expected a number of seconds > 0"),
        ({"isolation": "gpu"}, "isolation: got 'gpu'; expected one of auto, process, thread"),
    ],
)
def test_term_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RewardTermConfig(**kwargs)


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ({}, "tasks: expected a non-empty mapping"),
        ({"": [RewardTermConfig()]}, "tasks: task name '' must be a non-empty string"),
        ({"text": []}, r"tasks.text: got \[\]; expected a non-empty list"),
        ({"text": [{"name": "format"}]}, r"tasks.text\[0\]: got dict; expected RewardTermConfig"),
        ({"text": [RewardTermConfig("format"), RewardTermConfig("format", 2.0)]},
         "tasks.text: term.s. format appear more than once"),
    ],
)
def test_rewards_config_validation(tasks, message):
    with pytest.raises(ValueError, match=message):
        RewardsConfig(tasks=tasks)


def test_unknown_task_lists_configured_ones():
    with pytest.raises(ValueError, match="task 'video' has no reward terms; configured tasks: captioning, mmu, t2i, text"):
        RewardsConfig().terms_for("video")
