"""`reward_actors.judge_server`: a Ray actor that runs an OpenAI-compatible judge server (by default `vllm serve`)
for the `remote` reward's judge terms whose url is `judge_server` (docs/custom_rewards.md §6).

vLLM pins its own torch, so the server runs in a Python environment of its own (`python:`), as a process the actor
(`JudgeServerProcess`) launches with `command:`. The driver's handle (`JudgeServer`) places the actor on the
driver's node, where the judge terms are scored (the driver's reward threads), with the CPUs and GPUs of the
section (`judge_server_roles` counts them in the resource check), and picks the port. What it guarantees:
- the server listens on 127.0.0.1 only; the terms get `http://127.0.0.1:<port>/v1/chat/completions`
  (`rewards.remote.serve_judge`). Nothing else on the network can reach it, so it needs no key;
- it is ready when `GET /health` answers 200 within `start_timeout_s`; a command that exits first, or a server
  that is not ready in time, is a `JudgeServerError` quoting the end of its log (`<run dir>/judge_server.log`,
  stdout and stderr of every launch);
- a server that dies is started again, at the same port (the terms' URL stays valid), at most `max_restarts`
  times per run (`health/judge_server_restarts`); past that the next step stops the run with the log's tail;
- its whole process group (vLLM starts engine processes) is stopped, SIGTERM then SIGKILL, at the end of the run,
  on any failure of the driver and when a dead server is replaced; and if the actor itself dies (a killed driver
  takes its actors along), a reaper process started next to the server kills the group: no orphan keeps the GPU.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.group import ActorGroup, wait_one
from rewards.config import RewardsConfig
from rewards.remote import serve_judge

if TYPE_CHECKING:  # the actor's process imports this module: it needs neither torch nor the config classes
    from actors.cluster import RoleResources
    from actors.config import JudgeServerConfig, RewardActorsConfig

HOST = "127.0.0.1"
HEALTH_PATH = "/health"
SECTION = "reward_actors.judge_server"
LOG_FILE = "judge_server.log"
POLL_S = 0.25
"""How often the actor looks at the server: health while it starts, its exit status afterwards."""
STOP_GRACE_S = 10.0
"""Seconds between SIGTERM and SIGKILL of the server's process group."""
PLACEMENT_S = 60.0
"""The driver waits this long beyond `start_timeout_s` for the actor to be placed and to launch the server."""
LOG_TAIL_CHARS = 2000

_REAPER = (
    "import os, signal, sys\n"
    "if os.fork():  # no child of the actor, which may be killed along with its children\n"
    "    os._exit(0)\n"
    "if sys.stdin.read() != 'stopped':  # end of file without the word: the actor died\n"
    "    try:\n"
    "        os.killpg(int(sys.argv[1]), signal.SIGKILL)\n"
    "    except ProcessLookupError:\n"
    "        pass\n"
)
"""Started next to each server with a pipe from the actor: kills the server's group when the pipe closes without
`stopped`, i.e. when the actor's process is gone however it ended. It forks away from its parent at once: Ray
kills the children of an actor it kills, and the reaper must outlive the actor to do its job."""


class JudgeServerError(RuntimeError):
    """The judge server did not get ready, or died more often than `max_restarts` allows; the message says which
    and quotes the end of its log."""


def judge_server_roles(cfg: RewardActorsConfig) -> list[RoleResources]:
    """The judge server's actor for `actors.cluster.check_resources` ([] when none is configured)."""
    from actors.cluster import RoleResources  # imports torch (through actors.config): the driver's side only

    server = cfg.judge_server
    if server is None:
        return []
    return [RoleResources("judge server", 1, server.cpus, server.gpus, SECTION, f"{SECTION}.cpus", f"{SECTION}.gpus")]


def server_command(cfg: JudgeServerConfig, port: int) -> list[str]:
    """`cfg.command` with {model}, {host}, {port} and {python} filled in."""
    fields = {"model": cfg.model, "host": HOST, "port": str(port), "python": cfg.python}
    return [arg.format(**fields) for arg in cfg.command]


