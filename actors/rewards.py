"""Reward service on Ray: one actor for the CPU reward terms, one actor per heavy scorer, and the router
that makes them look like one `rewards.RewardService`.

Heavy scorers (`clip`, `image_reward`) hold a model of their own (on a GPU when the cluster has them), so they
run in Ray actors beside the CPU terms' actor; `RewardRouter.score(batch)` returns exactly what
`RewardService.score` returns in one process (the same reward columns, totals and metrics), so the driver cannot
tell them apart, and it replaces an actor that dies or hangs, re-scoring its samples (bounded and counted in
`health/reward_actor_*`). Actors, scoring and faults: docs/architecture.md §4.2; when the router is used:
docs/multimodal.md §1; deadlines: docs/reliability.md §14.
"""

from __future__ import annotations

import inspect
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import ray

from actors.cluster import RoleResources
from actors.config import RewardActorsConfig
from actors.group import ActorGroup, wait, wait_one
from rewards import registry
from rewards.base import Sample, samples_of
from rewards.config import RewardsConfig, RewardTermConfig
from rewards.service import RewardService, check_samples, write_scores

if TYPE_CHECKING:  # the reward actors' processes need no torch
    from rl.batch import RolloutBatch

TermScores = tuple[dict[str, list[float | None]], dict[str, list[str | None]], dict[tuple[str, str], float]]
"""What `RewardService.score_terms` (and so a reward actor) answers: terms, reasons, (task, term) -> seconds."""

CPU_GROUP = "cpu"
"""Name of the actor that holds every term not in `heavy_terms`."""


class RewardActorError(RuntimeError):
    """A reward actor could not be started (not placed in time, or died while building its rewards)."""


# ---------------------------------------------------------------------------------------------- actor side
def on_device(config: RewardsConfig, device: str) -> RewardsConfig:
    """`config` with `device` added to the options of every term whose factory takes a `device` option
    and whose options name none (a heavy scorer in an actor that holds a GPU)."""
    tasks = {}
    for task, terms in config.tasks.items():
        placed = []
        for term in terms:
            if "device" not in term.options:
                try:
                    factory = registry.resolve(registry.canonical_name(term.name), term.options)
                except ValueError:
                    factory = None  # the service reports it, naming the task and term
                if factory is not None and "device" in inspect.signature(factory).parameters:
                    term = replace(term, options={**term.options, "device": device})
            placed.append(term)
        tasks[task] = placed
    return RewardsConfig(tasks=tasks)


class RewardActor:
    """A `RewardService` over some terms; run it as `ray.remote(RewardActor)` (a synchronous actor, so
    math-verify's `signal.alarm` timeouts keep working)."""

    def __init__(self, config: RewardsConfig):
        self.config = config
        self.service: RewardService | None = None

    def start(self) -> list[str]:
        """Build the rewards (bad options raise here, naming the term); returns the terms held."""
        if self.service is None:
            config = self.config
            if ray.is_initialized() and ray.get_gpu_ids():
                config = on_device(config, "cuda")
            self.service = RewardService(config)
        return sorted({term.name for terms in self.config.tasks.values() for term in terms})

    def score(self, samples: list[Sample]) -> TermScores:
        self.start()
        return self.service.score_terms(samples)

    def close(self) -> None:
        if self.service is not None:
            self.service.close()


# ---------------------------------------------------------------------------------------------- driver side
@dataclass
class _Group:
    """One reward actor's share: its name, the config subset it holds, its resources and its slot in the
    router's `ActorGroup`."""

    name: str
    config: RewardsConfig
    cpus: float
    gpus: float
    slot: int

    @property
    def term_names(self) -> list[str]:
        return sorted({term.name for terms in self.config.tasks.values() for term in terms})

    @property
    def timeout_s(self) -> float:
        """The longest deadline of its terms (they run concurrently inside the actor)."""
        return max(term.timeout_s for terms in self.config.tasks.values() for term in terms)


def split_config(config: RewardsConfig, tasks: Iterable[str], heavy_terms: Sequence[str]) -> dict[str, RewardsConfig]:
    """Group name -> the subset of `config` (for `tasks`) that its actor scores: `cpu` holds the terms not in
    `heavy_terms`, each heavy term present gets its own group. Term order within a task is kept."""
    by_group: dict[str, dict[str, list[RewardTermConfig]]] = defaultdict(dict)
    for task in tasks:
        for term in config.terms_for(task):
            group = term.name if term.name in heavy_terms else CPU_GROUP
            by_group[group].setdefault(task, []).append(term)
    return {group: RewardsConfig(tasks=dict(task_terms)) for group, task_terms in by_group.items()}


