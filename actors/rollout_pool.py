"""The driver's handle on its rollout workers: shard, sample, survive a dead worker, sync weights.

Every unit of rollout work is keyed (shard k of a step is sampled with a seed that is a pure function of the run
seed, the step and k), so a shard sampled again after a worker died or hung, or after a resume, gives the same
rows, and collection by (uid, sample index) is idempotent: no sample is lost, trained twice, or drawn from weights
older than those its shard was dispatched for. Keyed shards, dead workers and weight syncs: docs/architecture.md
§3.1; repeated rows: docs/reliability.md §4; deadlines: docs/reliability.md §14; saved shards on resume:
docs/reliability.md §15.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray

from actors.cluster import bundle_strategy
from actors.config import RolloutConfig
from actors.group import ActorGroup, Outcome, gather, unfinished, wait, wait_one
from actors.network_source import NetworkSource
from actors.rollout import PromptRequest, RolloutWorker
from actors.weight_sync import SYNC_KEY, sync_object_store

log = logging.getLogger(__name__)

START_KEY, SAMPLE_KEY = "rollout.start_timeout_s", "rollout.sample_timeout_s"


def shard_seed(run_seed: int, step: int, shard: int) -> int:
    from rl.masking import stable_seed

    return stable_seed("rollout", run_seed, step, shard)


@dataclass
class PendingShard:
    index: int  # the worker (and shard) index
    requests: list[PromptRequest]
    seed: int
    future: Any
    dispatched_version: int
    generation: int  # of the worker it was sent to; a newer one means the worker was already replaced
    sent: float = field(default_factory=time.monotonic)  # when `future` was submitted: it is due sample_timeout_s later
    batch: Any = None  # its RolloutBatch once delivered: `collect` then waits for nothing (requests, future unused)

    @classmethod
    def delivered(cls, index: int, batch: Any, dispatched_version: int) -> PendingShard:
        """A shard whose rows are already in: collected ahead of its step (`RolloutPool.finish`), or saved
        with a checkpoint and read back on resume (docs/architecture.md §5)."""
        return cls(index, [], 0, None, dispatched_version, generation=-1, batch=batch)


class RolloutPool:
    """`num_workers` RolloutWorker actors (an `ActorGroup`) sampling one step's requests in parallel."""

    def __init__(self, cfg: RolloutConfig, source: NetworkSource, *, dtype: str | None = None,
                 placement_group: Any = None, max_restarts_per_step: int = 2, name: str | None = None,
                 lora: Any = None):
        """`name`: when given, worker k's actor is named `<name>-rollout-<k>.<generation>` (generation 0,
        then 1, 2, ... after restarts) so operators and fault tests can find it with `ray.get_actor`."""
        self.cfg, self.source, self.dtype, self.placement_group = cfg, source, dtype, placement_group
        self.max_restarts_per_step, self.name = max_restarts_per_step, name
        self.lora = lora  # learner.lora: the workers carry the same adapters (actors/rollout.py RolloutWorker)
        self.workers = ActorGroup("rollout worker", cfg.num_workers, self._start)
        try:
            self._await_start(range(cfg.num_workers))  # so that no deadline of a step includes a start
        except BaseException:
            self.workers.shutdown()
            raise
        self.version = 0  # the version every live worker holds (after the last sync)
        self.timeouts = 0  # workers replaced for overrunning a deadline, total over the run (health/worker_timeouts)
        self.duplicate_rows = 0  # rows delivered again and dropped, total over the run (health/duplicate_rows)
        self.learners: Any = None  # set by `sync`; a restarted worker fetches weights from it
        self._broadcast: Any = None  # BroadcastSync group (backend "broadcast"), rebuilt after a restart
        self._dispatched: list[PendingShard] = []  # the last dispatch (sync waits for it)

    @property
    def restarts(self) -> int:
        """Workers replaced so far, total over the run (health/worker_restarts)."""
        return self.workers.restarts

    # -- sampling -------------------------------------------------------------------------------
    def dispatch(self, requests: Sequence[PromptRequest], *, step: int, run_seed: int) -> list[PendingShard]:
        """Start sampling; returns one pending shard per worker (empty shards are skipped)."""
        n = len(self.workers)
        bounds = [round(i * len(requests) / n) for i in range(n + 1)]
        pending = []
        for k in range(n):
            shard = list(requests[bounds[k]:bounds[k + 1]])
            if shard:
                seed = shard_seed(run_seed, step, k)
                pending.append(PendingShard(k, shard, seed, self._sample(k, shard, seed), self.version,
                                            self.workers.generations[k]))
        self._dispatched = list(pending)
        return pending

    def _sample(self, worker: int, requests: list[PromptRequest], seed: int) -> Any:
        return self.workers[worker].sample.remote(requests, text=self.cfg.sampler, image=self.cfg.image_sampler,
                                                  seed=seed)

    def collect(self, pending: list[PendingShard]) -> tuple[list[Any], dict[str, float]]:
        """Wait for every shard not delivered yet, each until it is due; a shard whose worker died or overran
        is re-sampled (same seed) on a fresh worker holding the current weights.

        Returns the shards' RolloutBatches in request order, each (uid, sample index) once (a row delivered
        again is dropped and counted), and timing/health stats."""
        from rl.batch import drop_repeated_rows

        started, restarts = time.perf_counter(), 0
        batches = []
        for shard in pending:  # the shards sample concurrently; each is waited for in turn, until it is due
            while shard.batch is None:
                outcome = wait_one(shard.future, shard.sent + self.cfg.sample_timeout_s - time.monotonic())
                if outcome.status == "ok":
                    shard.batch = outcome.value
                    break
                if outcome.status == "error":
                    raise RuntimeError(f"sample failed on rollout worker {shard.index}: "
                                       f"{outcome.describe(None)}") from outcome.error
                if self.workers.generations[shard.index] == shard.generation:  # else a sync replaced it already
                    restarts += 1
                    if restarts > self.max_restarts_per_step:
                        why = outcome.describe(self.cfg.sample_timeout_s, SAMPLE_KEY)
                        raise RuntimeError(f"rollout workers failed {restarts} times in one step; giving up "
                                           f"(last: worker {shard.index}: {why})") from outcome.error
                    self._restart(shard.index, outcome)
                shard.generation = self.workers.generations[shard.index]
                shard.future, shard.sent = self._sample(shard.index, shard.requests, shard.seed), time.monotonic()
            stale = [v for v in shard.batch.policy_version if v < shard.dispatched_version]
            if stale:
                raise RuntimeError(f"worker {shard.index} returned samples at version {min(stale)} for a shard "
                                   f"dispatched at version {shard.dispatched_version}")
            batches.append(shard.batch)
        batches, dropped = drop_repeated_rows(batches)
        if dropped:
            log.warning("dropped %d rollout row(s) delivered more than once (same uid and sample index, same "
                        "content)", dropped)
            self.duplicate_rows += dropped
        return batches, {"perf/rollout_collect_s": time.perf_counter() - started,
                         **self.health(), "health/duplicate_rows": float(self.duplicate_rows)}

    def finish(self, pending: list[PendingShard]) -> list[PendingShard]:
        """`pending` collected now (as `collect` does it, with its deadlines and checks) and returned as
        delivered shards, one per batch, which a later `collect` takes without waiting. A checkpoint of step s
        in async mode saves step s+1's shards so (jobs/train.py `save`); the sync of step s has waited for them."""
        batches, _ = self.collect(pending)
        return [PendingShard.delivered(k, batch, pending[0].dispatched_version) for k, batch in enumerate(batches)]

    def decode(self, calls: Sequence[tuple[list[list[int]], int]], sampler: dict[str, Any], *, mask_id: int,
               pad_id: int | None) -> Iterator[tuple[list[list[int]], int]]:
        """Held-out evaluation's sampler calls (jobs/evaluate.py `Decode`) on the workers, at the version they
        all hold (`sync`): one call in flight per worker, the next sent as one returns; yields (response ids,
        forward passes) per call in order. A worker that dies or overruns `rollout.sample_timeout_s` on a call
        is replaced (with the current weights) and the call sent again: same prompts, seed and weights, so the
        same answer; more than `max_restarts_per_step` replacements end the evaluation with an error."""
        results: list[Any] = [None] * len(calls)
        queue = deque(range(len(calls)))
        in_flight: dict[int, tuple[int, Any, float]] = {}  # worker -> (call index, future, sent at)
        restarts, next_out = 0, 0

        def send(worker: int) -> None:
            if queue:
                index = queue.popleft()
                prompts, seed = calls[index]
                future = self.workers[worker].decode.remote(prompts, sampler, seed=seed, mask_id=mask_id,
                                                            pad_id=pad_id)
                in_flight[worker] = (index, future, time.monotonic())

        for worker in range(len(self.workers)):
            send(worker)
        while in_flight:
            due = min(sent for _, _, sent in in_flight.values()) + self.cfg.sample_timeout_s
            worker, outcome = next(wait({w: f for w, (_, f, _) in in_flight.items()}, due - time.monotonic()))
            if outcome.status == "timeout":  # every call still running is reported: the oldest is the one due
                worker = min(in_flight, key=lambda w: in_flight[w][2])
            index, _, _ = in_flight.pop(worker)
            if outcome.status == "error":
                raise RuntimeError(f"held-out decoding failed on rollout worker {worker}: "
                                   f"{outcome.describe(None)}") from outcome.error
            if outcome.status == "ok":
                version, responses, forwards = outcome.value
                if version != self.version:
                    raise RuntimeError(f"rollout worker {worker} decoded at version {version}; the pool synced "
                                       f"version {self.version}")
                results[index] = (responses, forwards)
            else:  # died or overran: a fresh worker decodes the same call again
                restarts += 1
                if restarts > self.max_restarts_per_step:
                    why = outcome.describe(self.cfg.sample_timeout_s, SAMPLE_KEY)
                    raise RuntimeError(f"rollout workers failed {restarts} times in one evaluation; giving up "
                                       f"(last: worker {worker}: {why})") from outcome.error
                self._restart(worker, outcome)
                queue.appendleft(index)
            send(worker)
            while next_out < len(calls) and results[next_out] is not None:
                yield results[next_out]
                next_out += 1

    def health(self) -> dict[str, float]:
        return {"health/worker_restarts": float(self.restarts), "health/worker_timeouts": float(self.timeouts)}

    def worker_name(self, index: int, generation: int) -> str | None:
        return None if self.name is None else f"{self.name}-rollout-{index}.{generation}"

    def _start(self, index: int, generation: int) -> Any:
        options: dict[str, Any] = {"num_cpus": self.cfg.cpus_per_worker, "num_gpus": self.cfg.gpus_per_worker}
        if self.placement_group is not None:
            options["scheduling_strategy"] = bundle_strategy(self.placement_group, index)
        if self.name is not None:
            options["name"] = self.worker_name(index, generation)
        return ray.remote(RolloutWorker).options(**options).remote(self.source, dtype=self.dtype,
                                                                   image_tokenizer=self.cfg.image_tokenizer,
                                                                   lora=self.lora)

    def _await_start(self, indices: Sequence[int]) -> None:
        gather([self.workers[index].version.remote() for index in indices], "start", "rollout worker",
               self.cfg.start_timeout_s, START_KEY)

    def _restart(self, index: int, outcome: Outcome, key: str = SAMPLE_KEY) -> None:
        """Replace worker `index` (dead, or past the deadline set by `key`: killed) by a fresh actor holding
        the current policy version."""
        timeout_s = self.cfg.sample_timeout_s if key == SAMPLE_KEY else self.cfg.weight_sync.timeout_s
        log.warning("rollout worker %d: %s; replacing it at version %d", index, outcome.describe(timeout_s, key),
                    self.version)
        if outcome.status == "timeout":
            self.timeouts += 1
        worker = self.workers.replace(index)
        self._broadcast = None  # the old group has a dead member; the next sync forms a new one
        self._await_start([index])
        if self.version > 0:  # version 0 is the source's own weights, which a fresh worker already holds
            if self.learners is None:
                raise RuntimeError("a worker restarted after a weight sync, but no learner to fetch weights from")
            sync_object_store(self.learners, [worker], self.version, self.cfg.weight_sync.bucket_mb,
                              self.cfg.weight_sync.timeout_s)

    # -- weights --------------------------------------------------------------------------------
    def sync(self, learners: Any, version: int) -> dict[str, float]:
        """Push learner rank 0's weights as `version` to every worker, after their samples in flight;
        a worker found dead, or past a deadline, is replaced by a fresh one holding `version`."""
        waited = time.perf_counter()
        self.learners, bucket_mb, timeout_s = learners, self.cfg.weight_sync.bucket_mb, self.cfg.weight_sync.timeout_s
        dispatched, self._dispatched = self._dispatched, []
        if dispatched:  # finished or failed, either way the worker is free after this; past its due time: replaced
            due = min(shard.sent for shard in dispatched) + self.cfg.sample_timeout_s
            for position in unfinished({p: s.future for p, s in enumerate(dispatched)}, due - time.monotonic()):
                self._restart(dispatched[position].index, Outcome("timeout"))
        started = time.perf_counter()
        lost: list[tuple[int, Outcome]] = []
        if self.cfg.weight_sync.backend == "broadcast":
            if self._broadcast is None:
                from actors.weight_sync import BroadcastSync

                backend = "nccl" if self.cfg.gpus_per_worker > 0 else "gloo"
                self._broadcast = BroadcastSync(learners, list(self.workers), backend, timeout_s)
            versions = self._broadcast.sync(version, bucket_mb)
        else:
            manifest, buckets = learners.publish_weights(version, bucket_mb)
            applied = {index: worker.set_weights.remote(manifest, buckets) for index, worker in enumerate(self.workers)}
            versions = []
            for index, outcome in wait(applied, timeout_s):
                if outcome.status == "ok":
                    versions.append(outcome.value)
                elif outcome.status == "error":
                    raise RuntimeError(f"set_weights failed on rollout worker {index} of {len(applied)}: "
                                       f"{outcome.describe(timeout_s)}") from outcome.error
                else:
                    lost.append((index, outcome))
        if any(v != version for v in versions):
            raise RuntimeError(f"weight sync to version {version} left workers at versions {versions}")
        self.version = version
        for index, outcome in lost:
            self._restart(index, outcome, SYNC_KEY)
        return {"perf/weight_sync_s": time.perf_counter() - started, "perf/weight_sync_wait_s": started - waited,
                **self.health()}

    def checksums(self) -> list[str]:
        return gather([w.checksum.remote() for w in self.workers], "checksum", "rollout worker",
                      self.cfg.weight_sync.timeout_s, SYNC_KEY)

    def versions(self) -> list[int]:
        return gather([w.version.remote() for w in self.workers], "version", "rollout worker",
                      self.cfg.weight_sync.timeout_s, SYNC_KEY)

    def shutdown(self) -> None:
        self.workers.shutdown()
