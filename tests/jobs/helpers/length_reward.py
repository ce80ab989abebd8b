"""A one-off reward for the pipeline tests: the decoded response's length in characters.

A random tiny policy never answers correctly, so `correctness` and `format` score every sample 0, every
group advantage is 0 and nothing trains. The lengths of sampled responses vary within a group (tokens
decode to strings of different lengths, and an EOS ends some responses early), which gives nonzero
advantages deterministically: the score is a pure function of the response.

Two hooks let a test act at a known point of a run (the reward is called once per step, in the driver):
- UNIGRPO_TEST_HANG_AT_CALL=n (subprocess runs that the test SIGKILLs): the n-th call in this process
  writes the file named by UNIGRPO_TEST_HANG_MARKER and blocks for good: the driver is then in the middle
  of the n-th step it runs, after the previous step's checkpoint is complete.
  With UNIGRPO_TEST_HANG_RELEASE=file it blocks only until that file exists (tests/jobs/test_preemption.py
  signals the driver meanwhile).
- UNIGRPO_TEST_PAUSE_DIR=dir (in-process runs): a call that finds `dir/pause` removes it, writes
  `dir/paused` and waits until `dir/resume` exists: the rollout workers are idle meanwhile (the step's
  samples are collected, the next step's not yet dispatched in sync mode).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_calls = 0  # calls in this process (the file is loaded once per process by the reward registry)


def response_length(samples) -> list[float]:
    global _calls
    _calls += 1
    hang_at = os.environ.get("UNIGRPO_TEST_HANG_AT_CALL")
    if hang_at and _calls == int(hang_at):
        Path(os.environ["UNIGRPO_TEST_HANG_MARKER"]).write_text(f"{os.getpid()}\n")
        release, deadline = os.environ.get("UNIGRPO_TEST_HANG_RELEASE"), time.monotonic() + 3600
        while not (release and Path(release).exists()) and time.monotonic() < deadline:
            time.sleep(0.01)
    pause_dir = os.environ.get("UNIGRPO_TEST_PAUSE_DIR")
    if pause_dir and (Path(pause_dir) / "pause").exists():
        (Path(pause_dir) / "pause").unlink()
        (Path(pause_dir) / "paused").write_text(f"{_calls}\n")
        deadline = time.monotonic() + 600
        while not (Path(pause_dir) / "resume").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    return [float(len(sample.response)) for sample in samples]
