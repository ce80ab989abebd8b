"""`correctness`: 1.0 if the response's final answer equals the gold answer, 0.0 if not, None if unscorable.

Pipeline per sample (extraction rules in `rewards.extract`):
- no gold answer, or nothing left of it after extraction -> None (`no_gold`);
- no answer in the response -> 0.0 (the model's failure, not the scorer's);
- word answers (`Monday`, `(B)`, `\\text{yes}`) -> case-insensitive comparison of the words;
- both sides plain decimal numbers -> exact comparison with `fractions.Fraction` in the caller's process
  (the fast path: GSM8K is almost all this; no process round trip, no math-verify);
- otherwise -> math-verify (`parse` + `verify`, i.e. latex2sympy + sympy) in a worker process of a
  `DeadlinePool` with a hard per-sample deadline. A gold that math-verify cannot parse -> None
  (`unparseable_gold`); a deadline overrun or a dead worker -> None (`timeout` / `crash`).

Model text reaches sympy only through math-verify's LaTeX/expression parsers, never through `eval` or
string `sympify`. math-verify's own SIGALRM timeouts are switched off (they raise off the main thread and
their TimeoutException escapes `except Exception`); the deadline comes from the pool instead, so this
reward works from any thread, inside asyncio and in threaded Ray actors.

Deviation to know about: a response that makes sympy blow up (`\\boxed{9^{9^{9^9}}}`) times out and is
therefore None, not 0.0, and is counted under `timeout` in the metrics.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Sequence

from rewards.base import Sample, Scored
from rewards.deadline import DeadlinePool, default_num_workers
from rewards.extract import extract_answer, extract_gold, plain_number, text_answer
from rewards.registry import register

_GOLD_CACHE_SIZE = 4096
_WARM_UP_PAIRS = (
    ("\\frac{1}{2}", "0.5"), ("(1,2]", "1 < x \\le 2"), ("\\{1,2\\}", "2, 1"), ("2\\sqrt{2}", "\\sqrt{8}"),
    ("\\frac{\\pi}{2}", "\\pi/2"), ("x^2+1", "y=x^2+1"), ("\\text{(B)}", "B"), ("50\\%", "1+2i"),
)


class SymbolicCompare:
    """Runs in a worker process: `(gold, prediction)` normalised strings -> `(score, reason)`."""

    def __init__(self) -> None:
        self._gold_cache: dict[str, list] = {}

    def prepare(self) -> None:
        """Once per worker, before the first deadline starts: import math-verify, quiet its logger, and run
        it on a few typical answers, so the parser's one-off set-up (~0.2 s per kind of expression on a
        cold process) is not charged to the first samples' deadlines."""
        import math_verify  # noqa: F401

        logging.getLogger("math_verify").setLevel(logging.ERROR)
        for gold, prediction in _WARM_UP_PAIRS:
            self((gold, prediction))
        self._gold_cache.clear()

    def __call__(self, pair: tuple[str, str]) -> tuple[float | None, str | None]:
        from math_verify import parse, verify

        gold_text, prediction_text = pair
        gold = self._gold_cache.get(gold_text)
        if gold is None:
            gold = parse("\\boxed{" + gold_text + "}", parsing_timeout=None)
            if len(self._gold_cache) >= _GOLD_CACHE_SIZE:
                self._gold_cache.clear()
            self._gold_cache[gold_text] = gold
        if all(isinstance(parsed, str) for parsed in gold):  # [] or only the raw-string fallback
            return None, f"unparseable_gold: math-verify found no expression in {gold_text[:80]!r}"
        prediction = parse("\\boxed{" + prediction_text + "}", parsing_timeout=None)
        if not prediction:
            return 0.0, None
        # allow_set_relation_comp: "1 < x \\le 2" and "(1,2]" describe the same set, whichever side is the gold
        equal = verify(gold, prediction, allow_set_relation_comp=True, timeout_seconds=None)
        return (1.0 if equal else 0.0), None

    def __getstate__(self):
        return {}  # the cache stays in the worker

    def __setstate__(self, state) -> None:
        self._gold_cache = {}


