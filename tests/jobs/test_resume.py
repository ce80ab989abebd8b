"""Exact resume after SIGKILL: a run killed mid-step and resumed equals an uninterrupted run.

Sync mode: the reference trains N=4 steps in this process (the session Ray). The same job is then run as
`python -m jobs.train` subprocesses, each in its own session, so that `os.killpg(SIGKILL)` takes down
the driver and the local Ray it started (raylet, GCS, learner ranks, rollout workers) at once:

1. a fresh run is killed in the middle of step 2, after the checkpoint of step 1 is complete
   (mid-epoch: 8 prompts, 4 per step, so the cursor is at epoch 0, position 4);
2. `resume=auto` continues from step 1 and is killed in the middle of step 3, after the checkpoint
   of step 2 (right at the epoch boundary: epoch 1, position 0);
3. `resume=auto` continues from step 2 to the end.

Steps 2..4 of the resumed run must equal the reference bit for bit: losses, reward statistics,
response lengths, the rows consumed (prompt uid, sample index, policy version, reward), and the final
weights of both learner ranks. The kill point is made deterministic by the test reward
(tests/jobs/helpers/length_reward.py): the n-th reward call of a process writes a marker file and
blocks, and the test kills the process group once the marker is there.

Async mode (3 steps, one kill): step 2's samples, drawn from the weights before update 1, are in flight when
step 1 is checkpointed; the checkpoint saves them, and a run killed in step 2 and resumed equals the
uninterrupted async run in the same ways. That run trains LoRA adapters, so it also shows a LoRA resume exact.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from jobs.checkpoint import PENDING_FILE, CheckpointManager, read_marker, verify
from jobs.config import load_config
from jobs.train import train

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "tests/jobs/configs/tiny_lengths.yaml"
STEPS = 4
RUN_TIMEOUT_S = 600  # a shared 2-core machine can be very slow; the marker normally comes within a minute


def overrides(tmp_path: Path, name: str, *, steps: int = STEPS, mode: str = "sync",
              extra: tuple[str, ...] = ()) -> list[str]:
    return [f"run.output_dir={tmp_path}", f"run.name={name}", f"run.steps={steps}", "run.prompts_per_step=4",
            f"data.train={tmp_path / 'eight.jsonl'}", "checkpoint.every=1", "checkpoint.keep_last=3",
            f"run.mode={mode}", *extra]


def eight_prompts(tmp_path: Path) -> None:
    """8 prompts (explicit uids): with 4 per step, epoch 0 is steps 1-2 and epoch 1 is steps 3-4."""
    lines = (REPO / "tests/jobs/data/arith_small.jsonl").read_text().splitlines()[:8]
    (tmp_path / "eight.jsonl").write_text("\n".join(lines) + "\n")


def run_driver(tmp_path: Path, name: str, *, hang_at_call: int | None, log_name: str,
               **settings: Any) -> subprocess.CompletedProcess | None:
    """Run the driver CLI in a process group of its own, with `overrides(..., **settings)`. With
    `hang_at_call`, SIGKILL the whole group as soon as that reward call started (returns None); without,
    wait for it to finish."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_JOB_ID")}  # a Ray of its own
    marker = tmp_path / f"{log_name}.hang"
    if hang_at_call is not None:
        env.update(UNIGRPO_TEST_HANG_AT_CALL=str(hang_at_call), UNIGRPO_TEST_HANG_MARKER=str(marker))
    log_path = tmp_path / f"{log_name}.log"
    command = [sys.executable, "-m", "jobs.train", "--config", str(CONFIG)]
    for item in overrides(tmp_path, name, **settings):
        command += ["--set", item]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                if hang_at_call is not None and marker.exists():
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    return None
                if process.poll() is not None:
                    break
                time.sleep(0.05)
            else:
                pytest.fail(f"{log_name}: no progress within {RUN_TIMEOUT_S} s; log tail:\n{log_path.read_text()[-3000:]}")
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    tail = log_path.read_text()[-3000:]
    assert hang_at_call is None, f"{log_name}: exited with {process.returncode} before the kill point; log:\n{tail}"
    assert process.returncode == 0, f"{log_name}: exited with {process.returncode}; log:\n{tail}"
    return process


