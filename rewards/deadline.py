"""Run reward code in worker processes under hard deadlines enforced from outside.

`DeadlinePool.map(fn, items, item_timeout_s=...)` applies a picklable `fn` to every item in a pool of worker
processes and returns one `RunOutcome` per item, in order. Nothing the reward code does can hang or kill
the caller:

- Each item has its own deadline. Inside the worker a POSIX interval timer raises a private
  `BaseException` at the deadline (the worker's main thread, never the caller's); that cuts off pure-Python
  loops and sleeps and the worker lives on. Code that ignores it (C loops, swallowed exceptions, a plugin that
  blocks SIGALRM) is SIGKILLed by the parent `grace_s` later and the worker is replaced.
- Exceptions of every kind, `SystemExit`/`KeyboardInterrupt`/custom `BaseException`s included, become
  `RunOutcome("error", reason=...)`. A worker that dies (os._exit, segfault, OOM kill) gives
  `RunOutcome("crash")` for the item it was on; the rest of its chunk goes to a fresh worker. An item is
  tried once: a crashing or hanging item can't stall the batch.
- Items are sent in chunks (one pipe round trip per chunk, results stream back per item); workers, and the
  functions already sent to them, are reused across calls.

Workers start with the `forkserver` method: forking from a clean server process is safe when the caller
has threads (Ray, torch), and costs ~10 ms instead of a fresh interpreter; `preload` modules are imported
once in the server. Children import the caller's `__main__` as `__mp_main__`, as with `spawn`.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

logger = logging.getLogger(__name__)

_FORKSERVER_PRELOAD: set[str] = {"rewards.deadline"}


@dataclass(frozen=True)
class RunOutcome:
    """Result of one item: `ok` with `value`, or `timeout`/`error`/`crash` with a human-readable `reason`."""

    status: Literal["ok", "timeout", "error", "crash"]
    value: Any = None
    reason: str | None = None


class _ItemDeadline(BaseException):
    """Raised by the worker's interval timer; a BaseException so `except Exception` in plugins can't eat it."""


def _raise_item_deadline(signum, frame):
    raise _ItemDeadline()


def short_exception(exc: BaseException, limit: int = 300) -> str:
    """`Type: message`, truncated; never raises (str() of an exception can itself fail)."""
    try:
        text = str(exc)
    except BaseException:
        text = "<unprintable message>"
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------- worker side
def _run_item(fn: Callable[[Any], Any], item: Any, timeout_s: float | None) -> tuple[str, Any, str | None]:
    try:
        if timeout_s:
            signal.signal(signal.SIGALRM, _raise_item_deadline)  # re-armed: plugins may have replaced it
            signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            value = fn(item)
        finally:
            if timeout_s:
                signal.setitimer(signal.ITIMER_REAL, 0)
        return "ok", value, None
    except _ItemDeadline:
        return "timeout", None, f"timeout: exceeded {timeout_s:g} s"
    except BaseException as exc:  # noqa: B036 - containing SystemExit & co. is the point
        return "error", None, f"error: {short_exception(exc)}"


def _worker_main(conn: multiprocessing.connection.Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    functions: dict[str, Callable[[Any], Any]] = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # parent gone
        if message[0] == "stop":
            return
        _, job_id, fn_key, fn_bytes, items, item_timeout_s, parent_sys_path = message
        sys.path[:] = list(parent_sys_path) + [p for p in sys.path if p not in parent_sys_path]
        if fn_key not in functions:
            try:
                fn = pickle.loads(fn_bytes)
                prepare = getattr(fn, "prepare", None)
                if callable(prepare):
                    prepare()
                functions[fn_key] = fn
            except BaseException as exc:  # noqa: B036
                conn.send(("load_error", job_id, f"error: cannot load the reward in the worker: {short_exception(exc)}"))
                continue
        conn.send(("ready", job_id))
        fn = functions[fn_key]
        for index, item in enumerate(items):
            status, value, reason = _run_item(fn, item, item_timeout_s)
            try:
                conn.send(("result", job_id, index, status, value, reason))
            except Exception as exc:  # the value did not pickle; the pipe is still clean (pickled first)
                conn.send(("result", job_id, index, "error", None, f"error: result not picklable: {short_exception(exc)}"))


# ---------------------------------------------------------------------------------------------- parent side
class _Worker:
    def __init__(self, ctx: multiprocessing.context.BaseContext, name: str):
        parent_conn, child_conn = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, args=(child_conn,), name=name, daemon=True)
        self.process.start()
        child_conn.close()
        self.conn = parent_conn
        self.fn_keys: set[str] = set()
        self.job: _Job | None = None

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=2.0)
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(("stop",))
        except (OSError, ValueError):
            pass
        self.process.join(timeout=1.0)
        self.kill()


@dataclass
class _Job:
    job_id: int
    indices: list[int]
    position: int = 0
    loaded: bool = False
    deadline_at: float = 0.0


def _shutdown(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.stop()
    workers.clear()


class DeadlinePool:
    """A reusable pool of worker processes that apply a function to items under per-item deadlines.

    Thread-safe: concurrent `map` calls on one pool run one after the other.
    """

    def __init__(
        self,
        num_workers: int = 1,
        *,
        preload: Sequence[str] = (),
        grace_s: float = 0.5,
        load_timeout_s: float = 120.0,
        start_method: str = "forkserver",
        name: str = "reward-worker",
    ):
        if num_workers < 1:
            raise ValueError(f"num_workers: got {num_workers}; expected >= 1")
        if grace_s <= 0 or load_timeout_s <= 0:
            raise ValueError(f"grace_s={grace_s}, load_timeout_s={load_timeout_s}: both must be > 0")
        self.num_workers = num_workers
        self.grace_s = grace_s
        self.load_timeout_s = load_timeout_s
        self.name = name
        self._ctx = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            _FORKSERVER_PRELOAD.update(preload)
            self._ctx.set_forkserver_preload(sorted(_FORKSERVER_PRELOAD))  # no effect once the server runs
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._next_job_id = 0
        self.restarts = 0
        """Workers killed or lost so far (timeouts past the grace period, crashes)."""
        self._finalizer = weakref.finalize(self, _shutdown, self._workers)

    # ------------------------------------------------------------------------------------------ public
    def map(
        self,
        fn: Callable[[Any], Any],
        items: Sequence[Any],
        *,
        item_timeout_s: float | None,
        total_timeout_s: float | None = None,
        chunk_size: int | None = None,
    ) -> list[RunOutcome]:
        """`fn(item)` for every item, in worker processes. `item_timeout_s` bounds each item (None: only
        `total_timeout_s`); `total_timeout_s` bounds the whole call (items not finished by then time out)."""
        if not items:
            return []
        try:
            fn_bytes = pickle.dumps(fn)
        except Exception as exc:
            raise TypeError(
                f"{fn!r} cannot be sent to a worker process: {short_exception(exc)}; rewards must be "
                "picklable (module-level functions/classes, no lambdas or open handles)"
            ) from exc
        fn_key = hashlib.sha1(fn_bytes).hexdigest()
        with self._lock:
            return self._map_locked(fn_key, fn_bytes, list(items), item_timeout_s, total_timeout_s, chunk_size)

    def warm_up(self, fn: Callable[[Any], Any]) -> None:
        """Start every worker and load `fn` in it now, off any item deadline (for a `prepare` that loads a
        model, or to surface a broken reward at construction). Raises ValueError with the worker's reason."""
        fn_bytes = pickle.dumps(fn)
        fn_key = hashlib.sha1(fn_bytes).hexdigest()
        with self._lock:
            while len(self._workers) < self.num_workers:
                self._workers.append(_Worker(self._ctx, f"{self.name}-{len(self._workers)}"))
            deadline = time.monotonic() + self.load_timeout_s
            for worker in [w for w in self._workers if fn_key not in w.fn_keys]:
                self._next_job_id += 1
                worker.conn.send(("run", self._next_job_id, fn_key, fn_bytes, [], None, list(sys.path)))
                try:
                    if not worker.conn.poll(max(0.0, deadline - time.monotonic())):
                        self._discard(worker)
                        raise ValueError(f"timeout: the worker did not load the reward within {self.load_timeout_s:g} s")
                    message = worker.conn.recv()
                except (EOFError, OSError):
                    worker.process.join(timeout=2.0)
                    code = worker.process.exitcode
                    self._discard(worker)
                    raise ValueError(f"crash: worker exited with code {code} while loading the reward") from None
                if message[0] == "load_error":
                    raise ValueError(message[2])
                worker.fn_keys.add(fn_key)

    def close(self) -> None:
        """Stop the workers (they are also stopped when the pool is garbage-collected or at exit)."""
        with self._lock:
            _shutdown(self._workers)

    def __enter__(self) -> DeadlinePool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __getstate__(self):
        raise TypeError("DeadlinePool holds processes and cannot be pickled; build one where it is used")

    # ------------------------------------------------------------------------------------------ internals
    def _map_locked(self, fn_key, fn_bytes, items, item_timeout_s, total_timeout_s, chunk_size) -> list[RunOutcome]:
        count = len(items)
        if chunk_size is None:  # ~2 chunks per worker balances load; capped so results stream back often
            chunk_size = max(1, min(64, -(-count // (2 * self.num_workers))))
        batch = _Batch(items, fn_key, fn_bytes, item_timeout_s, self.grace_s, list(sys.path))
        batch.queue.extend(list(range(s, min(s + chunk_size, count))) for s in range(0, count, chunk_size))
        call_deadline = time.monotonic() + total_timeout_s if total_timeout_s else None
        while batch.remaining:
            now = time.monotonic()
            if call_deadline is not None and now >= call_deadline:
                batch.fail_pending(self._workers, "timeout", f"timeout: batch budget of {total_timeout_s:g} s exhausted")
                break
            self._dispatch(batch)
            busy = [w for w in self._workers if w.job is not None]
            if not busy:
                break  # nothing running and nothing queued: cannot happen, but never wait forever
            deadlines = [w.job.deadline_at for w in busy] + ([call_deadline] if call_deadline else [])
            handles = [w.conn for w in busy] + [w.process.sentinel for w in busy]
            wait_s = min(deadlines) - now
            ready = set(multiprocessing.connection.wait(handles, None if wait_s == float("inf") else max(0.0, wait_s)))
            for worker in busy:
                if worker.conn in ready or worker.process.sentinel in ready:
                    self._drain(worker, batch)
            now = time.monotonic()
            for worker in [w for w in self._workers if w.job is not None and w.job.deadline_at <= now]:
                job = worker.job
                if job.loaded:
                    batch.finish(job.indices[job.position],
                                 RunOutcome("timeout", reason=f"timeout: exceeded {item_timeout_s:g} s (worker killed)"))
                    batch.requeue(job.indices[job.position + 1:])
                else:
                    batch.fail_pending(self._workers, "timeout",
                                       f"timeout: the worker did not load the reward within {self.load_timeout_s:g} s")
                self._discard(worker)
        for worker in [w for w in self._workers if w.job is not None]:
            self._discard(worker)  # still busy with items that were given up on (budget exhausted, load error)
        return [r if r is not None else RunOutcome("error", reason="error: no result") for r in batch.results]

    def _dispatch(self, batch: _Batch) -> None:
        while batch.queue and len(self._workers) < self.num_workers:
            self._workers.append(_Worker(self._ctx, f"{self.name}-{len(self._workers)}"))
        for worker in list(self._workers):
            if not batch.queue:
                return
            if worker.job is not None:
                continue
            indices = batch.queue.popleft()
            self._next_job_id += 1
            job = _Job(self._next_job_id, indices, deadline_at=time.monotonic() + self.load_timeout_s)
            send_fn = None if batch.fn_key in worker.fn_keys else batch.fn_bytes
            try:
                worker.conn.send(("run", job.job_id, batch.fn_key, send_fn, [batch.items[i] for i in indices],
                                  batch.item_timeout_s, batch.sys_path))
            except (OSError, ValueError):  # died while idle: the next round starts a fresh worker
                batch.requeue(indices)
                self._discard(worker)
                continue
            worker.fn_keys.add(batch.fn_key)
            worker.job = job

    def _drain(self, worker: _Worker, batch: _Batch) -> None:
        """Read every message the worker has sent; then, if it died, blame its current item."""
        job, closed = worker.job, False
        while job is not None:
            try:
                if not worker.conn.poll():
                    break
                message = worker.conn.recv()
            except (EOFError, OSError):
                closed = True
                break
            if message[1] != job.job_id:
                continue
            if message[0] == "load_error":
                batch.fail_pending(self._workers, "error", message[2])
                worker.fn_keys.discard(batch.fn_key)  # it has not got the function: send it again next time
                worker.job = job = None
                continue
            if message[0] == "result":
                _, _, index, status, value, reason = message
                batch.finish(job.indices[index], RunOutcome(status, value, reason))
                job.position = index + 1
            job.loaded = True
            job.deadline_at = time.monotonic() + batch.item_budget_s
            if job.position >= len(job.indices):
                worker.job = job = None
        if closed or not worker.process.is_alive():
            worker.process.join(timeout=2.0)
            if job is not None:
                code = worker.process.exitcode
                batch.finish(job.indices[job.position], RunOutcome("crash", reason=f"crash: worker exited with code {code}"))
                batch.requeue(job.indices[job.position + 1:])
            self._discard(worker)

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        self._workers.remove(worker)
        self.restarts += 1


class _Batch:
    """Book-keeping of one `map` call: results so far and the chunks still to send."""

    def __init__(self, items, fn_key, fn_bytes, item_timeout_s, grace_s, sys_path):
        self.items, self.fn_key, self.fn_bytes, self.sys_path = items, fn_key, fn_bytes, sys_path
        self.item_timeout_s = item_timeout_s
        self.item_budget_s = item_timeout_s + grace_s if item_timeout_s else float("inf")
        self.results: list[RunOutcome | None] = [None] * len(items)
        self.remaining = len(items)
        self.queue: collections.deque[list[int]] = collections.deque()

    def finish(self, index: int, outcome: RunOutcome) -> None:
        if self.results[index] is None:
            self.results[index] = outcome
            self.remaining -= 1

    def requeue(self, indices: list[int]) -> None:
        if indices:
            self.queue.appendleft(indices)

    def fail_pending(self, workers: list[_Worker], status: str, reason: str) -> None:
        """Give up on every unfinished item (running or queued)."""
        for worker in workers:
            if worker.job is not None:
                for index in worker.job.indices[worker.job.position:]:
                    self.finish(index, RunOutcome(status, reason=reason))
        while self.queue:
            for index in self.queue.popleft():
                self.finish(index, RunOutcome(status, reason=reason))


def default_num_workers() -> int:
    """Processes for CPU-bound reward pools: the CPUs this process may use, at most 8."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))
