"""RolloutPool.collect is idempotent by (uid, sample_index): a shard delivered twice trains once, counted in
`health/duplicate_rows`; a repeated key with different content is an error (issue 18, finding 10)."""

from __future__ import annotations

import pickle

import pytest
import ray
import torch

from actors.config import RolloutConfig
from actors.group import ActorGroup
from actors.rollout_pool import PendingShard, RolloutPool
from rl.batch import RolloutBatch


def shard(uids: dict[str, int], seed: int, version: int = 0) -> RolloutBatch:
    """`uids` maps prompt uid -> responses: rows of 4 prompt + 3 response tokens, as a worker returns them."""
    g = torch.Generator().manual_seed(seed)
    rows = sum(uids.values())
    return RolloutBatch.from_sampler(
        torch.randint(10, 50, (rows, 7), generator=g), torch.zeros(rows, 3, dtype=torch.long), [4] * rows,
        eos_ids=[2], kind="text", uid=[u for u, n in uids.items() for _ in range(n)],
        sample_index=[i for n in uids.values() for i in range(n)], policy_version=version,
        response=[f"r{seed}.{i}" for i in range(rows)])


def bare_pool() -> RolloutPool:
    """A pool without workers: `collect` only reads the futures of the shards it is given."""
    pool = RolloutPool.__new__(RolloutPool)
    pool.cfg, pool.workers = RolloutConfig(), ActorGroup("rollout worker", 0, start=None)
    pool.max_restarts_per_step, pool.timeouts, pool.duplicate_rows = 2, 0, 0
    return pool


def pending(index: int, batch: RolloutBatch) -> PendingShard:
    return PendingShard(index, [], 0, ray.put(batch), dispatched_version=0, generation=0)


def test_a_shard_delivered_twice_is_collected_once_and_counted(ray_session):
    first, second = shard({"a": 2, "b": 2}, seed=0), shard({"c": 2}, seed=1)
    once, once_stats = bare_pool().collect([pending(0, first), pending(1, second)])
    pool = bare_pool()
    twice, stats = pool.collect([pending(0, first), pending(1, second), pending(2, pickle.loads(pickle.dumps(first)))])
    assert once_stats["health/duplicate_rows"] == 0.0
    assert stats["health/duplicate_rows"] == 4.0  # one per repeated row
    a, b = RolloutBatch.concat(twice), RolloutBatch.concat(once)  # what the driver trains on
    assert (a.uid, a.sample_index, a.response) == (b.uid, b.sample_index, b.response)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.scored_mask, b.scored_mask)
    # the counter is the run's total, like health/worker_restarts: a second step with one repeat adds 2
    _, stats = pool.collect([pending(0, second), pending(1, second)])
    assert stats["health/duplicate_rows"] == 6.0 and pool.duplicate_rows == 6


def test_a_repeated_key_with_other_content_is_an_error_not_a_retry(ray_session):
    other = shard({"a": 2}, seed=5)  # uid a, sample 0 and 1 again, but other tokens
    with pytest.raises(ValueError, match=r"\(uid, sample_index\) \('a', 0\) is delivered twice with different rows "
                                         r"\(batch 0 row 0, batch 1 row 0: input_ids differs\)"):
        bare_pool().collect([pending(0, shard({"a": 2, "b": 2}, seed=0)), pending(1, other)])


def test_finish_collects_ahead_and_a_later_collect_takes_the_same_rows_without_waiting(ray_session):
    """Async mode, a checkpoint due: `finish` collects the next step's shards (the checkpoint saves them), and
    the step's `collect` then gets exactly those rows; a repeated row is dropped and counted once."""
    first, second = shard({"a": 2, "b": 2}, seed=0, version=3), shard({"c": 2}, seed=1, version=3)
    expected, _ = bare_pool().collect([pending(0, first), pending(1, second)])
    pool = bare_pool()
    finished = pool.finish([pending(0, first), pending(1, second), pending(2, pickle.loads(pickle.dumps(second)))])
    assert [(s.index, s.future, s.dispatched_version) for s in finished] == [(0, None, 0), (1, None, 0)]
    assert pool.duplicate_rows == 2
    batches, stats = pool.collect(finished)  # no future to wait for: a wait would fail on None
    assert stats["health/duplicate_rows"] == 2.0  # counted when the rows came in, not again
    assert [(b.uid, b.sample_index, b.response) for b in batches] == [(b.uid, b.sample_index, b.response)
                                                                      for b in expected]
    assert all(torch.equal(b.input_ids, e.input_ids) for b, e in zip(batches, expected))


def test_a_delivered_shard_gets_the_version_check_of_any_shard():
    stale = PendingShard.delivered(1, shard({"a": 2}, seed=0, version=2), dispatched_version=3)
    with pytest.raises(RuntimeError, match="worker 1 returned samples at version 2 for a shard dispatched at version 3"):
        bare_pool().collect([stale])
