"""A hung actor in a training run (issue 18 finding 4, docs/reliability.md §14): SIGSTOP, as the probe did.

Both runs are the tiny pipeline job (tests/jobs/configs/tiny_lengths.yaml) driven in a thread of this process on
the session Ray, as tests/jobs/test_faults.py does; the test reward (tests/jobs/helpers/length_reward.py) pauses
in step 2's reward call, when the rollout workers and the learner ranks hold no work, and the test stops one
actor's process there:

1. A rollout worker (found by its actor name `<run>-rollout-1.0`): the step-2 weight sync meets the deadline
   `rollout.weight_sync.timeout_s`, the worker is killed and replaced at the new version, and the run finishes
   every step (the probe's driver stalled for ever), every (uid, sample) once, the workers ending at the learner's
   weights; `health/worker_timeouts` and `health/worker_restarts` say so.
2. A learner rank (one of the run's `ray::LearnerRank` processes): step 2's update meets
   `learner.call_timeout_s`, and `jobs.train.main` returns 4 with one message naming the call, the ranks, the
   key and the last complete checkpoint (step 1's), to resume from.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import psutil

from jobs.checkpoint import CheckpointManager
from jobs.config import load_config
from jobs.train import main, train
from tests.actors.test_deadlines import pid_of, release, stopped
from tests.jobs.test_faults import CONFIG, REPO, logged_steps, wait_for

TIMEOUT_S = 600  # the whole run on a shared 2-core machine; normally about a minute
DEADLINE_S = 8  # the deadline under test; the tiny run's calls take well under a second


def in_thread(target) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = target()
        except BaseException as exc:  # re-raised by the test thread
            outcome["error"] = exc

    driver = threading.Thread(target=run, daemon=True)
    driver.start()
    return driver, outcome


def pause_in_step_two(tmp_path: Path, run_dir: Path, driver: threading.Thread, outcome: dict) -> None:
    """Returns once the driver is paused in step 2's reward call (steps 1 logged and checkpointed)."""
    wait_for(lambda: 1 in logged_steps(run_dir / "metrics.jsonl"), "step 1", driver, outcome)
    (tmp_path / "pause").touch()  # taken by the next reward call: step 2's, after step 1's checkpoint
    wait_for((tmp_path / "paused").exists, "the pause in step 2", driver, outcome)


def test_a_stopped_rollout_worker_is_replaced_and_the_run_finishes(tmp_path, ray_session, monkeypatch):
    import ray

    monkeypatch.chdir(REPO)
    monkeypatch.setenv("UNIGRPO_TEST_PAUSE_DIR", str(tmp_path))
    name = f"hung-worker-{time.time_ns()}"
    cfg = load_config(CONFIG, [f"run.output_dir={tmp_path}", f"run.name={name}", "run.steps=3",
                               "learner.num_ranks=1", f"rollout.weight_sync.timeout_s={DEADLINE_S}",
                               f"rollout.sample_timeout_s={DEADLINE_S}"])
    driver, outcome = in_thread(lambda: train(cfg))
    pause_in_step_two(tmp_path, cfg.run.run_dir, driver, outcome)
    started = time.monotonic()
    with stopped(pid_of(ray.get_actor(f"{name}-rollout-1.0"))) as survivors:
        (tmp_path / "resume").touch()
        driver.join(TIMEOUT_S)
    assert not driver.is_alive(), "the driver did not finish"
    assert time.monotonic() - started < DEADLINE_S + 300
    if "error" in outcome:
        raise outcome["error"]
    summary = outcome["result"]
    assert not survivors  # killed by the pool

    metrics = {m["step"]: m for m in map(json.loads, (cfg.run.run_dir / "metrics.jsonl").read_text().splitlines())}
    assert [(metrics[s]["health/worker_restarts"], metrics[s]["health/worker_timeouts"]) for s in (1, 2, 3)] == [
        (0, 0), (1, 1), (1, 1)]
    rows = {r["step"]: r["rows"] for r in map(json.loads, (cfg.run.run_dir / "rollouts.jsonl").read_text().splitlines())}
    for step in (1, 2, 3):
        keys = sorted((row["uid"], row["sample"]) for row in rows[step])
        uids = {uid for uid, _ in keys}
        assert len(uids) == cfg.run.prompts_per_step
        assert keys == sorted((uid, i) for uid in uids for i in range(cfg.algo.group_size)), step
        assert {row["version"] for row in rows[step]} == {step - 1}
    assert summary["worker_restarts"] == 1
    assert summary["worker_versions"] == [3, 3] and summary["policy_version"] == 3
    assert summary["worker_checksums"] == summary["learner_checksums"] * 2


