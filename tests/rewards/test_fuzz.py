"""Fuzz every text built-in with hostile model output: each call returns a float or None within the reward's
deadline + 1 s and never raises."""

from __future__ import annotations

import math
import random
import time

import pytest

import rewards
from rewards import Sample
from rewards.extract import extract_answer, extract_gold

SAMPLE_TIMEOUT_S = 0.5

FUZZ = {
    "empty": "",
    "100k_letters": "x" * 100_000,
    "100k_digits": "1" * 100_000,
    "100k_open_braces": "{" * 100_000,
    "100k_close_braces": "}" * 100_000,
    "unclosed_boxes": "\\boxed{" * 14_286,
    "unbalanced_mix": "\\boxed{{}" * 12_500 + "}" * 3,
    "backslashes": "\\" * 100_000,
    "dollars": "$" * 100_000,
    "hashes": "####" * 25_000,
    "think_tags": "<think></think>" * 6_000 + "</think>",
    "answer_phrases": "the answer is " * 7_000,
    "invalid_utf8_surrogateescape": b"\xff\xfe bad \\boxed{\xc3\x28} 4\xed\xa0\x80".decode("utf-8", "surrogateescape"),
    "invalid_utf8_replace": b"\xff\xfe \\boxed{\xc3\x28} \x80\x81".decode("utf-8", "replace"),
    "nul_and_controls": "\\boxed{1\x00\x01\x1b[2J}",
    "nested_frac": "\\boxed{" + "\\frac{1}{" * 2_000 + "2" + "}" * 2_000 + "}",
    "nested_sqrt": "\\boxed{" + "\\sqrt{" * 5_000 + "2" + "}" * 5_000 + "}",
    "nested_parens": "\\boxed{" + "(" * 10_000 + "1" + ")" * 10_000 + "}",
    "tower_9": "\\boxed{9^9^9^9}",
    "tower_10": "\\boxed{10^{10^{10^{10}}}}",
    "huge_factorial": "\\boxed{(10^{10^{10}})!}",
    "huge_exponent_float": "\\boxed{1e999999999}",
    "huge_integer": "\\boxed{" + "9" * 5_000 + "}",
    "tower_unboxed": "so it is 9^9^9^9",
}


@pytest.fixture(scope="module")
def correctness():
    reward = rewards.get("correctness", sample_timeout_s=SAMPLE_TIMEOUT_S, num_workers=1)
    reward([Sample("text", "q", "\\boxed{\\frac12}", "0.5")])  # start the worker outside the timed calls
    yield reward
    reward.close()


def _check(values, started, deadline_s):
    elapsed = time.monotonic() - started
    assert len(values) == 1
    assert values[0] is None or (isinstance(values[0], float) and math.isfinite(values[0]))
    assert elapsed < deadline_s + 1.0, f"took {elapsed:.2f} s"


@pytest.mark.parametrize("name", sorted(FUZZ))
def test_correctness_fuzz(correctness, name):
    text = FUZZ[name]
    for sample in (Sample("text", "q", text, "\\frac{1}{2}"), Sample("text", "q", "\\boxed{3}", text),
                   Sample("text", text, text, text)):
        started = time.monotonic()
        _check(correctness([sample]), started, SAMPLE_TIMEOUT_S)


@pytest.mark.parametrize("name", sorted(FUZZ))
def test_format_fuzz(name):
    reward = rewards.get("format")
    started = time.monotonic()
    _check(reward([Sample("text", FUZZ[name], FUZZ[name])]), started, 0.0)


def test_remote_fuzz(http_server):
    batch = rewards.get("remote", url=http_server.base_url + "/score", timeout_s=5.0, max_retries=0)
    judge = rewards.get("remote", url=http_server.base_url + "/v1/chat/completions", mode="judge", timeout_s=5.0,
                        max_retries=0)
    for text in FUZZ.values():
        for reward in (batch, judge):
            started = time.monotonic()
            _check(reward([Sample("text", text, text, text, meta={"fuzz": text})]), started, 5.0)


def test_random_latex_soup_through_extraction_and_correctness(correctness):
    tokens = ["\\boxed{", "\\frac{", "}", "{", "\\sqrt", "^", "_", "(", ")", "[", "]", "\\{", "\\}", "$", "\\(",
              "\\)", "</think>", "<think>", "####", "answer is", "1", "-2", "3.5", "1,000", "x", "\\pi", "\\infty",
              "\\text{", "cm", " ", "\n", "=", ",", "\\", "%", "\\%", "\\left(", "\\right)", "\\cup", "i"]
    rng = random.Random(0)
    soups = ["".join(rng.choice(tokens) for _ in range(rng.randint(0, 40))) for _ in range(120)]
    for soup in soups:  # pure string code: must never raise
        extract_answer(soup)
        extract_gold(soup)
    samples = [Sample("text", "q", soups[i], soups[-1 - i]) for i in range(60)]
    values = correctness(samples)
    assert len(values) == 60
    assert all(v is None or v in (0.0, 1.0) for v in values)
