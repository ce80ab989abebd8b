"""SIGTERM / SIGINT as a request to stop after the step in progress (preemption on clusters is SIGTERM).

`StopSignal` only records the signal; the training loop (jobs/train.py) checks `requested` after each step,
saves a checkpoint of that step (even with `checkpoint.every: 0`) and raises `Stopped`, which `main` turns
into one line and exit status 128 + the signal number (143 for SIGTERM, 130 for SIGINT). The step in progress
is finished rather than abandoned: its checkpoint is then exactly what a periodic one would be, so resume stays
bit-exact, in sync and async mode (docs/reliability.md §11, §15).

A second signal while stopping (finishing the step, saving, stopping the actors) is ignored with a message:
aborting half way would lose the step the first signal asked to keep. To abort at once, send SIGKILL
(`kill -9`); the run then resumes from its last complete checkpoint, as after any crash.

Handlers are installed from the main thread only (Python allows no other). jobs.train enters the `with` block
once setup is done, after `ray.init` (which installs its own SIGTERM handler), so a signal during setup aborts
at once; `install()` may be called again to take the signals back from a library that replaced them, and
leaving the `with` block restores the handlers found by the first `install()`.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

log = logging.getLogger("unigrpo.train")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
    """The run stopped on a signal after `step`, whose checkpoint is `checkpoint`."""

    def __init__(self, signum: int, step: int, checkpoint: Path, resume_mode: str):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        hint = ("rerun the same command to resume from it" if resume_mode == "auto"
                else "rerun with --set checkpoint.resume=auto to resume from it")
        super().__init__(f"stopped by {signal.Signals(signum).name}: saved step {step} to {checkpoint}; {hint}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class StopSignal:
    """Records the first SIGTERM/SIGINT (`requested`, `signum`); ignores later ones with a message."""

    def __init__(self, signals: tuple[int, ...] = SIGNALS):
        self.signals = signals
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}  # the handlers found by the first install(), restored on exit

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> StopSignal:
        if threading.current_thread() is not threading.main_thread():
            log.warning("stop signals not handled: the training loop does not run in the main thread")
            return self
        for signum in self.signals:
            self._previous.setdefault(signum, signal.getsignal(signum))
            signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()

    def __enter__(self) -> StopSignal:
        return self.install()

    def __exit__(self, *exc_info) -> None:
        self.restore()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.signum is None:
            self.signum = signum
            message = (f"{name} received: finishing the step in progress, then saving a checkpoint and exiting "
                       "(further signals are ignored; SIGKILL aborts without saving)")
        else:
            message = f"{name} ignored: already stopping on {signal.Signals(self.signum).name} (SIGKILL aborts)"
        _write_stderr(message)


def _write_stderr(message: str) -> None:
    """os.write, not print or logging: a handler may interrupt a write to the same stream or a held log lock."""
    try:
        os.write(2, f"\n{message}\n".encode())
    except OSError:
        pass
