"""`format`: exactly one non-empty <think>…</think> followed by a non-empty answer."""

from __future__ import annotations

import pytest

import rewards
from rewards import Sample, Scored


@pytest.mark.parametrize(
    ("prompt", "response", "expected"),
    [
        ("q", "<think>work</think>42", 1.0),
        ("q", "  \n<think>\nwork\n</think>\n\nThe answer is 42.", 1.0),
        ("q", "<think>work</think>", 0.0),  # no answer
        ("q", "<think>work</think>   \n", 0.0),  # whitespace is not an answer
        ("q", "<think> </think>42", 0.0),  # empty thinking
        ("q", "<think>a</think>b<think>c</think>d", 0.0),  # two blocks
        ("q", "<think>a<think>b</think>c", 0.0),  # nested open
        ("q", "<think>a</think>b</think>c", 0.0),  # stray close
        ("q", "Sure! <think>a</think>b", 0.0),  # text before the block
        ("q", "</think>a<think>b", 0.0),  # wrong order
        ("q", "work</think>42", 0.0),  # open tag missing
        ("q", "just an answer", 0.0),
        ("q", "", 0.0),
        ("chat template ... <think>", "work</think>42", 1.0),  # the template opened the block
        ("chat template ... <think>\n", "work</think>42", 1.0),
        ("chat template ... <think>", "<think>work</think>42", 1.0),  # repeated open tag is tolerated once
        ("chat template ... <think>", "</think>42", 0.0),  # empty thinking
        ("chat template ... <think>", "work</think>", 0.0),
    ],
)
def test_format_cases(prompt, response, expected):
    reward = rewards.get("format")
    sample = Sample("text", prompt, response)
    assert reward([sample]) == [expected]
    assert reward.score_detailed([sample]) == [Scored(expected)]


def test_batch_and_empty_batch():
    reward = rewards.get("format")
    assert reward([]) == []
    samples = [Sample("text", "q", r) for r in ("<think>a</think>b", "b", "<think>a</think>b")]
    assert reward(samples) == [1.0, 0.0, 1.0]
