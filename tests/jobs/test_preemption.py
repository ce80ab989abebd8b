"""SIGTERM (preemption) saves the step in progress, exits 143, and the rerun resumes from it exactly.

The driver (`python -m jobs.train`, `checkpoint.every=0`: no periodic checkpoint) runs 4 steps; the test reward
(tests/jobs/helpers/length_reward.py) blocks in its 3rd call, i.e. in the middle of step 3 with steps 1-2
logged. The test then sends SIGTERM to the driver alone (its Ray processes must live on to finish the step),
a SIGINT that must be ignored, and releases the reward. The driver must finish step 3, save `step_3`, print
which step it saved and exit with 128 + 15; the rerun (`resume: auto`) must then equal an uninterrupted run bit
for bit. docs/reliability.md §11. Takes ~2-4 min on a shared 2-core machine (an in-process reference run and
two driver processes, each starting its own Ray).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from jobs.config import load_config
from jobs.stop_signal import Stopped, StopSignal
from jobs.train import train
from tests.jobs.test_resume import (
    CONFIG,
    REPO,
    RUN_TIMEOUT_S,
    STEPS,
    checkpoint_cursor,
    compared,
    eight_prompts,
    read_jsonl,
)
from tests.jobs.test_resume import overrides as resume_overrides


def overrides(tmp_path: Path, name: str) -> list[str]:
    return [*resume_overrides(tmp_path, name), "checkpoint.every=0"]


def wait_for(condition, what: str, log_path: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what}: not seen (exit {process.poll()}); log tail:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.05)


def start_driver(tmp_path: Path, name: str, log_path: Path, env: dict) -> subprocess.Popen:
    command = [sys.executable, "-m", "jobs.train", "--config", str(CONFIG)]
    for item in overrides(tmp_path, name):
        command += ["--set", item]
    with log_path.open("w") as log:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def test_sigterm_saves_the_step_in_progress_and_the_rerun_equals_uninterrupted(tmp_path, ray_session, monkeypatch):
    eight_prompts(tmp_path)
    monkeypatch.chdir(REPO)
    reference = train(load_config(CONFIG, overrides(tmp_path, "reference")))

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_JOB_ID")}  # a Ray of its own
    marker, release = tmp_path / "hang", tmp_path / "release"
    env.update(UNIGRPO_TEST_HANG_AT_CALL="3", UNIGRPO_TEST_HANG_MARKER=str(marker),
               UNIGRPO_TEST_HANG_RELEASE=str(release))
    run_dir, log_path = tmp_path / "preempted", tmp_path / "first.log"
    process = start_driver(tmp_path, "preempted", log_path, env)
    try:
        wait_for(marker.exists, "the reward call of step 3", log_path, process)
        assert sorted(read_jsonl(run_dir / "metrics.jsonl")) == [1, 2]
        process.send_signal(signal.SIGTERM)  # the driver only: Ray's processes finish the step
        wait_for(lambda: "SIGTERM received: finishing" in log_path.read_text(), "the SIGTERM message", log_path, process)
        process.send_signal(signal.SIGINT)  # while stopping: ignored
        wait_for(lambda: "SIGINT ignored" in log_path.read_text(), "the ignored SIGINT", log_path, process)
        release.write_text("")
        process.wait(timeout=RUN_TIMEOUT_S)
    finally:
        release.write_text("")
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    log = log_path.read_text()
    assert process.returncode == 128 + signal.SIGTERM, f"exit {process.returncode}; log:\n{log[-3000:]}"
    assert f"stopped by SIGTERM: saved step 3 to {run_dir / 'checkpoints' / 'step_3'}" in log
    checkpoint_cursor(run_dir, 3)  # the newest complete checkpoint, though checkpoint.every is 0
    assert sorted(read_jsonl(run_dir / "metrics.jsonl")) == [1, 2, 3]
    assert not (run_dir / "summary.json").exists()

    env = {k: v for k, v in env.items() if not k.startswith("UNIGRPO_TEST_")}
    process = start_driver(tmp_path, "preempted", tmp_path / "second.log", env)
    try:
        assert process.wait(timeout=RUN_TIMEOUT_S) == 0, (tmp_path / "second.log").read_text()[-3000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    expected, metrics = read_jsonl(tmp_path / "reference" / "metrics.jsonl"), read_jsonl(run_dir / "metrics.jsonl")
    rollouts = read_jsonl(run_dir / "rollouts.jsonl")
    expected_rollouts = read_jsonl(tmp_path / "reference" / "rollouts.jsonl")
    assert sorted(metrics) == sorted(rollouts) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert rollouts[step]["rows"] == expected_rollouts[step]["rows"], f"step {step}: consumed rows differ"
        assert compared(metrics[step]) == compared(expected[step]), f"step {step}: metrics differ"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["start_step"] == 3 and summary["policy_version"] == STEPS
    assert summary["learner_checksums"] == reference["learner_checksums"]
    assert summary["worker_checksums"] == reference["worker_checksums"]


# -- StopSignal itself ------------------------------------------------------------------------------


def test_the_first_signal_is_recorded_later_ones_ignored_and_the_old_handlers_restored(capfd):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with StopSignal() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGINT)  # not a KeyboardInterrupt
        assert stop.signum == signal.SIGTERM
        stop.install()  # again (after a library took the signals): the first handlers are still the ones restored
    assert {s: signal.getsignal(s) for s in before} == before
    err = capfd.readouterr().err
    assert "SIGTERM received: finishing the step in progress" in err and "SIGINT ignored" in err


def test_outside_the_main_thread_nothing_is_installed():
    before = signal.getsignal(signal.SIGTERM)
    seen = []
    thread = threading.Thread(target=lambda: seen.append(StopSignal().install()._previous))
    thread.start()
    thread.join()
    assert seen == [{}] and signal.getsignal(signal.SIGTERM) == before


def test_stopped_names_the_step_the_checkpoint_and_how_to_resume():
    exc = Stopped(signal.SIGINT, 3, Path("runs/x/checkpoints/step_3"), "never")
    assert exc.exit_code == 130
    assert str(exc) == ("stopped by SIGINT: saved step 3 to runs/x/checkpoints/step_3; "
                        "rerun with --set checkpoint.resume=auto to resume from it")
