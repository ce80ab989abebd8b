"""Deadlines on every wait (issue 18 finding 4, docs/reliability.md §14), with real actors and real signals.

A stopped process (SIGSTOP, as the reliability probe did) is the hang: its calls never end. Each test stops an
actor's process, found through the actor itself (`__ray_call__` runs a function in it: its `os.getpid()`), and
checks what the owner of the wait does at the deadline: the rollout pool replaces the worker with the current
weights and re-samples its shard, the reward router replaces the actor and re-sends the batch (and gives up
with a `timeout` reason after `reward_actors.max_attempts`), the learner group fails the call naming the rank
and the deadline's key. `stopped` SIGCONTs whatever is still alive when the test ends.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from collections.abc import Iterator

import psutil
import pytest
import ray
import torch

from actors.config import (
    CheckpointConfig,
    LearnerConfig,
    RewardActorsConfig,
    RolloutConfig,
    WeightSyncConfig,
)
from actors.group import ActorLost, Outcome
from actors.learner import LearnerGroup
from actors.rewards import CPU_GROUP, RewardRouter
from actors.rollout import PromptRequest
from actors.rollout_pool import RolloutPool
from jobs.config import CONFIG_DIR, load_config
from jobs.configtree import ConfigError
from model.sampling import TextSamplerConfig
from rewards import RewardsConfig, RewardService, RewardTermConfig, Sample
from rewards.service import metric_term
from tests.actors.test_weight_sync import nudge_step
from tests.rewards.batches import batch_of

pytestmark = pytest.mark.usefixtures("ray_session")

DEADLINE_S = 3.0  # every deadline under test; the calls that must not hit it take well under a second
BOUND_S = 90.0  # how long a wait that meets a hang may take in all (the deadline, the kill, a fresh actor)


# -- stopping processes -----------------------------------------------------------------------------
def pid_of(actor) -> int:
    """The process of a Ray actor."""
    return ray.get(actor.__ray_call__.remote(lambda _: os.getpid()), timeout=120)


def release(pids: list[int], gone_within_s: float = 30.0) -> list[int]:
    """Wait up to `gone_within_s` for the stopped `pids` to be gone (whoever noticed the hang must have killed
    them; a SIGCONT before the kill could let a queued call run), then SIGCONT those still alive; returns them."""
    processes = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            processes.append(psutil.Process(pid))
    _, alive = psutil.wait_procs(processes, timeout=gone_within_s)
    for process in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGCONT)
    return [process.pid for process in alive]


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[list[int]]:
    """SIGSTOP `pid` for the block, then `release` it; yields a list that then holds it if it was still alive."""
    survivors: list[int] = []
    os.kill(pid, signal.SIGSTOP)
    try:
        yield survivors
    finally:
        survivors += release([pid])


# -- config --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("section, key", [(RolloutConfig, "sample_timeout_s"), (RolloutConfig, "start_timeout_s"),
                                          (WeightSyncConfig, "timeout_s"),
                                          (LearnerConfig, "start_timeout_s"), (LearnerConfig, "call_timeout_s"),
                                          (CheckpointConfig, "timeout_s"),
                                          (RewardActorsConfig, "score_grace_s")])
@pytest.mark.parametrize("value", [0.0, -1.0, math.nan, math.inf])
def test_a_deadline_is_a_finite_positive_number_of_seconds(section, key, value):
    with pytest.raises(ValueError, match=rf"^{key}: {value}; expected a finite number of seconds > 0$"):
        section(**{key: value})
    assert getattr(section(**{key: 0.5}), key) == 0.5


def test_the_config_names_the_dotted_key_of_a_bad_deadline():
    with pytest.raises(ConfigError, match=r"rollout\.weight_sync\.timeout_s: 0\.0; expected a finite number of "
                                          r"seconds > 0\n  checkpoint\.timeout_s: -2\.0; expected"):
        load_config(None, ["rollout.weight_sync.timeout_s=0", "checkpoint.timeout_s=-2"])
    cfg = load_config(CONFIG_DIR / "demo.yaml", [])  # the demo runs with the defaults: minutes, for real 8B steps
    assert (cfg.rollout.start_timeout_s, cfg.rollout.sample_timeout_s, cfg.rollout.weight_sync.timeout_s,
            cfg.learner.start_timeout_s, cfg.learner.call_timeout_s, cfg.checkpoint.timeout_s,
            cfg.reward_actors.score_grace_s) == (600.0, 1800.0, 600.0, 1800.0, 1800.0, 1800.0, 300.0)


# -- the rollout pool ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pipeline(ray_session, kit):
    """One learner rank and a pool of 2 workers whose deadlines (but that of starting) are DEADLINE_S (0.5 CPU
    each, so that a replacement starts while the stopped worker is still being killed)."""
    learner_cfg = LearnerConfig(num_ranks=1, cpus_per_rank=0.5, zero_stage=0, lr=1e-2, call_timeout_s=DEADLINE_S)
    learners = LearnerGroup(learner_cfg, kit.policy_source(0), checkpoint_timeout_s=DEADLINE_S)
    cfg = RolloutConfig(num_workers=2, cpus_per_worker=0.5, sample_timeout_s=DEADLINE_S,
                        weight_sync=WeightSyncConfig(timeout_s=DEADLINE_S),
                        sampler=TextSamplerConfig(gen_length=8, steps=4, block_length=8))
    pool = RolloutPool(cfg, kit.policy_source(0))
    yield learners, pool
    pool.shutdown()
    learners.shutdown()


def requests() -> list[PromptRequest]:
    """3 prompts x 2 samples: shards of 3 requests for each of 2 workers."""
    return [PromptRequest(tuple(range(5 + p, 11 + p)), f"u{p}", i, "text") for p in range(3) for i in range(2)]


def train_and_sync(learners, pool) -> int:
    """One optimizer step and a sync to the next version; the version."""
    learners.train_step(nudge_step, [{"amount": 1.0}])
    version = pool.version + 1
    pool.sync(learners, version)
    return version


def same_rows(a, b) -> bool:
    return ((a.uid, a.sample_index, a.policy_version) == (b.uid, b.sample_index, b.policy_version)
            and torch.equal(a.input_ids, b.input_ids) and torch.equal(a.reveal_step, b.reveal_step))


def test_a_worker_stopped_while_sampling_is_replaced_and_its_shard_resampled(pipeline):
    learners, pool = pipeline
    version = train_and_sync(learners, pool)  # a fresh worker starts at version 0: the replacement must load this
    undisturbed, _ = pool.collect(pool.dispatch(requests(), step=3, run_seed=7))
    restarts, timeouts, old = pool.restarts, pool.timeouts, pool.workers[1]
    started = time.monotonic()
    with stopped(pid_of(old)) as survivors:
        batches, stats = pool.collect(pool.dispatch(requests(), step=3, run_seed=7))  # shard 1 goes to the stopped one
        elapsed = time.monotonic() - started
    assert not survivors  # the pool killed it
    assert DEADLINE_S <= elapsed < BOUND_S
    assert [b.policy_version for b in batches] == [[version] * 3] * 2
    assert all(same_rows(a, b) for a, b in zip(batches, undisturbed, strict=True))  # same seeds, same rows
    assert pool.workers[1] is not old and pool.workers.generations[1] >= 1
    assert (pool.restarts, pool.timeouts) == (restarts + 1, timeouts + 1)
    assert (stats["health/worker_restarts"], stats["health/worker_timeouts"]) == (restarts + 1, timeouts + 1)
    assert pool.versions() == [version] * 2 and pool.checksums() == learners.checksums() * 2


def test_a_worker_stopped_before_a_weight_sync_is_replaced_at_the_new_version(pipeline):
    learners, pool = pipeline
    restarts, timeouts, old = pool.restarts, pool.timeouts, pool.workers[0]
    learners.train_step(nudge_step, [{"amount": 1.0}])
    version = pool.version + 1
    with stopped(pid_of(old)) as survivors:
        stats = pool.sync(learners, version)  # set_weights never answers: replaced, the fresh worker loads `version`
    assert not survivors and pool.workers[0] is not old
    assert (stats["health/worker_restarts"], stats["health/worker_timeouts"]) == (restarts + 1, timeouts + 1)
    assert pool.versions() == [version] * 2 and pool.checksums() == learners.checksums() * 2
    batches, _ = pool.collect(pool.dispatch(requests(), step=5, run_seed=7))
    assert [b.policy_version for b in batches] == [[version] * 3] * 2


def test_a_worker_stopped_with_a_shard_in_flight_is_replaced_by_the_sync(pipeline):
    """Async mode: the next step's shards are in flight while the learner trains; the sync waits for them until
    they are due and replaces the stopped worker first, and `collect` re-samples its shard on the replacement
    without a second restart."""
    learners, pool = pipeline
    restarts, timeouts, old = pool.restarts, pool.timeouts, pool.workers[1]
    dispatched_at = pool.version
    with stopped(pid_of(old)) as survivors:
        dispatched = time.perf_counter()
        pending = pool.dispatch(requests(), step=6, run_seed=7)
        learners.train_step(nudge_step, [{"amount": 1.0}])
        syncing = time.perf_counter()
        stats = pool.sync(learners, dispatched_at + 1)
        batches, collected = pool.collect(pending)
    assert not survivors and pool.workers[1] is not old
    assert syncing - dispatched + stats["perf/weight_sync_wait_s"] >= DEADLINE_S  # waited until the shard was due
    assert (collected["health/worker_restarts"], collected["health/worker_timeouts"]) == (restarts + 1, timeouts + 1)
    # shard 0 was sampled before the sync, shard 1 again after it, by the replacement at the new version
    assert [b.policy_version for b in batches] == [[dispatched_at] * 3, [dispatched_at + 1] * 3]
    assert [(u, i) for b in batches for u, i in zip(b.uid, b.sample_index)] == [
        (r.uid, r.sample_index) for r in requests()]
    assert pool.versions() == [dispatched_at + 1] * 2


def test_heldout_decoding_on_the_workers_equals_decoding_here_and_survives_a_stopped_worker(pipeline, kit):
    """RolloutPool.decode (eval.where: rollout_workers) gives what jobs.eval's in-process decode gives on the
    learner's weights, call by call; a worker stopped mid-evaluation is replaced at the current version and its
    call decoded again, to the same answer."""
    from jobs.evaluate import local_decoder

    learners, pool = pipeline
    version = train_and_sync(learners, pool)
    network = kit.policy_source(0)()
    network.load_state_dict(learners.state_dict_for_sync())  # what the workers hold: the learner's weights
    config = network.config
    sampler = {"gen_length": 8, "steps": 4, "block_length": 8, "temperature": 0.8}  # sampled: the seeds matter
    calls = [([list(range(5 + c, 9 + c + c % 3))], 100 + c) for c in range(5)]  # 5 calls over 2 workers
    ids = {"mask_id": config.mask_token_id, "pad_id": config.pad_token_id}
    expected = list(local_decoder(network)(calls, sampler, **ids))
    assert len({str(e) for e in expected}) == 5  # different prompts and seeds: different answers
    assert list(pool.decode(calls, sampler, **ids)) == expected
    restarts, timeouts, old = pool.restarts, pool.timeouts, pool.workers[1]
    started = time.monotonic()
    with stopped(pid_of(old)) as survivors:
        assert list(pool.decode(calls, sampler, **ids)) == expected
        elapsed = time.monotonic() - started
    assert not survivors and pool.workers[1] is not old and DEADLINE_S <= elapsed < BOUND_S
    assert (pool.restarts, pool.timeouts) == (restarts + 1, timeouts + 1)
    assert pool.versions() == [version] * 2
    # both workers get a bad call, and either may answer first
    with pytest.raises(RuntimeError, match=r"held-out decoding failed on rollout worker [01]: ValueError: gen_length: 8 "
                                           r"is not a multiple of block_length=3"):
        list(pool.decode(calls, {**sampler, "block_length": 3}, **ids))
    pool.version += 1  # as if a sync had been missed: a worker's answer from other weights is refused
    try:
        with pytest.raises(RuntimeError, match=rf"rollout worker [01] decoded at version {version}; the pool synced "
                                               rf"version {version + 1}"):
            list(pool.decode(calls, sampler, **ids))
    finally:
        pool.version -= 1
    pool.max_restarts_per_step = 0
    try:
        with stopped(pid_of(pool.workers[1])):
            with pytest.raises(RuntimeError, match=r"rollout workers failed 1 times in one evaluation; giving up "
                                                   r"\(last: worker 1: no answer within 3 s"):
                list(pool.decode(calls, sampler, **ids))
            pool._restart(1, Outcome("timeout"))  # killed before its SIGCONT; the pool goes on with a fresh one
    finally:
        pool.max_restarts_per_step = 2


def test_more_overruns_in_a_step_than_the_restart_limit_fail_the_step(pipeline):
    _, pool = pipeline  # the last test of the pool: it leaves worker 0 dead
    pool.max_restarts_per_step = 0
    try:
        with stopped(pid_of(pool.workers[0])):
            with pytest.raises(RuntimeError, match=r"rollout workers failed 1 times in one step; giving up \(last: "
                                                   r"worker 0: no answer within 3 s \(rollout\.sample_timeout_s\)"):
                pool.collect(pool.dispatch(requests(), step=7, run_seed=7))
            pool.workers.kill(0)  # a run stops here; the stopped worker is killed before its SIGCONT
    finally:
        pool.max_restarts_per_step = 2


# -- the reward router ------------------------------------------------------------------------------
PLUGINS = '''
import os
import signal


def length(samples):
    return [float(len(s.response)) for s in samples]


def stops_itself(samples, flag, pids):
    """While `flag` exists: writes its pid to `pids` and stops its own process (a hung reward actor)."""
    if os.path.exists(flag):
        with open(pids, "a") as out:
            out.write(f"{os.getpid()}\\n")
        os.kill(os.getpid(), signal.SIGSTOP)
    return [float(s.response.count("a")) for s in samples]
'''


@pytest.fixture(scope="module")
def plugins(tmp_path_factory):
    path = tmp_path_factory.mktemp("deadline_plugins") / "plugins.py"
    path.write_text(PLUGINS)
    return path


def samples() -> list[Sample]:
    return [Sample("text", "q", "<think>a</think> banana"), Sample("text", "q", "no tags"),
            Sample("text", "q", "<think>x</think>y")]


def comparable(answer):
    batch, metrics = answer
    return (batch.total, batch.rewards, batch.reward_reasons,
            {k: v for k, v in metrics.items() if not k.endswith("/latency_s")})


def test_a_stopped_reward_actor_is_replaced_and_the_batch_rescored(plugins):
    config = RewardsConfig(tasks={"text": [RewardTermConfig("format", 0.5, timeout_s=1.0),
                                           RewardTermConfig(f"{plugins}:length", 1.0, timeout_s=1.0)]})
    batch = batch_of(samples())
    with RewardService(config) as service:
        expected = service.score(batch)
    cfg = RewardActorsConfig(cpus_per_actor=0.5, score_grace_s=2.0)  # the deadline: 1 s + 2 s
    with RewardRouter(config, cfg, tasks=["text"]) as router:
        old = router.actor(CPU_GROUP)
        started = time.monotonic()
        with stopped(pid_of(old)) as survivors:
            scored = router.score(batch)
            elapsed = time.monotonic() - started
        assert not survivors and router.actor(CPU_GROUP) is not old
        assert 3.0 <= elapsed < BOUND_S
        assert comparable(scored) == comparable(expected)
        assert scored[0].total == [0.5 * 1 + 23, 0.5 * 0 + 7, 0.5 * 1 + 17]  # by hand: format, len(response)
        assert router.health_metrics() == {"health/reward_actor_restarts": 1.0, "health/reward_actor_timeouts": 1.0,
                                           "health/reward_actor_failures": 0.0}


def test_reward_actors_that_keep_hanging_give_none_with_a_timeout_reason(plugins, tmp_path):
    flag, pids = tmp_path / "stop", tmp_path / "pids"
    stopping = f"{plugins}:stops_itself"
    config = RewardsConfig(tasks={"text": [
        RewardTermConfig("format", 0.5),
        RewardTermConfig(stopping, 1.0, timeout_s=1.0, isolation="thread",
                         options={"flag": str(flag), "pids": str(pids)})]})
    cfg = RewardActorsConfig(heavy_terms=(stopping,), cpus_per_actor=0.5, max_attempts=2, score_grace_s=2.0)
    try:
        with RewardRouter(config, cfg, tasks=["text"]) as router:
            flag.touch()  # every actor that scores this batch stops itself
            scored, metrics = router.score(batch_of(samples()))
            flag.unlink()
            stopped_pids = [int(line) for line in pids.read_text().split()]
            assert len(stopped_pids) == 2  # the first actor and its replacement
            assert scored.rewards[stopping] == [None] * 3 and scored.total == [None] * 3  # never 0
            assert scored.reward_reasons[stopping] == [
                f"timeout: reward actor {stopping!r} failed 2 time(s) (reward_actors.max_attempts=2): no answer "
                "within 3 s (the longest timeout_s of its terms + reward_actors.score_grace_s)"] * 3
            assert scored.rewards["format"] == [1.0, 0.0, 1.0]  # the CPU actor is untouched
            assert metrics[f"reward/text/{metric_term(stopping)}/timeouts"] == 3.0
            assert router.health_metrics() == {"health/reward_actor_restarts": 1.0,
                                               "health/reward_actor_timeouts": 2.0,
                                               "health/reward_actor_failures": 1.0}
            again, _ = router.score(batch_of(samples()))  # the given-up actor is replaced before the next batch
            assert again.rewards[stopping] == [4.0, 1.0, 0.0] and router.restarts == 2  # by hand: the a's
    finally:
        survivors = release([int(line) for line in pids.read_text().split()] if pids.exists() else [])
    assert not survivors  # the router killed both


# -- the learner group -------------------------------------------------------------------------------
def test_a_stopped_learner_rank_fails_the_call_naming_the_rank_and_the_deadline(pipeline, tmp_path):
    learners, _ = pipeline  # the module's last test: it leaves the learner group dead
    with stopped(pid_of(learners.ranks[0])) as survivors:
        started = time.monotonic()
        with pytest.raises(ActorLost, match=r"^train_step failed on learner rank 0 of 1: no answer within 3 s "
                                            r"\(learner\.call_timeout_s\) \(hung or stopped\?\)$") as info:
            learners.train_step(nudge_step, [{"amount": 1.0}])
        assert DEADLINE_S <= time.monotonic() - started < BOUND_S
        assert info.value.outcome.status == "timeout" and info.value.exit_code == 4
        with pytest.raises(ActorLost, match=r"^save_checkpoint failed on learner rank 0 of 1: no answer within 3 s "
                                            r"\(checkpoint\.timeout_s\)"):
            learners.save_checkpoint(tmp_path)
        learners.shutdown()  # killed before the SIGCONT
    assert not survivors
