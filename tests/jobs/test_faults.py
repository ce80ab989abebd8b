"""Rollout workers killed during a run: the run completes, every sample exactly once, never stale.

The driver runs `train(cfg)` (sync mode, 3 steps, 2 workers) in a background thread of this process,
sharing the session Ray; the test kills workers by their actor names (`<run>-rollout-<k>.<generation>`):

1. Mid-step, while sampling: when step 1 appears in metrics.jsonl the workers are already sampling
   step 2 (the driver dispatches step 2 right after the step-1 weight sync, before it logs step 1), and
   sampling is slow enough (64 tokens in 64 denoising steps) that worker 0 dies in the middle of it.
   The pool must replace it, load the current weights into the replacement and re-sample the shard:
   step 2 completes, its rows (rollouts.jsonl) hold every (prompt uid, sample index) exactly once,
   health/worker_restarts is 1, and every row was sampled at policy version 1, the version step 2 was
   dispatched at (a fresh worker starts at version 0, the initial weights: a missing reload shows here).
2. While idle: the test reward (tests/jobs/helpers/length_reward.py) pauses in step 3's reward call,
   when the workers hold no work; worker 1 is killed then. The step-3 weight sync must replace it at
   the new version: health/worker_restarts is 2 at step 3.
At the end both workers (replacements) hold the learner's final weights and version.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from jobs.config import load_config
from jobs.train import train

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "tests/jobs/configs/tiny_lengths.yaml"
TIMEOUT_S = 600


def logged_steps(path: Path) -> list[int]:
    steps = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            steps.append(json.loads(line)["step"])
        except json.JSONDecodeError:  # a line being written
            pass
    return steps


def wait_for(condition, what: str, driver: threading.Thread, outcome: dict) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if not driver.is_alive() or time.monotonic() > deadline:
            pytest.fail(f"{what} never happened: {outcome.get('error')!r}")
        time.sleep(0.02)


def test_workers_killed_while_sampling_and_while_idle_are_replaced(tmp_path, ray_session, monkeypatch):
    import ray

    monkeypatch.chdir(REPO)  # the config's reward file and data paths are relative to the repository
    monkeypatch.setenv("UNIGRPO_TEST_PAUSE_DIR", str(tmp_path))
    name = f"faults-{time.time_ns()}"  # unique: the workers' actor names derive from it
    cfg = load_config(CONFIG, [f"run.output_dir={tmp_path}", f"run.name={name}", "run.steps=3",
                               "rollout.sampler.gen_length=64", "rollout.sampler.steps=64",
                               "rollout.sampler.block_length=64"])
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["summary"] = train(cfg)
        except BaseException as exc:  # re-raised by the test thread
            outcome["error"] = exc

    driver = threading.Thread(target=run, daemon=True)
    driver.start()
    metrics_path = tmp_path / name / "metrics.jsonl"
    wait_for(lambda: 1 in logged_steps(metrics_path), "step 1", driver, outcome)
    ray.kill(ray.get_actor(f"{name}-rollout-0.0"))  # while it samples step 2
    wait_for(lambda: 2 in logged_steps(metrics_path), "step 2", driver, outcome)
    (tmp_path / "pause").touch()  # the next reward call is step 3's, after its samples are collected
    wait_for((tmp_path / "paused").exists, "the pause in step 3", driver, outcome)
    ray.kill(ray.get_actor(f"{name}-rollout-1.0"))  # idle: no work until the step-3 weight sync
    (tmp_path / "resume").touch()
    driver.join(TIMEOUT_S)
    assert not driver.is_alive(), "the driver did not finish"
    if "error" in outcome:
        raise outcome["error"]
    summary = outcome["summary"]

    metrics = {m["step"]: m for m in map(json.loads, metrics_path.read_text().splitlines())}
    assert [metrics[s]["health/worker_restarts"] for s in (1, 2, 3)] == [0, 1, 2], \
        "a kill did not hit its worker when planned (or a restart was counted twice)"
    rows = {r["step"]: r["rows"] for r in map(json.loads, (tmp_path / name / "rollouts.jsonl").read_text().splitlines())}
    for step in (1, 2, 3):
        keys = [(row["uid"], row["sample"]) for row in rows[step]]
        uids = {uid for uid, _ in keys}
        assert len(uids) == cfg.run.prompts_per_step
        assert sorted(keys) == sorted((uid, i) for uid in uids for i in range(cfg.algo.group_size)), step
        assert {row["version"] for row in rows[step]} == {step - 1}  # sync mode: dispatched after update s-1

    assert summary["worker_restarts"] == 2
    assert summary["worker_versions"] == [3, 3] and summary["policy_version"] == 3
    assert summary["worker_checksums"] == summary["learner_checksums"]