@register("correctness")
class CorrectnessReward:
    """Final-answer correctness (1.0/0.0/None). Options: `sample_timeout_s`, the hard deadline of one
    symbolic comparison; `num_workers`, processes for symbolic comparisons (default: CPUs, at most 8)."""

    isolation = "thread"  # it bounds its own time: the slow part already runs in killable processes

    def __init__(self, *, sample_timeout_s: float = 3.0, num_workers: int | None = None):
        if not sample_timeout_s > 0:
            raise ValueError(f"sample_timeout_s: got {sample_timeout_s}; expected > 0 seconds")
        if num_workers is not None and num_workers < 1:
            raise ValueError(f"num_workers: got {num_workers}; expected >= 1 or None (auto)")
        self.sample_timeout_s = float(sample_timeout_s)
        self.num_workers = num_workers or default_num_workers()
        self.path_counts: Counter[str] = Counter()
        """How samples were decided so far: no_gold, no_answer, text, fast_number, symbolic."""
        self._pool: DeadlinePool | None = None
        self._pool_lock = threading.Lock()

    def __call__(self, samples: list[Sample]) -> list[float | None]:
        return [scored.value for scored in self.score_detailed(samples)]

    def score_detailed(self, samples: Sequence[Sample], *, timeout_s: float | None = None) -> list[Scored]:
        """Scores with reasons; `timeout_s` bounds the whole batch (unfinished samples -> `timeout`)."""
        results: list[Scored | None] = [None] * len(samples)
        symbolic_pairs: list[tuple[str, str]] = []
        symbolic_index: list[int] = []
        for index, sample in enumerate(samples):
            decided = self._decide_locally(sample)
            if isinstance(decided, Scored):
                results[index] = decided
            else:
                symbolic_pairs.append(decided)
                symbolic_index.append(index)
        if symbolic_pairs:
            self.path_counts["symbolic"] += len(symbolic_pairs)
            outcomes = self._get_pool().map(
                SymbolicCompare(), symbolic_pairs, item_timeout_s=self.sample_timeout_s, total_timeout_s=timeout_s
            )
            for index, outcome in zip(symbolic_index, outcomes):
                if outcome.status == "ok":
                    value, reason = outcome.value
                    results[index] = Scored(value, reason)
                else:
                    results[index] = Scored(None, outcome.reason)
        return results  # type: ignore[return-value]

    def _decide_locally(self, sample: Sample) -> Scored | tuple[str, str]:
        """A final score when no symbolic comparison is needed, else the (gold, prediction) pair."""
        gold = extract_gold(sample.answer) if sample.answer is not None else ""
        if not gold:
            self.path_counts["no_gold"] += 1
            return Scored(None, "no_gold")
        extracted = extract_answer(sample.response)
        if extracted is None or not extracted.text:
            self.path_counts["no_answer"] += 1
            return Scored(0.0)
        gold_words = text_answer(gold)
        if gold_words is not None:
            self.path_counts["text"] += 1
            return Scored(1.0 if text_answer(extracted.text) == gold_words else 0.0)
        gold_number = plain_number(gold)
        if gold_number is not None:
            predicted_number = plain_number(extracted.text)
            if predicted_number is not None:
                self.path_counts["fast_number"] += 1
                return Scored(1.0 if predicted_number == gold_number else 0.0)
        return gold, extracted.text

    def _get_pool(self) -> DeadlinePool:
        with self._pool_lock:
            if self._pool is None:
                self._pool = DeadlinePool(
                    self.num_workers, preload=("rewards.correctness", "math_verify"), name="correctness"
                )
            return self._pool

    def close(self) -> None:
        """Stop the worker processes (a later call starts new ones)."""
        with self._pool_lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_pool"] = None  # processes don't travel; the copy starts its own on first use
        state["_pool_lock"] = None
        state["path_counts"] = Counter()
        return state

    def __setstate__(self, state) -> None:
        self.__dict__.update(state)
        self._pool_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CorrectnessReward(sample_timeout_s={self.sample_timeout_s}, num_workers={self.num_workers})"
