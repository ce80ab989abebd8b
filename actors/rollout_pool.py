"""The driver's handle on its rollout workers: shard, sample, survive a dead worker, sync weights.

Every unit of rollout work is keyed: a step's requests are split into `num_workers` contiguous shards
and shard k is sampled with seed `stable_seed(run_seed, step, k)`, so the same shard sampled again
(after a worker died, or after a resume) gives the same responses. Collection is idempotent: a shard
whose worker died is re-sampled once by a fresh worker that first loads the learner's current
weights, so no (prompt uid, sample index) is lost or counted twice, and no sample comes from weights
older than the ones the shard was dispatched for. Rows are also gathered by key: a row whose
(uid, sample index) was already delivered this step (a retried Ray task, a shard delivered twice) is
dropped and counted in `health/duplicate_rows` (cumulative over the run, like `health/worker_restarts`),
never trained twice; one that repeats a key with different content is an error
(`rl.batch.drop_repeated_rows`).

A worker may also die while it holds no work (during the reward or the update): the next object-store
weight sync then replaces it by a fresh worker holding the new version, and a shard that was still
assigned to the dead worker (async mode) is re-sampled on the replacement without a second restart.
(With the `broadcast` backend a dead member fails the collective; that sync raises.)

`sync` first waits for the samples still in flight (async mode: the next step's, which a worker finishes
before it applies new weights) and reports that wait as `perf/weight_sync_wait_s`, so that
`perf/weight_sync_s` is the transfer alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from actors.cluster import bundle_strategy
from actors.config import RolloutConfig
from actors.network_source import NetworkSource
from actors.rollout import PromptRequest, RolloutWorker
from actors.weight_sync import sync_object_store

log = logging.getLogger(__name__)

WORKER_FAILURES = (RayActorError, ActorDiedError, ActorUnavailableError)


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


class RolloutPool:
    """`num_workers` RolloutWorker actors sampling one step's requests in parallel."""

    def __init__(self, cfg: RolloutConfig, source: NetworkSource, *, dtype: str | None = None,
                 placement_group: Any = None, max_restarts_per_step: int = 2, name: str | None = None):
        """`name`: when given, worker k's actor is named `<name>-rollout-<k>.<generation>` (generation 0,
        then 1, 2, ... after restarts) so operators and fault tests can find it with `ray.get_actor`."""
        self.cfg, self.source, self.dtype, self.placement_group = cfg, source, dtype, placement_group
        self.max_restarts_per_step, self.name = max_restarts_per_step, name
        self.generations = [0] * cfg.num_workers
        self.workers = [self._start(k) for k in range(cfg.num_workers)]
        self.version = 0  # the version every live worker holds (after the last sync)
        self.restarts = 0  # total over the run (health/worker_restarts)
        self.duplicate_rows = 0  # rows delivered again and dropped, total over the run (health/duplicate_rows)
        self.learners: Any = None  # set by `sync`; a restarted worker fetches weights from it
        self._broadcast: Any = None  # BroadcastSync group (backend "broadcast"), rebuilt after a restart
        self._in_flight: list[Any] = []  # futures of the last dispatch (sync waits for them)

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
                                            self.generations[k]))
        self._in_flight = [p.future for p in pending]
        return pending

    def _sample(self, worker: int, requests: list[PromptRequest], seed: int) -> Any:
        return self.workers[worker].sample.remote(requests, text=self.cfg.sampler, image=self.cfg.image_sampler,
                                                  seed=seed)

    def collect(self, pending: list[PendingShard]) -> tuple[list[Any], dict[str, float]]:
        """Wait for every shard, re-sampling a dead worker's shard on a fresh worker.

        Returns the shards' RolloutBatches in request order, each (uid, sample index) once (a row delivered
        again is dropped and counted), and timing/health stats."""
        from rl.batch import RolloutBatch, drop_repeated_rows

        started, restarts = time.perf_counter(), 0
        batches: list[RolloutBatch] = []
        for shard in pending:
            while True:
                try:
                    batch = ray.get(shard.future)
                    break
                except WORKER_FAILURES as exc:
                    if self.generations[shard.index] == shard.generation:  # else a sync replaced it already
                        restarts += 1
                        if restarts > self.max_restarts_per_step:
                            raise RuntimeError(f"rollout workers died {restarts} times in one step; giving up "
                                               f"(last: worker {shard.index}: {exc})") from exc
                        log.warning("rollout worker %d died (%s); restarting it and re-sampling its shard",
                                    shard.index, type(exc).__name__)
                        self._restart(shard.index)
                    shard.generation = self.generations[shard.index]
                    shard.future = self._sample(shard.index, shard.requests, shard.seed)
            stale = [v for v in batch.policy_version if v < shard.dispatched_version]
            if stale:
                raise RuntimeError(f"worker {shard.index} returned samples at version {min(stale)} for a shard "
                                   f"dispatched at version {shard.dispatched_version}")
            batches.append(batch)
        batches, dropped = drop_repeated_rows(batches)
        if dropped:
            log.warning("dropped %d rollout row(s) delivered more than once (same uid and sample index, same "
                        "content)", dropped)
            self.duplicate_rows += dropped
        return batches, {"perf/rollout_collect_s": time.perf_counter() - started,
                         "health/worker_restarts": float(self.restarts),
                         "health/duplicate_rows": float(self.duplicate_rows)}

    def worker_name(self, index: int) -> str | None:
        return None if self.name is None else f"{self.name}-rollout-{index}.{self.generations[index]}"

    def _start(self, index: int) -> Any:
        options: dict[str, Any] = {"num_cpus": self.cfg.cpus_per_worker, "num_gpus": self.cfg.gpus_per_worker}
        if self.placement_group is not None:
            options["scheduling_strategy"] = bundle_strategy(self.placement_group, index)
        if self.name is not None:
            options["name"] = self.worker_name(index)
        return ray.remote(RolloutWorker).options(**options).remote(self.source, dtype=self.dtype,
                                                                   image_tokenizer=self.cfg.image_tokenizer)

    def _restart(self, index: int) -> None:
        """Replace worker `index` by a fresh actor holding the current policy version."""
        try:
            ray.kill(self.workers[index], no_restart=True)
        except Exception:  # already gone
            pass
        self.restarts += 1
        self.generations[index] += 1
        worker = self._start(index)
        if self.version > 0:  # version 0 is the source's own weights, which a fresh worker already holds
            if self.learners is None:
                raise RuntimeError("a worker restarted after a weight sync, but no learner to fetch weights from")
            sync_object_store(self.learners, [worker], self.version, self.cfg.weight_sync.bucket_mb)
        self.workers[index] = worker
        self._broadcast = None  # the old group has a dead member; the next sync forms a new one

    # -- weights --------------------------------------------------------------------------------
    def sync(self, learners: Any, version: int) -> dict[str, float]:
        """Push learner rank 0's weights as `version` to every worker, after their samples in flight;
        a worker found dead is replaced by a fresh one holding `version`."""
        waited = time.perf_counter()
        if self._in_flight:  # finished or failed, either way the worker is free after this
            ray.wait(self._in_flight, num_returns=len(self._in_flight), fetch_local=False)
            self._in_flight = []
        started = time.perf_counter()
        self.learners, bucket_mb = learners, self.cfg.weight_sync.bucket_mb
        dead = []
        if self.cfg.weight_sync.backend == "broadcast":
            if self._broadcast is None:
                from actors.weight_sync import BroadcastSync

                backend = "nccl" if self.cfg.gpus_per_worker > 0 else "gloo"
                self._broadcast = BroadcastSync(learners, self.workers, backend)
            versions = self._broadcast.sync(version, bucket_mb)
        else:
            manifest, buckets = learners.publish_weights(version, bucket_mb)
            applied = [worker.set_weights.remote(manifest, buckets) for worker in self.workers]
            versions = []
            for index, ref in enumerate(applied):
                try:
                    versions.append(ray.get(ref))
                except WORKER_FAILURES as exc:
                    log.warning("rollout worker %d died (%s); replacing it at version %d",
                                index, type(exc).__name__, version)
                    dead.append(index)
                except Exception as exc:
                    raise RuntimeError(f"set_weights failed on rollout worker {index} of {len(applied)}: "
                                       f"{exc}") from exc
        if any(v != version for v in versions):
            raise RuntimeError(f"weight sync to version {version} left workers at versions {versions}")
        self.version = version
        for index in dead:
            self._restart(index)
        return {"perf/weight_sync_s": time.perf_counter() - started, "perf/weight_sync_wait_s": started - waited,
                "health/worker_restarts": float(self.restarts)}

    def checksums(self) -> list[str]:
        return ray.get([w.checksum.remote() for w in self.workers])

    def versions(self) -> list[int]:
        return ray.get([w.version.remote() for w in self.workers])

    def shutdown(self) -> None:
        for worker in self.workers:
            try:
                ray.kill(worker, no_restart=True)
            except Exception:
                pass
