"""`correctness`: agreement with the checked-in labelled cases, None semantics, deadlines, threads, asyncio."""

from __future__ import annotations

import asyncio
import json
import pickle
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

import rewards
from rewards import Sample

CASES_FILE = Path(__file__).parent / "data" / "correctness_cases.jsonl"
CASES = [json.loads(line) for line in CASES_FILE.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def correctness():
    reward = rewards.get("correctness", sample_timeout_s=2.0, num_workers=2)
    yield reward
    reward.close()


def _samples(pairs):
    return [Sample("text", "question", response, gold) for response, gold in pairs]


def test_the_case_file_covers_what_it_must():
    assert len(CASES) >= 200
    assert {case["style"] for case in CASES} == {"gsm8k", "math"}
    assert all(case["label"] in (0, 1) for case in CASES)
    negatives = sum(1 for case in CASES if case["label"] == 0)
    assert negatives >= 0.3 * len(CASES)
    categories = {case["category"] for case in CASES}
    for needed in ("off_by_one", "wrong_sign", "units", "frac_vs_decimal", "frac_vs_slash", "interval", "set",
                   "sqrt", "pi", "text", "last_number", "hash", "think", "generated_wrong_sign"):
        assert needed in categories, needed


def test_agrees_with_every_labelled_case(correctness):
    scored = correctness.score_detailed([Sample("text", "q", c["response"], c["gold"]) for c in CASES])
    disagreements = [
        (case["id"], case["category"], case["response"][:60], case["gold"][-40:], case["label"], s.value, s.reason)
        for case, s in zip(CASES, scored)
        if s.value != float(case["label"])
    ]
    assert disagreements == []


def test_no_gold_and_unparseable_gold_are_none_not_zero(correctness):
    scored = correctness.score_detailed(_samples([("\\boxed{1}", None), ("\\boxed{1}", "  "), ("\\boxed{1}", "\\boxed{}"),
                                                  ("\\boxed{1}", "}}{{"), ("\\boxed{1}", "\\text{}")]))
    assert [s.value for s in scored] == [None] * 5
    assert [s.category for s in scored] == ["no_gold", "no_gold", "no_gold", "unparseable_gold", "unparseable_gold"]


def test_no_answer_in_the_response_is_zero(correctness):
    assert correctness(_samples([("", "5"), ("I give up.", "5"), ("\\boxed{}", "5")])) == [0.0, 0.0, 0.0]


def test_plain_numbers_take_the_fast_path_without_worker_processes():
    reward = rewards.get("correctness", num_workers=1)
    assert reward(_samples([("\\boxed{1,000}", "#### 1000"), ("so 3.50", "3.5"), ("\\boxed{-2}", "2")])) == [1.0, 1.0, 0.0]
    assert reward.path_counts == Counter(fast_number=3)
    assert reward._pool is None  # nothing symbolic was needed
    reward.close()


def test_symbolic_comparison_that_overruns_is_none_within_the_deadline():
    reward = rewards.get("correctness", sample_timeout_s=0.5, num_workers=1)
    reward(_samples([("\\boxed{\\frac12}", "0.5")]))  # start the worker before timing
    started = time.monotonic()
    scored = reward.score_detailed(_samples([("\\boxed{10^{10^{10^{10}}}}", "5"), ("\\boxed{\\frac{2}{4}}", "0.5")]))
    elapsed = time.monotonic() - started
    assert scored[0].value is None and scored[0].category == "timeout"
    assert scored[1].value == 1.0  # the next sample is unaffected
    assert elapsed < 2 * 0.5 + 1.0
    reward.close()


def test_batch_budget_bounds_the_whole_call(correctness):
    slow = ("\\boxed{10^{10^{10^{10}}}}", "5")
    started = time.monotonic()
    scored = correctness.score_detailed(_samples([slow] * 6), timeout_s=1.0)
    assert time.monotonic() - started < 1.0 + 1.0
    assert all(s.value is None and s.category == "timeout" for s in scored)
    assert any("batch budget of 1 s exhausted" in s.reason for s in scored)


def test_called_from_threads(correctness):
    pairs = [("\\boxed{\\frac{1}{2}}", "0.5"), ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}"), ("\\boxed{3}", "4")]
    results = {}

    def run(name):
        results[name] = correctness(_samples(pairs))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == {i: [1.0, 1.0, 0.0] for i in range(3)}


def test_called_inside_an_async_context(correctness):
    pairs = [("\\boxed{(1,2]}", "(1,2]"), ("\\boxed{(1,2)}", "(1,2]")]

    async def main():
        direct = correctness(_samples(pairs))  # blocking call inside a coroutine
        offloaded = await asyncio.to_thread(correctness, _samples(pairs))
        return direct, offloaded

    assert asyncio.run(main()) == ([1.0, 0.0], [1.0, 0.0])


def test_pickles_without_its_processes(correctness):
    correctness(_samples([("\\boxed{x+1}", "1+x")]))  # make sure the pool exists
    copy = pickle.loads(pickle.dumps(correctness))
    assert copy._pool is None and copy.sample_timeout_s == correctness.sample_timeout_s
    assert copy(_samples([("\\boxed{x+1}", "1+x")])) == [1.0]
    copy.close()
    copy.close()  # idempotent


def test_bad_options():
    with pytest.raises(ValueError, match="sample_timeout_s: got 0"):
        rewards.get("correctness", sample_timeout_s=0)
    with pytest.raises(ValueError, match="num_workers: got 0"):
        rewards.get("correctness", num_workers=0)