def free_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def healthy(port: int, timeout_s: float = 2.0) -> bool:
    """True when `GET http://127.0.0.1:<port>/health` answers 200 (no proxy: loopback)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{HOST}:{port}{HEALTH_PATH}", timeout=timeout_s) as response:
            return response.status == 200
    except (OSError, ValueError):
        return False


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------------------------------------- actor side
class JudgeServerProcess:
    """The server process, its launches and restarts; run it as `ray.remote(JudgeServerProcess)` (in-process in
    tests of its error paths). A thread started by `start` watches the process and restarts it when it dies.
    `command` is the section's, filled in (`server_command`) for `port`; the other arguments are its keys."""

    def __init__(self, command: Sequence[str], port: int, log_path: str, *, start_timeout_s: float,
                 max_restarts: int):
        self.command, self.port, self.log_path = list(command), port, Path(log_path)
        self.start_timeout_s, self.max_restarts = start_timeout_s, max_restarts
        self.restarts = 0
        """Launches after the first one (each after a death)."""
        self.failure: str | None = None
        """Why the server is down for good (its restarts spent), else None."""
        self._process: subprocess.Popen | None = None
        self._reaper: subprocess.Popen | None = None
        self._log_offset = 0  # where the latest launch's output starts in the log
        self._lock = threading.Lock()  # one launch or stop at a time; status waits for a restart in progress
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self) -> int:
        """Launch the server and wait until it is ready (JudgeServerError if it is not); returns its pid."""
        with self._lock:
            self._launch()
        self._watcher = threading.Thread(target=self._watch, name="judge-server-watch", daemon=True)
        self._watcher.start()
        return self._process.pid

    def status(self) -> dict[str, Any]:
        """The server's pid, the restarts so far and the failure that ended it (None while it serves)."""
        with self._lock:
            return {"pid": None if self._process is None else self._process.pid, "restarts": self.restarts,
                    "failure": self.failure}

    def stop(self) -> None:
        """Stop the server's process group and the watch; no further restarts."""
        self._stopping.set()
        with self._lock:
            self._kill()
        if self._watcher is not None:
            self._watcher.join()

    # ------------------------------------------------------------------------------------------ internals
    def _watch(self) -> None:
        death = ""
        while not self._stopping.wait(POLL_S):
            with self._lock:
                if self._stopping.is_set() or self.failure is not None:
                    continue
                if self._process is not None:  # None: the last restart failed, its group is gone already
                    if self._process.poll() is None:
                        continue
                    death = f"exited with status {self._process.returncode}"
                    self._kill()  # what it left running in its group
                if self.restarts >= self.max_restarts:
                    self.failure = (f"judge server {death}, and {SECTION}.max_restarts={self.max_restarts} "
                                    f"restart(s) are spent; the end of {self.log_path}:\n{self._tail()}")
                    continue
                self.restarts += 1
                try:
                    self._launch()
                except JudgeServerError as exc:  # tried again at the next round while restarts remain
                    death = f"could not be started again ({str(exc).splitlines()[0]})"

    def _launch(self) -> None:
        """Start the command and wait for health; on failure its group is killed and JudgeServerError raised."""
        command = self.command
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} launch {self.restarts}: "
                      f"{shlex.join(command)}\n".encode())
            log.flush()
            self._log_offset = log.tell()
            try:
                self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                                 stderr=subprocess.STDOUT, start_new_session=True)
            except OSError as exc:
                raise JudgeServerError(f"{SECTION}.command: cannot run {command[0]!r} ({type(exc).__name__}: "
                                       f"{exc}); check {SECTION}.python and command") from None
        self._reaper = subprocess.Popen([sys.executable, "-c", _REAPER, str(self._process.pid)],
                                        stdin=subprocess.PIPE, start_new_session=True)
        self._reaper.wait()  # its first process exits at once; its fork holds the pipe
        deadline = time.monotonic() + self.start_timeout_s
        while not self._stopping.is_set():
            if self._process.poll() is not None:
                code = self._process.returncode
                self._kill()
                raise JudgeServerError(f"judge server exited with status {code} before it was ready "
                                       f"({shlex.join(command)}); the end of {self.log_path}:\n{self._tail()}")
            if healthy(self.port):
                return
            if time.monotonic() > deadline:
                self._kill()
                raise JudgeServerError(f"judge server not ready within {SECTION}.start_timeout_s="
                                       f"{self.start_timeout_s:g} s (GET http://{HOST}:{self.port}{HEALTH_PATH} "
                                       f"never answered 200); the end of {self.log_path}:\n{self._tail()}")
            time.sleep(POLL_S)

    def _kill(self) -> None:
        """SIGTERM to the server's group, SIGKILL to what is left after STOP_GRACE_S; then dismiss the reaper.
        Forgets the process, so a group id the system may reuse later is never signalled again."""
        process, reaper = self._process, self._reaper
        if process is not None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(process.pid, signal.SIGKILL)  # the leader's children outlive it otherwise
            process.wait()
        if reaper is not None:
            try:
                reaper.stdin.write(b"stopped")
                reaper.stdin.close()
            except BrokenPipeError:
                pass  # the reaper is gone already
        self._process = self._reaper = None

    def _tail(self) -> str:
        """The end of what the latest launch wrote to the log."""
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            text = log.read().decode("utf-8", "replace")
        return text[-LOG_TAIL_CHARS:] if text.strip() else "(it wrote nothing)"