def learner_ranks() -> set[int]:
    """The processes of learner ranks under this one (the session Ray's workers)."""
    ranks = set()
    for process in psutil.Process().children(recursive=True):
        try:
            if process.name().startswith("ray::LearnerRan"):  # the name may be cut to 15 characters
                ranks.add(process.pid)
        except psutil.NoSuchProcess:
            pass
    return ranks


def test_a_stopped_learner_rank_aborts_the_run_naming_the_last_checkpoint(tmp_path, ray_session, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("UNIGRPO_TEST_PAUSE_DIR", str(tmp_path))
    name, before = f"hung-rank-{time.time_ns()}", learner_ranks()  # Ray reuses idle processes: not their age
    run_dir = tmp_path / name
    overrides = [f"run.output_dir={tmp_path}", f"run.name={name}", "run.steps=3", f"learner.call_timeout_s={DEADLINE_S}"]
    argv = ["--config", str(CONFIG)] + [arg for item in overrides for arg in ("--set", item)]
    driver, outcome = in_thread(lambda: main(argv))
    pause_in_step_two(tmp_path, run_dir, driver, outcome)
    ranks = sorted(learner_ranks() - before)
    assert len(ranks) == 2, ranks
    stopped_pid = ranks[-1]
    try:
        with stopped(stopped_pid) as survivors:
            started = time.monotonic()
            (tmp_path / "resume").touch()
            driver.join(TIMEOUT_S)
            assert not driver.is_alive(), "the driver did not stop"
            elapsed = time.monotonic() - started
    finally:
        release(ranks)
    assert not survivors  # the driver's clean-up killed the ranks
    if "error" in outcome:
        raise outcome["error"]
    assert outcome["result"] == 4
    assert DEADLINE_S <= elapsed < DEADLINE_S + 120
    err = capsys.readouterr().err
    checkpoint = run_dir / "checkpoints" / "step_1"
    assert CheckpointManager(run_dir / "checkpoints", load_config(CONFIG, []).checkpoint).latest_complete() == checkpoint
    # rank 0 waits in the gradient reduce for the stopped rank: neither answers, both are named
    assert (f"aborted: train_step failed on learner rank 0, 1 of 2: no answer within {DEADLINE_S} s "
            "(learner.call_timeout_s) (hung or stopped?)\n"
            "nothing was saved (the step cannot be finished, and a hung learner rank cannot be checkpointed: its share "
            f"of the state lives only in its process); the last complete checkpoint is {checkpoint}: rerun with "
            "checkpoint.resume=auto (the default) to resume from it") in err
    assert sorted(logged_steps(run_dir / "metrics.jsonl")) == [1]


def test_learner_ranks_that_do_not_start_in_time_stop_the_run_before_any_step(tmp_path, ray_session, monkeypatch,
                                                                               capsys):
    monkeypatch.chdir(REPO)
    overrides = [f"run.output_dir={tmp_path}", "run.name=slow-start", "learner.num_ranks=1",
                 "learner.start_timeout_s=0.001"]  # no rank builds its engine that fast
    assert main(["--config", str(CONFIG)] + [arg for item in overrides for arg in ("--set", item)]) == 4
    err = capsys.readouterr().err
    assert ("aborted: endpoint failed on learner rank 0 of 1: no answer within 0.001 s (learner.start_timeout_s) "
            "(hung or stopped?)\n") in err
    assert err.rstrip().endswith("no checkpoint was completed: a rerun starts from step 0")
    assert not (tmp_path / "slow-start" / "metrics.jsonl").exists()
