"""`RewardService`: scores mixed-task batches with the configured weighted terms (plain class; the Ray actor
wrapper lives in actors/).

`score(batch)` reads a rollout batch and writes into it: each row becomes a `Sample` (rewards/base.py:
`samples_of`), and the batch comes back (a new one, `dataclasses.replace`) with its reward columns filled:
`rewards` (term -> raw value per row), `reward_reasons`, `total` and `total_reason` (`write_scores`, which
the Ray router shares). For one call:
1. Samples are grouped per *term unit*: tasks whose terms have the same (name, options, timeout,
   isolation) share one reward instance and one batched call.
2. All units run concurrently, each under its term's `timeout_s`:
   - `process` units run in their own `DeadlinePool` worker (one per unit, kept warm across calls; the
     reward is built inside the worker when the service is built, so bad options fail there). An overrun
     interrupts or kills the worker: hard deadline.
   - `thread` units run in a daemon thread of this process; built-ins that support it get the budget and
     stop on time; otherwise the service stops waiting after `timeout_s + grace` and the thread is abandoned.
3. Every output is checked (one finite float or None per sample); anything else is None with reason
   `invalid`. A raised exception of any kind is None with reason `error`.
4. The total of a sample is the weighted sum of its task's terms, None if any term is None
   (docs/algorithm.md §2.4) or if the sum overflows (finite terms, e.g. 2 × 1e308); `weighted_totals` is
   the one function that sums them, here and in the Ray router, and says why a total is None.

Metrics (returned next to the batch), per task and term, `reward/<task>/<term>/`: `mean` (over scorable samples;
absent when none is), `count`, `none`, `timeouts`, `errors` (error + crash + invalid), `latency_s` (wall time
of the batched call that scored it), `none/<reason>` (counted reasons); and `reward/<task>/total/{mean,none,count}`
with `reward/<task>/total/none/<category>` (`unscored`, `overflow`) for the None totals.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import numbers
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rewards import registry
from rewards.base import Sample, Scored, samples_of, unscorable
from rewards.config import RewardsConfig, RewardTermConfig
from rewards.deadline import DeadlinePool, short_exception

if TYPE_CHECKING:
    from rl.batch import RolloutBatch

logger = logging.getLogger(__name__)

THREAD_GRACE_S = 1.0
"""How long past `timeout_s` the service waits for a thread unit before giving up on it."""
ERROR_CATEGORIES = ("error", "crash", "invalid")


class RewardCall:
    """Picklable stand-in sent to a worker process: builds the reward there (once) and scores a batch."""

    def __init__(self, name: str, options: dict[str, Any]):
        self.name, self.options = name, dict(options)
        self._reward = None

    def prepare(self) -> None:
        self._reward = registry.get(self.name, **self.options)

    def __call__(self, samples: list[Sample]) -> Any:
        if self._reward is None:
            self.prepare()
        if hasattr(self._reward, "score_detailed"):
            return self._reward.score_detailed(samples)
        return self._reward(samples)

    def __getstate__(self):
        return {"name": self.name, "options": self.options}

    def __setstate__(self, state) -> None:
        self.name, self.options, self._reward = state["name"], state["options"], None


@dataclass
class _Unit:
    """One reward instance and how to run it; shared by every task whose term has the same spec."""

    name: str
    options: dict[str, Any]
    timeout_s: float
    isolation: str
    reward: Any = None  # built here for thread units
    pool: DeadlinePool | None = None  # one worker for process units

    def run(self, samples: list[Sample]) -> list[Scored]:
        if self.isolation == "process":
            outcome = self.pool.map(RewardCall(self.name, self.options), [samples], item_timeout_s=self.timeout_s)[0]
            if outcome.status != "ok":
                return unscorable(len(samples), outcome.reason)
            return validate_output(outcome.value, len(samples), self.name)
        if hasattr(self.reward, "score_detailed"):
            raw = self.reward.score_detailed(samples, timeout_s=self.timeout_s)
        else:
            raw = self.reward(samples)
        return validate_output(raw, len(samples), self.name)


def validate_output(raw: Any, count: int, name: str) -> list[Scored]:
    """One `Scored` per sample from whatever the reward returned; broken output -> None with `invalid`."""
    if isinstance(raw, (str, bytes)) or not hasattr(raw, "__len__") or not hasattr(raw, "__iter__"):
        return unscorable(count, f"invalid: reward {name!r} returned {type(raw).__name__}; "
                                 f"expected a list of {count} floats or None")
    values = list(raw)
    if len(values) != count:
        return unscorable(count, f"invalid: reward {name!r} returned {len(values)} scores for {count} samples")
    scored = []
    for index, value in enumerate(values):
        reason = None
        if isinstance(value, Scored):
            value, reason = value.value, value.reason
        if value is None:
            scored.append(Scored(None, reason or "unscorable"))
        elif isinstance(value, bool) or not isinstance(value, numbers.Real):
            scored.append(Scored(None, f"invalid: reward {name!r} returned {value!r} at position {index}; "
                                       "expected a float or None"))
        elif not math.isfinite(float(value)):
            scored.append(Scored(None, f"invalid: reward {name!r} returned non-finite {float(value)} at {index}"))
        else:
            scored.append(Scored(float(value)))
    return scored


class RewardService:
    """Builds the reward terms of `config` (only `tasks` if given) and scores batches of samples."""

    def __init__(self, config: RewardsConfig, *, tasks: Iterable[str] | None = None):
        self.config = config
        self.tasks = list(config.tasks) if tasks is None else list(tasks)
        self._units: dict[tuple, _Unit] = {}
        self._task_terms: dict[str, list[tuple[RewardTermConfig, _Unit]]] = {}
        try:
            for task in self.tasks:
                self._task_terms[task] = [(term, self._unit_for(task, term)) for term in config.terms_for(task)]
        except BaseException:
            self.close()
            raise

    def _unit_for(self, task: str, term: RewardTermConfig) -> _Unit:
        name = registry.canonical_name(term.name)
        label = f"rewards.tasks.{task}: term {term.name!r}"
        try:
            factory = registry.resolve(name, term.options)
        except ValueError as exc:
            raise ValueError(f"{label}: {exc}") from exc
        isolation = term.isolation if term.isolation != "auto" else getattr(factory, "isolation", "process")
        if isolation not in ("process", "thread"):
            raise ValueError(f"{label}: the reward declares isolation={isolation!r}; expected 'process' or 'thread'")
        key = (name, json.dumps(term.options, sort_keys=True, default=repr), term.timeout_s, isolation)
        if key in self._units:
            return self._units[key]
        unit = _Unit(name, dict(term.options), float(term.timeout_s), isolation)
        if isolation == "process":
            unit.pool = DeadlinePool(1, name=f"reward-{term.name}"[:40])
            self._units[key] = unit  # closed with the others if the warm-up fails
            try:  # build it in its worker now: bad options fail here, and the first batch pays no start-up
                unit.pool.warm_up(RewardCall(name, term.options))
            except ValueError as exc:
                raise ValueError(f"{label}: {exc}") from exc
        else:
            try:
                unit.reward = registry.get(name, **term.options)
            except Exception as exc:
                raise ValueError(
                    f"{label}: cannot build it: {short_exception(exc)} (build only the tasks you use: "
                    "RewardService(config, tasks=[...]))"
                ) from exc
        self._units[key] = unit
        return unit

    # ------------------------------------------------------------------------------------------ scoring
    def score(self, batch: RolloutBatch) -> tuple[RolloutBatch, dict[str, float]]:
        """`batch` with its reward columns filled (a new batch) and the reward metrics; see the module docstring."""
        terms, reasons, latency = self.score_terms(samples_of(batch))
        task_terms = {task: [term for term, _ in pairs] for task, pairs in self._task_terms.items()}
        return write_scores(batch, task_terms, terms, reasons, lambda task, name: latency.get((task, name), 0.0))

    def score_terms(self, samples: Sequence[Sample]) -> tuple[dict[str, list[float | None]], dict[str, list[str | None]],
                                                               dict[tuple[str, str], float]]:
        """Every sample's terms, unweighted: term -> value per sample (None where unscorable, or where the
        sample's task has no such term), term -> why it is None (`absent` for the latter), and
        (task, term) -> seconds its batched call took. What a reward actor answers (actors/rewards.py)."""
        samples = check_samples(samples, self._task_terms)
        members: dict[int, list[int]] = defaultdict(list)  # id(unit) -> sample indices
        units = {}
        for index, sample in enumerate(samples):
            for _, unit in self._task_terms[sample.task]:
                members[id(unit)].append(index)
                units[id(unit)] = unit
        results, latency = self._run_units(units, members, samples)

        names = sorted({term.name for task in {s.task for s in samples} for term, _ in self._task_terms[task]})
        terms = {name: [None] * len(samples) for name in names}
        reasons: dict[str, list[str | None]] = {name: ["absent"] * len(samples) for name in names}
        for index, sample in enumerate(samples):
            for term, unit in self._task_terms[sample.task]:
                scored = results[id(unit)][index]
                terms[term.name][index] = scored.value
                reasons[term.name][index] = scored.reason if scored.value is None else None
        seconds = {(task, term.name): latency.get(id(unit), 0.0)
                   for task, pairs in self._task_terms.items() for term, unit in pairs}
        return terms, reasons, seconds

    def _run_units(self, units, members, samples) -> tuple[dict[int, dict[int, Scored]], dict[int, float]]:
        """Run every unit on its samples concurrently; (unit id -> sample index -> Scored, unit id -> seconds)."""
        outputs: dict[int, list[Scored]] = {}
        latency: dict[int, float] = {}
        threads = {}
        for unit_id, unit in units.items():
            batch = [samples[i] for i in members[unit_id]]
            thread = threading.Thread(target=self._run_one, args=(unit, batch, unit_id, outputs, latency),
                                      name=f"reward-{unit.name}"[:40], daemon=True)
            threads[unit_id] = (thread, time.monotonic())
            thread.start()
        for unit_id, (thread, started) in threads.items():
            unit = units[unit_id]
            if unit.isolation == "process":
                thread.join()  # the pool enforces the deadline itself
            else:
                thread.join(max(0.0, started + unit.timeout_s + THREAD_GRACE_S - time.monotonic()))
            if thread.is_alive() or unit_id not in outputs:
                logger.warning("reward %r overran its %.3g s deadline; its thread is abandoned", unit.name, unit.timeout_s)
                outputs[unit_id] = unscorable(len(members[unit_id]), f"timeout: exceeded {unit.timeout_s:g} s "
                                                                        "(thread abandoned)")
                latency[unit_id] = time.monotonic() - started
        by_index = {unit_id: dict(zip(members[unit_id], outputs[unit_id])) for unit_id in units}
        return by_index, latency

    @staticmethod
    def _run_one(unit: _Unit, batch: list[Sample], unit_id: int, outputs: dict, latency: dict) -> None:
        started = time.monotonic()
        try:
            result = unit.run(batch)
        except BaseException as exc:  # noqa: B036 - a reward must never take the service down
            result = unscorable(len(batch), f"error: {short_exception(exc)}")
        latency.setdefault(unit_id, time.monotonic() - started)
        outputs.setdefault(unit_id, result)

    # ------------------------------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Stop worker processes and close rewards that have a `close()`."""
        for unit in self._units.values():
            if unit.pool is not None:
                unit.pool.close()
            close = getattr(unit.reward, "close", None)
            if callable(close):
                try:
                    close()
                except Exception as exc:
                    logger.warning("closing reward %r failed: %s", unit.name, short_exception(exc))

    def __enter__(self) -> RewardService:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def metric_term(name: str) -> str:
    """A reward term's name as one component of a metric key: one-off names (`path/to/file.py:fn`) hold '/',
    which would split the key, so it becomes '.' (`path.to.file.py:fn`; a leading '/' is dropped)."""
    return name.strip("/").replace("/", ".")


