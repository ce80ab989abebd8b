"""DeadlinePool: per-item hard deadlines, containment of every failure kind, worker reuse and replacement."""

from __future__ import annotations

import time

import pytest

from rewards.deadline import DeadlinePool, RunOutcome, short_exception
from rewards.registry import FileReward


@pytest.fixture(scope="module")
def item_fn(misbehaving):
    # A FileReward pickles as (path, attr): the worker loads the helper file itself.
    path, attr = misbehaving("item_behaviour").rsplit(":", 1)
    return FileReward(path, attr)


@pytest.fixture(scope="module")
def pool():
    with DeadlinePool(2, grace_s=0.5) as shared:
        yield shared


def test_values_come_back_in_order(pool, item_fn):
    items = [("value", i) for i in range(23)]
    outcomes = pool.map(item_fn, items, item_timeout_s=5.0, chunk_size=4)
    assert outcomes == [RunOutcome("ok", i) for i in range(23)]
    assert pool.map(item_fn, [], item_timeout_s=1.0) == []


def test_infinite_loop_is_cut_off_at_its_deadline_and_the_rest_still_runs(pool, item_fn):
    started = time.monotonic()
    outcomes = pool.map(item_fn, [("value", 1), ("loop", 0), ("value", 2)], item_timeout_s=0.5, chunk_size=3)
    elapsed = time.monotonic() - started
    assert outcomes[0] == RunOutcome("ok", 1)
    assert outcomes[1].status == "timeout" and outcomes[1].reason.startswith("timeout: exceeded 0.5 s")
    assert outcomes[2] == RunOutcome("ok", 2)
    assert elapsed < 0.5 + 1.0


def test_code_that_blocks_the_timer_is_killed_and_the_worker_replaced(pool, item_fn):
    restarts = pool.restarts
    started = time.monotonic()
    outcomes = pool.map(item_fn, [("blocked_loop", 0), ("value", 3)], item_timeout_s=0.3, chunk_size=2)
    elapsed = time.monotonic() - started
    assert outcomes[0].status == "timeout" and "worker killed" in outcomes[0].reason
    assert outcomes[1] == RunOutcome("ok", 3)  # requeued on a fresh worker
    assert pool.restarts == restarts + 1
    assert elapsed < 0.3 + 0.5 + 1.0


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        (("base", "custom"), "error: CustomBaseError: custom"),
        (("system_exit", 4), "error: SystemExit: 4"),
        (("unknown", 0), "error: ValueError: unknown kind 'unknown'"),
    ],
)
def test_every_exception_kind_is_contained(pool, item_fn, item, reason):
    outcomes = pool.map(item_fn, [item, ("value", 5)], item_timeout_s=2.0, chunk_size=2)
    assert outcomes == [RunOutcome("error", reason=reason), RunOutcome("ok", 5)]


def test_a_dying_worker_blames_only_its_current_item(pool, item_fn):
    outcomes = pool.map(item_fn, [("value", 1), ("exit", 9), ("value", 2), ("value", 3)], item_timeout_s=2.0,
                        chunk_size=4)
    assert outcomes[1] == RunOutcome("crash", reason="crash: worker exited with code 9")
    assert [outcomes[i] for i in (0, 2, 3)] == [RunOutcome("ok", 1), RunOutcome("ok", 2), RunOutcome("ok", 3)]


def test_unpicklable_result_is_an_error_not_a_broken_pipe(pool, item_fn):
    outcomes = pool.map(item_fn, [("unpicklable", 0), ("value", 8)], item_timeout_s=2.0, chunk_size=2)
    assert outcomes[0].status == "error" and outcomes[0].reason.startswith("error: result not picklable")
    assert outcomes[1] == RunOutcome("ok", 8)


def test_total_budget_bounds_the_whole_call(pool, item_fn):
    started = time.monotonic()
    outcomes = pool.map(item_fn, [("sleep", 0.2)] * 20, item_timeout_s=5.0, total_timeout_s=0.7, chunk_size=5)
    elapsed = time.monotonic() - started
    done = [o for o in outcomes if o.status == "ok"]
    given_up = [o for o in outcomes if o.status == "timeout"]
    assert 1 <= len(done) < 20 and len(done) + len(given_up) == 20
    assert given_up[0].reason == "timeout: batch budget of 0.7 s exhausted"
    assert elapsed < 0.7 + 1.0
    assert pool.map(item_fn, [("value", 1)], item_timeout_s=1.0) == [RunOutcome("ok", 1)]  # pool still usable


def test_workers_are_reused_across_calls(item_fn):
    with DeadlinePool(1) as single:
        first = single.map(item_fn, [("value", 1)], item_timeout_s=2.0)
        pid_first = single._workers[0].process.pid
        second = single.map(item_fn, [("value", 2)], item_timeout_s=2.0)
        assert single._workers[0].process.pid == pid_first and single.restarts == 0
        assert (first, second) == ([RunOutcome("ok", 1)], [RunOutcome("ok", 2)])
    assert single._workers == []  # closed


def test_a_reward_that_cannot_load_fails_every_item_with_the_reason(misbehaving):
    path, attr = misbehaving("FailsToPrepare").rsplit(":", 1)
    with DeadlinePool(1) as single:
        outcomes = single.map(FileReward(path, attr), [1, 2, 3], item_timeout_s=1.0)
    assert all(o.status == "error" for o in outcomes)
    assert "cannot load the reward in the worker" in outcomes[0].reason and "model file missing" in outcomes[0].reason


def test_unpicklable_function_is_rejected_with_advice(pool):
    with pytest.raises(TypeError, match="rewards must be picklable"):
        pool.map(lambda item: item, [1], item_timeout_s=1.0)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="num_workers: got 0"):
        DeadlinePool(0)
    with pytest.raises(ValueError, match="grace_s=0"):
        DeadlinePool(1, grace_s=0)
    with pytest.raises(TypeError, match="cannot be pickled"):
        import pickle

        pickle.dumps(DeadlinePool(1))


def test_short_exception_never_raises():
    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no")

    assert short_exception(Unprintable()) == "Unprintable: <unprintable message>"
    assert short_exception(ValueError("x" * 1000)).endswith("...")
    assert short_exception(KeyboardInterrupt()) == "KeyboardInterrupt"


def test_workers_exit_when_the_pool_is_closed(item_fn):
    single = DeadlinePool(1)
    single.map(item_fn, [("value", 1)], item_timeout_s=2.0)
    process = single._workers[0].process
    single.close()
    assert not process.is_alive()


def test_warm_up_loads_in_every_worker_or_raises_the_reason(item_fn, misbehaving):
    with DeadlinePool(2) as both:
        both.warm_up(item_fn)
        assert len(both._workers) == 2 and all(len(w.fn_keys) == 1 for w in both._workers)
        both.warm_up(item_fn)  # already loaded: nothing to do
        assert both.map(item_fn, [("value", 1), ("value", 2)], item_timeout_s=2.0, chunk_size=1) == [
            RunOutcome("ok", 1), RunOutcome("ok", 2)]
        path, attr = misbehaving("FailsToPrepare").rsplit(":", 1)
        with pytest.raises(ValueError, match="cannot load the reward in the worker: RuntimeError: model file missing"):
            both.warm_up(FileReward(path, attr))
        # a failed load leaves the workers usable, and a later map re-sends the function
        outcomes = both.map(FileReward(path, attr), [1], item_timeout_s=1.0)
        assert "model file missing" in outcomes[0].reason
        assert both.map(item_fn, [("value", 3)], item_timeout_s=2.0) == [RunOutcome("ok", 3)]