def read_jsonl(path: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    by_step = {row["step"]: row for row in rows}
    assert len(by_step) == len(rows), f"{path}: a step appears twice: {[row['step'] for row in rows]}"
    return by_step


def compared(metrics: dict) -> dict:
    """What must be identical: losses, reward statistics (not their latencies), response lengths, version."""
    keep = {k: v for k, v in metrics.items() if k.startswith(("loss/", "reward/")) and not k.endswith("latency_s")}
    keep.update({k: metrics[k] for k in ("rollout/response_tokens_mean", "rollout/response_tokens_max",
                                         "rollout/policy_version", "health/rows_zero_advantage")})
    return keep


def checkpoint_cursor(run_dir: Path, step: int) -> dict:
    manager = CheckpointManager(run_dir / "checkpoints", load_config(CONFIG).checkpoint)
    assert manager.latest_complete() == run_dir / "checkpoints" / f"step_{step}", \
        f"expected step_{step} to be the newest complete checkpoint, found {manager.complete()}"
    return verify(run_dir / "checkpoints" / f"step_{step}")["data"]


def test_sigkill_and_resume_twice_equals_uninterrupted(tmp_path, ray_session, monkeypatch):
    eight_prompts(tmp_path)
    monkeypatch.chdir(REPO)  # the config's reward file and data paths are relative to the repository
    reference = train(load_config(CONFIG, overrides(tmp_path, "reference")))
    assert reference["final_step"] == STEPS

    run_dir = tmp_path / "killed"
    run_driver(tmp_path, "killed", hang_at_call=2, log_name="first")  # killed in step 2
    assert {k: checkpoint_cursor(run_dir, 1)[k] for k in ("epoch", "position")} == {"epoch": 0, "position": 4}
    assert PENDING_FILE not in read_marker(run_dir / "checkpoints" / "step_1")["files"]  # sync: prompts drawn again
    run_driver(tmp_path, "killed", hang_at_call=2, log_name="second")  # resumes after step 1, killed in step 3
    assert {k: checkpoint_cursor(run_dir, 2)[k] for k in ("epoch", "position")} == {"epoch": 1, "position": 0}
    run_driver(tmp_path, "killed", hang_at_call=None, log_name="third")  # resumes after step 2, to the end

    expected_metrics = read_jsonl(tmp_path / "reference" / "metrics.jsonl")
    expected_rollouts = read_jsonl(tmp_path / "reference" / "rollouts.jsonl")
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    rollouts = read_jsonl(run_dir / "rollouts.jsonl")
    assert sorted(metrics) == sorted(rollouts) == list(range(1, STEPS + 1))  # every step once, none torn
    for step in range(1, STEPS + 1):
        assert rollouts[step]["rows"] == expected_rollouts[step]["rows"], f"step {step}: consumed rows differ"
        assert compared(metrics[step]) == compared(expected_metrics[step]), f"step {step}: metrics differ"
    # Both epochs consumed every prompt exactly once per epoch, and the test was not vacuous.
    for epoch_steps in ((1, 2), (3, 4)):
        uids = [row["uid"] for s in epoch_steps for row in rollouts[s]["rows"] if row["sample"] == 0]
        assert sorted(uids) == sorted(f"arith-{i:03d}" for i in range(8))
    assert all(metrics[s]["loss/pg_loss"] != 0 for s in range(2, STEPS + 1))

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["start_step"] == 2 and summary["policy_version"] == STEPS
    assert summary["learner_checksums"] == reference["learner_checksums"]  # weights and optimizer restored
    assert summary["worker_checksums"] == reference["worker_checksums"]


def test_async_sigkill_after_a_checkpoint_with_samples_in_flight_resumes_exactly(tmp_path, ray_session, monkeypatch):
    """Step 2's samples come from the weights before update 1 (version 0), which a resumed run no longer has:
    drawn again, they would be sampled at version 1. Saved with step_1, they are trained on as they were.

    The run trains LoRA adapters (docs/lora.md), so the same kill also shows a LoRA resume exact: the checkpoint
    holds the adapters and their Adam state (the base is rebuilt from the network source), the workers get the
    adapters the learner synced, and both come back bit for bit (one run for both: each costs about a minute)."""
    eight_prompts(tmp_path)
    monkeypatch.chdir(REPO)
    steps, lora = 3, ("learner.lora.rank=4", "learner.lora.alpha=8")
    reference = train(load_config(CONFIG, overrides(tmp_path, "reference", steps=steps, mode="async", extra=lora)))

    run_dir = tmp_path / "killed"
    run_driver(tmp_path, "killed", hang_at_call=2, log_name="first", steps=steps, mode="async",
               extra=lora)  # killed in step 2
    first_checkpoint = verify(run_dir / "checkpoints" / "step_1")  # complete before the kill; read before the resume
    run_driver(tmp_path, "killed", hang_at_call=None, log_name="second", steps=steps, mode="async", extra=lora)

    expected_metrics = read_jsonl(tmp_path / "reference" / "metrics.jsonl")
    expected_rollouts = read_jsonl(tmp_path / "reference" / "rollouts.jsonl")
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    rollouts = read_jsonl(run_dir / "rollouts.jsonl")
    assert sorted(metrics) == sorted(rollouts) == list(range(1, steps + 1))
    for step in range(1, steps + 1):
        assert rollouts[step]["rows"] == expected_rollouts[step]["rows"], f"step {step}: consumed rows differ"
        assert compared(metrics[step]) == compared(expected_metrics[step]), f"step {step}: metrics differ"
    # async: each step's rows come from the weights one update before its own (step 1 and 2: version 0)
    assert [sorted({row["version"] for row in rollouts[s]["rows"]}) for s in (1, 2, 3)] == [[0], [0], [1]]
    assert all(metrics[s]["loss/pg_loss"] != 0 for s in range(1, steps + 1))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["start_step"] == 1 and summary["policy_version"] == steps
    assert summary["learner_checksums"] == reference["learner_checksums"]  # base + adapters and Adam state
    assert summary["worker_checksums"] == reference["worker_checksums"]
    assert (run_dir / "export" / "adapter" / "adapter_model.safetensors").is_file()  # the adapter in PEFT's layout

    # what made it exact: step_1 holds step 2's samples and the cursor after their draw (all 8 prompts drawn)
    assert first_checkpoint["pending_step"] == 2 and first_checkpoint["policy_version"] == 1
    assert {k: first_checkpoint["data"][k] for k in ("epoch", "position")} == {"epoch": 1, "position": 0}
    assert PENDING_FILE in read_marker(run_dir / "checkpoints" / "step_1")["files"]
    last = run_dir / "checkpoints" / f"step_{steps}"  # the last step has no next step
    assert "pending_step" not in verify(last) and PENDING_FILE not in read_marker(last)["files"]