def write_scores(batch: RolloutBatch, task_terms: Mapping[str, Sequence[RewardTermConfig]],
                 terms: dict[str, list[float | None]], reasons: dict[str, list[str | None]],
                 latency_of: Callable[[str, str], float]) -> tuple[RolloutBatch, dict[str, float]]:
    """`batch` with its reward columns written (a new batch) and the reward metrics, from its rows' unweighted
    `terms` and `reasons` (`RewardService.score_terms`): the one place scores enter a batch, shared by the
    service and the Ray router, so both answer the same batch. `latency_of(task, term)`: seconds of the call."""
    total, total_reasons = weighted_totals(batch.task, task_terms, terms, reasons)
    metrics = reward_metrics(batch.task, {task: [term.name for term in ts] for task, ts in task_terms.items()}, terms,
                             reasons, total, latency_of, total_reasons)
    return dataclasses.replace(batch, rewards=terms, reward_reasons=reasons, total=total,
                               total_reason=total_reasons), metrics


def weighted_totals(tasks: Sequence[str], task_terms: Mapping[str, Sequence[RewardTermConfig]],
                    terms: Mapping[str, list], reasons: Mapping[str, list]) -> tuple[list[float | None], list[str | None]]:
    """Each row's total, Σ weight × term over its task's terms in config order, and why it is None (`tasks`:
    the dataset task of each row).

    The ONE place totals are summed (the service and the Ray router both call it, so their floats match).
    None with reason `unscored: term 'x' is None (<its reason>)` when a term is None, and `overflow: ...`
    when finite terms sum to ±inf (a reward of 1e308 with weight 2): such a row cannot be scored, and an
    inf total would make its group's advantages NaN. Never 0 in its place (rewards/base.py)."""
    totals: list[float | None] = []
    total_reasons: list[str | None] = []
    for index, task in enumerate(tasks):
        total, reason = 0.0, None
        for term in task_terms[task]:
            value = terms[term.name][index]
            if value is None:
                total, reason = None, f"unscored: term {term.name!r} is None ({reasons[term.name][index]})"
                break
            total += term.weight * value
        if total is not None and not math.isfinite(total):
            parts = " + ".join(f"{term.weight:g} × {terms[term.name][index]:g} ({term.name})"
                               for term in task_terms[task])
            total, reason = None, f"overflow: the weighted total {parts} is not a finite float"
        totals.append(total)
        total_reasons.append(reason)
    return totals, total_reasons