def reward_roles(config: RewardsConfig, cfg: RewardActorsConfig, *, tasks: Iterable[str] | None = None,
                 has_gpus: bool, section: str = "reward_actors") -> list[RoleResources]:
    """The reward actors as `RoleResources` for `actors.cluster.check_resources` (errors name the keys)."""
    groups = split_config(config, list(config.tasks) if tasks is None else list(tasks), cfg.heavy_terms)
    heavy = [g for g in groups if g != CPU_GROUP]
    roles = []
    if CPU_GROUP in groups:
        roles.append(RoleResources("reward actor (cpu terms)", 1, cfg.cpus_per_actor, 0.0, "rewards.tasks",
                                   f"{section}.cpus_per_actor", f"{section}.gpus_per_heavy_actor"))
    if heavy:
        roles.append(RoleResources(f"reward actor ({', '.join(heavy)})", len(heavy), cfg.cpus_per_actor,
                                   cfg.gpus_per_heavy_actor if has_gpus else 0.0, f"{section}.heavy_terms",
                                   f"{section}.cpus_per_actor", f"{section}.gpus_per_heavy_actor"))
    return roles


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    first = text[-1] if text else ""
    first = first if len(first) <= limit else first[:limit] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class RewardRouter:
    """Scores samples on reward actors; a drop-in for `RewardService(config, tasks=tasks)`.

    All actors are started (and their rewards built) in the constructor, so bad options or unplaceable
    resources fail before anything is scored.
    """

    def __init__(self, config: RewardsConfig, cfg: RewardActorsConfig | None = None, *,
                 tasks: Iterable[str] | None = None):
        self.config = config
        self.cfg = cfg or RewardActorsConfig()
        self.tasks = list(config.tasks) if tasks is None else list(tasks)
        self._task_terms = {task: config.terms_for(task) for task in self.tasks}
        has_gpus = ray.cluster_resources().get("GPU", 0) > 0
        self.groups: dict[str, _Group] = {}
        for name, sub_config in split_config(config, self.tasks, self.cfg.heavy_terms).items():
            gpus = self.cfg.gpus_per_heavy_actor if (has_gpus and name != CPU_GROUP) else 0.0
            self.groups[name] = _Group(name, sub_config, self.cfg.cpus_per_actor, gpus, len(self.groups))
        self._group_of = {(task, term.name): name for name, group in self.groups.items()
                          for task, terms in group.config.tasks.items() for term in terms}
        self._by_slot = list(self.groups.values())
        self._stale: set[str] = set()  # groups given up on in an earlier batch: replaced before the next one
        self.timeouts = 0
        """Actors killed for not answering a batch in time so far."""
        self.failures = 0
        """Batches whose terms of one actor were given up on (None with reason `crash`/`timeout`)."""
        self.actors = ActorGroup("reward actor", len(self._by_slot), self._start)  # stops what started on failure

    @property
    def restarts(self) -> int:
        """Fresh actors started in place of dead or hung ones so far (a start that failed counts too)."""
        return self.actors.restarts

    # ------------------------------------------------------------------------------------------ actors
    def _start(self, slot: int, generation: int) -> Any:
        """A started actor for the group of `slot`: placed, rewards built. Raises ValueError (bad reward config)
        or RewardActorError (not placed in time, or died while starting)."""
        group = self._by_slot[slot]
        actor = ray.remote(RewardActor).options(num_cpus=group.cpus, num_gpus=group.gpus,
                                                max_restarts=0).remote(group.config)
        outcome = wait_one(actor.start.remote(), self.cfg.start_timeout_s)
        if outcome.status == "ok":
            return actor
        ray.kill(actor)
        what = f"reward actor {group.name!r} (terms {group.term_names})"
        if outcome.status == "timeout":
            raise RewardActorError(
                f"{what} did not start within reward_actors.start_timeout_s={self.cfg.start_timeout_s:g} s; it needs "
                f"{group.cpus:g} CPU and {group.gpus:g} GPU, free now: {ray.available_resources()}")
        if outcome.status == "died":
            raise RewardActorError(f"{what} died while starting: {_short(outcome.error)}") from outcome.error
        if isinstance(outcome.error, ValueError):
            raise ValueError(str(outcome.error)) from outcome.error
        raise RewardActorError(f"{what} failed to start: {_short(outcome.error)}") from outcome.error

    def actor(self, group: str) -> Any:
        """The actor handle of `group` (`cpu` or a heavy term name), e.g. to inspect or kill it."""
        if group not in self.groups:
            raise KeyError(f"no reward actor {group!r}; actors: {', '.join(self.groups)}")
        return self.actors[self.groups[group].slot]

    # ------------------------------------------------------------------------------------------ scoring
    def score(self, batch: RolloutBatch) -> tuple[RolloutBatch, dict[str, float]]:
        """What `RewardService(config, tasks).score(batch)` returns: the batch with its reward columns filled
        (a new batch) and the reward metrics; see the module docstring."""
        samples = check_samples(samples_of(batch), self._task_terms)
        members = {name: [i for i, s in enumerate(samples) if s.task in group.config.tasks]
                   for name, group in self.groups.items()}
        answers = self._run_groups(samples, {name: rows for name, rows in members.items() if rows})

        names = sorted({term.name for task in {s.task for s in samples} for term in self._task_terms[task]})
        terms: dict[str, list[float | None]] = {name: [None] * len(samples) for name in names}
        reasons: dict[str, list[str | None]] = {name: ["absent"] * len(samples) for name in names}
        latency: dict[tuple[str, str], float] = {}
        for name, (answer, failure, seconds) in answers.items():
            for position, index in enumerate(members[name]):
                for term in self.groups[name].config.tasks[samples[index].task]:
                    if answer is None:
                        terms[term.name][index], reasons[term.name][index] = None, failure
                    else:
                        terms[term.name][index] = answer[0][term.name][position]
                        reasons[term.name][index] = answer[1][term.name][position]
            for task in self.groups[name].config.tasks:
                for term in self.groups[name].config.tasks[task]:
                    latency[task, term.name] = answer[2][task, term.name] if answer is not None else seconds
        return write_scores(batch, self._task_terms, terms, reasons, lambda task, name: latency.get((task, name), 0.0))

    def _run_groups(self, samples: list[Sample], members: dict[str, list[int]]
                    ) -> dict[str, tuple[TermScores | None, str | None, float]]:
        """Score every group's samples concurrently, re-sending them to a fresh actor when its actor died or
        overran its deadline; group -> (its actor's answer or None, the reason when None, seconds taken)."""
        started = time.monotonic()
        answers: dict[str, tuple[TermScores | None, str | None, float]] = {}
        attempts: Counter[str] = Counter()
        last_failure: dict[str, str] = {}  # group -> "crash: ..." or "timeout: ..."
        in_flight: dict[str, tuple[Any, float]] = {}  # group -> (its call, when that call is due)

        def submit(name: str) -> None:
            group = self.groups[name]
            while attempts[name] < self.cfg.max_attempts:
                attempts[name] += 1
                try:
                    if name in self._stale or attempts[name] > 1:
                        self.actors.replace(group.slot)
                        self._stale.discard(name)
                except (RewardActorError, ValueError) as exc:
                    last_failure[name] = f"crash: {_short(exc)}"
                    continue
                call = self.actors[group.slot].score.remote([samples[i] for i in members[name]])
                in_flight[name] = (call, time.monotonic() + group.timeout_s + self.cfg.score_grace_s)
                return
            self.failures += 1
            self.actors.kill(group.slot)
            self._stale.add(name)  # replaced (and counted) at the next call
            kind, _, why = last_failure[name].partition(": ")
            answers[name] = (None, f"{kind}: reward actor {name!r} failed {attempts[name]} time(s) "
                                   f"(reward_actors.max_attempts={self.cfg.max_attempts}): {why}",
                             time.monotonic() - started)

        for name in members:
            submit(name)
        for name in members:  # the groups score concurrently; each is waited for in turn, until it is due
            while name in in_flight:
                call, due = in_flight.pop(name)
                outcome = wait_one(call, due - time.monotonic())
                if outcome.status == "ok":
                    answers[name] = (outcome.value, None, time.monotonic() - started)
                elif outcome.status == "error":  # an exception escaping RewardService.score: a bug, never hidden
                    raise RuntimeError(f"reward actor {name!r}: {outcome.describe(None)}") from outcome.error
                elif outcome.status == "died":  # a fresh actor re-scores the batch
                    last_failure[name] = f"crash: {_short(outcome.error)}"
                    submit(name)
                else:  # hung or stopped mid-batch (its terms' own deadlines cannot fire): killed by the replace
                    self.timeouts += 1
                    seconds = self.groups[name].timeout_s + self.cfg.score_grace_s
                    last_failure[name] = (f"timeout: no answer within {seconds:g} s (the longest timeout_s of its "
                                          "terms + reward_actors.score_grace_s)")
                    submit(name)
        return answers

    def health_metrics(self) -> dict[str, float]:
        """`health/reward_actor_restarts`, `health/reward_actor_timeouts` and `health/reward_actor_failures`,
        cumulative."""
        return {"health/reward_actor_restarts": float(self.restarts),
                "health/reward_actor_timeouts": float(self.timeouts),
                "health/reward_actor_failures": float(self.failures)}

    # ------------------------------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Stop the actors (their worker processes end with them), after at most 10 s for them to close."""
        for _ in wait({slot: actor.close.remote() for slot, actor in enumerate(self.actors)}, 10.0):
            pass  # a dead or stuck actor is killed below anyway
        self.actors.shutdown()

    def __enter__(self) -> RewardRouter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