# ---------------------------------------------------------------------------------------------- driver side
class JudgeServer:
    """The driver's handle: starts the actor on this node with the section's resources and launches the server
    (`ready` waits for it), checks it before each batch (`check`), and stops it (`stop`)."""

    def __init__(self, cfg: JudgeServerConfig, log_dir: str | Path):
        self.cfg = cfg
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        """The server's base URL (the judge terms post to `<url>/v1/chat/completions`)."""
        self.log_path = Path(log_dir).resolve() / LOG_FILE
        self.restarts = 0
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        actor = ray.remote(JudgeServerProcess).options(num_cpus=cfg.cpus, num_gpus=cfg.gpus, max_restarts=0,
                                                       scheduling_strategy=here)
        arguments = (server_command(cfg, self.port), self.port, str(self.log_path))
        limits = {"start_timeout_s": cfg.start_timeout_s, "max_restarts": cfg.max_restarts}
        self.actors = ActorGroup("judge server", 1, lambda slot, generation: actor.remote(*arguments, **limits))
        self._started = self.actors[0].start.remote()

    def serve(self, config: RewardsConfig) -> RewardsConfig:
        """`config` with this server's URL (and model, where a term names none) in the terms that say
        `url: judge_server`."""
        return serve_judge(config, self.url, self.cfg.model)

    def ready(self) -> None:
        """Wait for the server launched by the constructor to answer GET /health; JudgeServerError if it does not."""
        self._expect(self._started, "start", self.cfg.start_timeout_s + PLACEMENT_S)

    def check(self) -> None:
        """Before a batch: JudgeServerError when the server is down for good; waits for a restart in progress."""
        status = self._expect(self.actors[0].status.remote(), "status",
                              self.cfg.start_timeout_s + STOP_GRACE_S + PLACEMENT_S)
        self.restarts = status["restarts"]
        if status["failure"] is not None:
            raise JudgeServerError(status["failure"])

    def health_metrics(self) -> dict[str, float]:
        """`health/judge_server_restarts`, cumulative (as of the latest `check`)."""
        return {"health/judge_server_restarts": float(self.restarts)}

    def stop(self) -> None:
        """Stop the server (its process group) and the actor; a dead or stuck actor is killed (its reaper then
        kills the group)."""
        if len(self.actors):
            wait_one(self.actors[0].stop.remote(), STOP_GRACE_S + 5.0)
        self.actors.shutdown()

    def _expect(self, call: Any, what: str, timeout_s: float) -> Any:
        outcome = wait_one(call, timeout_s)
        if outcome.status == "ok":
            return outcome.value
        if outcome.status == "error" and isinstance(outcome.error, JudgeServerError):
            raise JudgeServerError(str(outcome.error)) from None
        if outcome.status == "timeout":
            raise JudgeServerError(f"judge server actor: no answer to {what} within {timeout_s:g} s ({SECTION}."
                                   f"start_timeout_s + {PLACEMENT_S:g} s); it needs {self.cfg.cpus:g} CPU and "
                                   f"{self.cfg.gpus:g} GPU on the driver's node, free now: {ray.available_resources()}")
        raise JudgeServerError(f"judge server actor: {what} failed: {outcome.describe(timeout_s)}") from outcome.error


def start_judge_server(cfg: JudgeServerConfig | None, log_dir: str | Path, cleanup: ExitStack) -> JudgeServer | None:
    """The server of `reward_actors.judge_server` launched, its stop registered on `cleanup` (it then stops after
    whatever is registered later); not waited for (`JudgeServer.ready`). None when the section is null."""
    if cfg is None:
        return None
    server = JudgeServer(cfg, log_dir)
    cleanup.callback(server.stop)
    return server


class JudgedScorer:
    """The run's scorer (`RewardService` or `RewardRouter`) with the judge server its terms call: the server is
    checked before each batch and its restarts join the scorer's health metrics."""

    def __init__(self, scorer: Any, server: JudgeServer):
        self.scorer, self.server = scorer, server

    def score(self, batch: Any) -> tuple[Any, dict[str, float]]:
        self.server.check()
        return self.scorer.score(batch)

    def health_metrics(self) -> dict[str, float]:
        metrics = self.scorer.health_metrics() if hasattr(self.scorer, "health_metrics") else {}
        return {**metrics, **self.server.health_metrics()}