def _mean(values: list[float]) -> float:
    """The mean; of each value ÷ n when the plain sum overflows (finite values always have a finite mean)."""
    total = sum(values)
    return total / len(values) if math.isfinite(total) else sum(v / len(values) for v in values)


def reward_metrics(tasks: Sequence[str], task_terms: Mapping[str, list[str]], terms: Mapping[str, list],
                   reasons: Mapping[str, list], total: list, latency_of: Callable[[str, str], float],
                   total_reasons: Sequence[str | None]) -> dict[str, float]:
    """`reward/<task>/<term>/{count,mean,none,timeouts,errors,latency_s,none/<reason>}` and
    `reward/<task>/total/{count,none,mean,none/<category>}` of one scored batch (`tasks`: each row's dataset
    task), computed in `write_scores` for the service and the Ray router alike. `latency_of(task, term)` is the
    seconds that term's batch took; `total_reasons` (from `weighted_totals`) gives the categories of the None
    totals."""
    metrics: dict[str, float] = {}
    by_task: dict[str, list[int]] = defaultdict(list)
    for index, task in enumerate(tasks):
        by_task[task].append(index)
    for task, indices in by_task.items():
        for name in task_terms[task]:
            prefix = f"reward/{task}/{metric_term(name)}"
            values = [terms[name][i] for i in indices]
            scored_values = [v for v in values if v is not None]
            categories = Counter(reasons[name][i].split(":", 1)[0].strip() for i in indices if terms[name][i] is None)
            metrics[f"{prefix}/count"] = float(len(indices))
            if scored_values:
                metrics[f"{prefix}/mean"] = _mean(scored_values)
            metrics[f"{prefix}/none"] = float(len(values) - len(scored_values))
            metrics[f"{prefix}/timeouts"] = float(categories.get("timeout", 0))
            metrics[f"{prefix}/errors"] = float(sum(categories.get(c, 0) for c in ERROR_CATEGORIES))
            metrics[f"{prefix}/latency_s"] = latency_of(task, name)
            for category, count in categories.items():
                metrics[f"{prefix}/none/{category}"] = float(count)
        totals = [total[i] for i in indices]
        scored_totals = [t for t in totals if t is not None]
        metrics[f"reward/{task}/total/count"] = float(len(indices))
        metrics[f"reward/{task}/total/none"] = float(len(totals) - len(scored_totals))
        if scored_totals:
            metrics[f"reward/{task}/total/mean"] = _mean(scored_totals)
        for category, count in Counter(total_reasons[i].split(":", 1)[0] for i in indices if total[i] is None).items():
            metrics[f"reward/{task}/total/none/{category}"] = float(count)
    return metrics


def check_samples(samples: Iterable[Sample], tasks: Iterable[str]) -> list[Sample]:
    """`samples` as a list; ValueError naming the first item that is not a Sample or whose task has no terms
    (samples[i] is row i of the batch they were made from)."""
    samples, tasks = list(samples), list(tasks)
    for index, sample in enumerate(samples):
        if not isinstance(sample, Sample):
            raise ValueError(f"samples[{index}]: got {type(sample).__name__}; expected rewards.Sample")
        if sample.task not in tasks:
            raise ValueError(f"row {index}: task {sample.task!r} has no reward terms in this service; "
                             f"built tasks: {', '.join(tasks)}")
    return samples
