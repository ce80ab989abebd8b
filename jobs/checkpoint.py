"""Atomic, complete, verified checkpoints of one run under `runs/<name>/checkpoints/step_N/`, and resume.

A checkpoint holds `learner/` (the DeepSpeed state of every rank), `driver_state.json` (step, data cursor, RNG
states, policy version), `config.yaml`, in async mode `pending_rollouts.pt` (the next step's samples), and the
`COMPLETE` marker written last. It appears with one rename, belongs to one run (`run_id.json`), and every file is
checked against its sha256 before anything is unpickled, so a crash, a reused run directory or a flipped byte
never resumes the wrong state. What a checkpoint holds: docs/architecture.md §5; atomicity, retention and the
`checkpoint.resume` choices: docs/architecture.md §5.1; run identity: docs/reliability.md §8; digests and their
cost: docs/reliability.md §9.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import random
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from actors.config import CheckpointConfig
from model.atomic_write import fsync_directory, write_atomic

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
DRIVER_STATE = "driver_state.json"
CONFIG_FILE = "config.yaml"
LEARNER_DIR = "learner"
PENDING_FILE = "pending_rollouts.pt"
RUN_FILE = "run_id.json"
_STEP_DIR = re.compile(r"^step_(\d+)$")
_TEMPORARY = re.compile(r"^\.(step_\d+\.tmp|step_\d+\.old|trash)-")
_UNKNOWN = "<no readable marker>"  # the run id of a step_N whose marker is missing or unreadable
_HASH_CHUNK = 8 << 20


class CheckpointError(RuntimeError):
    """No checkpoint could be resumed from although some exist (or the named one is not usable), or the
    directory holds another run's checkpoints."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    path: Path
    step: int
    driver_state: dict[str, Any]
    config_text: str
    pending_rollouts: Any = None  # what `save` got as `pending_rollouts`; None: the checkpoint has none


def sha256_file(path: Path) -> str:
    """sha256 of a file, read in 8 MiB chunks (hashlib releases the GIL on them, so threads run in parallel)."""
    digest, buffer = hashlib.sha256(), bytearray(_HASH_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while n := handle.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def file_digests(directory: Path, names: Iterable[str]) -> dict[str, str]:
    """{name: sha256} of files under `directory`, several at a time (one per file, up to 8 threads)."""
    names = list(names)
    workers = max(1, min(8, os.cpu_count() or 1, len(names)))
    with ThreadPoolExecutor(workers) as pool:
        return dict(zip(names, pool.map(lambda name: sha256_file(directory / name), names)))


def read_marker(path: Path) -> dict[str, Any]:
    """The parsed `COMPLETE` marker of `path`, or ValueError saying why there is none."""
    marker = path / MARKER
    if not marker.is_file():
        raise ValueError(f"no {MARKER} marker (a save that never finished)")
    try:
        manifest = json.loads(marker.read_text())
        files = manifest["files"]
        if not isinstance(files, dict):
            raise TypeError(f"files is a {type(files).__name__}")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{MARKER} marker is unreadable ({exc})") from None
    return manifest


def marker_run_id(path: Path) -> str | None:
    """The run id in `path`'s marker; None for a checkpoint written before run ids; `_UNKNOWN` without a marker."""
    try:
        return read_marker(path).get("run_id")
    except ValueError:
        return _UNKNOWN


def verify(path: Path, *, digests: bool = True) -> dict[str, Any]:
    """Return the driver state of a complete checkpoint, or raise ValueError saying what is wrong (naming the
    file). With `digests`, every listed file's sha256 is recomputed and compared with the marker first, so a
    file corrupted in place (same size) is caught here, before anything unpickles it."""
    manifest = read_marker(path)
    files = manifest["files"]
    for name, size in files.items():
        file = path / name
        if not file.is_file():
            raise ValueError(f"listed file {name} is missing")
        if file.stat().st_size != size:
            raise ValueError(f"listed file {name} has {file.stat().st_size} bytes, the marker says {size}")
    if digests and "sha256" in manifest:
        expected = manifest["sha256"]
        if not isinstance(expected, dict) or set(expected) != set(files):
            raise ValueError(f"{MARKER} marker is unreadable (its sha256 list does not name exactly its files)")
        for name, actual in file_digests(path, sorted(files)).items():
            if actual != expected[name]:
                raise ValueError(f"listed file {name} has sha256 {actual}, the marker says {expected[name]} "
                                 f"(changed after it was written: corrupted in place)")
    try:
        state = json.loads((path / DRIVER_STATE).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{DRIVER_STATE} is not valid JSON ({exc})") from None
    if state.get("step") != manifest.get("step"):
        raise ValueError(f"{DRIVER_STATE} says step {state.get('step')}, the marker says {manifest.get('step')}")
    return state


@dataclass(frozen=True)
class _Plan:
    """What `checkpoint.resume` means in this directory: the run's id, whether id-less checkpoints are its
    own, and the checkpoints to try, newest first (none: start fresh)."""

    run_id: str
    legacy: bool
    candidates: list[Path]


class CheckpointManager:
    """Saves, lists, prunes and resumes the checkpoints of one run in one directory (`runs/<name>/checkpoints`).

    `resume()` (or `preflight()`) decides which run this is; a `save()` before it starts a fresh run, exactly
    as `resume: never` would."""

    def __init__(self, root: str | Path, cfg: CheckpointConfig):
        self.root, self.cfg = Path(root), cfg
        self.run_file = self.root.parent / RUN_FILE  # in the run directory, beside checkpoints/
        self.run_id: str | None = None  # set by resume(): a fresh run's new id, or the resumed checkpoint's
        self.legacy = False             # id-less checkpoints here are this run's (it resumed one of them)

    # -- when ---------------------------------------------------------------------------------
    def should_save(self, step: int, *, final: bool = False) -> bool:
        return final or (self.cfg.every > 0 and step % self.cfg.every == 0)

    def should_export(self, step: int, *, final: bool = False) -> bool:
        return final or (self.cfg.export_every > 0 and step % self.cfg.export_every == 0)

    # -- listing ------------------------------------------------------------------------------
    def step_dirs(self) -> list[tuple[int, Path]]:
        """Every `step_N` directory, complete or not, of any run, oldest first."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
        return sorted(found)

    def complete(self) -> list[tuple[int, Path]]:
        """Complete checkpoints of any run (valid marker, every listed file present at its size), oldest first."""
        out = []
        for step, path in self.step_dirs():
            try:
                verify(path, digests=False)
            except ValueError:
                continue
            out.append((step, path))
        return out

    def latest_complete(self) -> Path | None:
        done = self.complete()
        return done[-1][1] if done else None

    def owns(self, run_id: str | None) -> bool:
        """Whether a marker's run id is this run's (id-less ones are, once this run resumed one of them)."""
        return self.run_id is not None and _owned(_Plan(self.run_id, self.legacy, []), run_id)

    # -- saving -------------------------------------------------------------------------------
    def save(self, step: int, *, driver_state: dict[str, Any], config_text: str,
             save_learner: Callable[[Path], None] | None = None, pending_rollouts: Any = None) -> Path:
        """Write `step_N/` atomically, then apply retention. `save_learner(dir)` writes the learner state
        into `dir` (all ranks, a directory they share); `pending_rollouts` (tensors, lists, dicts, str, numbers,
        None only) goes into `pending_rollouts.pt`. Returns the final path."""
        if self.run_id is None:
            self._adopt(self._plan_fresh())
        final = self.root / f"step_{step}"
        if final.is_dir() and (other := marker_run_id(final)) != _UNKNOWN and not self.owns(other):
            raise CheckpointError(f"{final} holds a checkpoint of another run ({_describe(other)}; this run is "
                                  f"{self.run_id}): not replacing it. Move it away, or give this run another "
                                  "run.name or run.output_dir")
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temporaries()
        tmp = self.root / f".step_{step}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        if save_learner is not None:
            (tmp / LEARNER_DIR).mkdir()
            save_learner(tmp / LEARNER_DIR)
        if pending_rollouts is not None:
            write_atomic(tmp / PENDING_FILE, lambda file: torch.save(pending_rollouts, file))
        write_atomic(tmp / DRIVER_STATE, json.dumps({**driver_state, "step": step}, indent=1))
        write_atomic(tmp / CONFIG_FILE, config_text)
        files = {str(f.relative_to(tmp)): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
        started = time.perf_counter()
        digests = file_digests(tmp, files)
        log.info("step_%d: sha256 of %d files (%.1f MB) in %.2f s", step, len(files), sum(files.values()) / 1e6,
                 time.perf_counter() - started)
        write_atomic(tmp / MARKER, json.dumps({"step": step, "run_id": self.run_id, "time": time.time(),
                                               "files": files, "sha256": digests}, indent=1))
        fsync_directory(tmp)
        if final.exists():  # the same step saved again (e.g. after a resume): swap, then delete the old one
            old = self.root / f".step_{step}.old-{uuid.uuid4().hex[:8]}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
        fsync_directory(self.root)
        self._apply_retention(step)
        return final

    def _apply_retention(self, saved: int) -> None:
        """Keep this run's newest `keep_last` complete checkpoints up to the one just saved (which is therefore
        always kept). Other runs' checkpoints are never touched; this run's checkpoints of later steps (left by
        a resume that fell back past them) are replaced when the run saves those steps again."""
        done = [(s, p) for s, p in self.complete() if s <= saved and self.owns(marker_run_id(p))]
        for _, path in done[: max(0, len(done) - self.cfg.keep_last)]:
            trash = self.root / f".trash-{uuid.uuid4().hex[:8]}"
            path.rename(trash)  # atomic: never a half-deleted dir that still has its marker
            shutil.rmtree(trash)

    def _remove_stale_temporaries(self) -> None:
        for path in self.root.iterdir():
            if path.is_dir() and _TEMPORARY.match(path.name):
                log.warning("removing %s left by an interrupted save or delete", path)
                shutil.rmtree(path, ignore_errors=True)

    # -- which run ----------------------------------------------------------------------------
    def _read_run(self) -> tuple[str, bool] | None:
        """(run id, legacy) from `run_id.json`; None when the directory has none yet."""
        file = self.run_file
        if not file.exists():
            return None
        try:
            content = json.loads(file.read_text())
            run_id, legacy = content["run_id"], content.get("legacy", False)
            if not isinstance(run_id, str) or not run_id or not isinstance(legacy, bool):
                raise TypeError("run_id must be a non-empty string, legacy true or false")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{file} is unreadable ({exc}); it says which run the checkpoints in {self.root} "
                                  "belong to. Restore it, or delete it and set checkpoint.resume to the path of "
                                  "the step_N to continue") from None
        return run_id, legacy

    def _adopt(self, plan: _Plan) -> None:
        self.run_id, self.legacy = plan.run_id, plan.legacy
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.run_file, json.dumps({"run_id": plan.run_id, "legacy": plan.legacy}) + "\n")

    def _refuse(self, what: str, others: list[tuple[int, Path, str | None]], *, resume_hint: str = "") -> CheckpointError:
        steps = ", ".join(f"{p.name} ({_describe(rid)})" for _, p, rid in others)
        hint = resume_hint or f"checkpoint.resume=auto, or checkpoint.resume={others[-1][1]}"
        return CheckpointError(
            f"checkpoint.resume={self.cfg.resume}: {self.root} holds checkpoints of another run: {steps}; {what}. "
            "Nothing was deleted. Either give this run its own directory (another run.name or run.output_dir), "
            f"or continue that run ({hint}), or delete those step_N directories if they are no longer wanted")

    def _classified(self) -> list[tuple[int, Path, str | None]]:
        return [(step, path, marker_run_id(path)) for step, path in self.step_dirs()]

    def _plan_fresh(self) -> _Plan:
        """A new run: refused while any `step_N` is in the directory (it would be another run's)."""
        found = self._classified()
        if found:
            raise self._refuse("starting a fresh run here would mix them with its own", found)
        return _Plan(uuid.uuid4().hex, False, [])

    def _plan(self) -> _Plan:
        """Decide, without loading anything, which run this is and what to try; refuse another run's directory."""
        mode = self.cfg.resume
        if mode == "never":
            return self._plan_fresh()
        run = self._read_run()
        found = self._classified()
        if mode != "auto":
            path = Path(mode)
            rid = marker_run_id(path)
            if rid == _UNKNOWN:  # not loadable: _load says why
                return _Plan(run[0] if run else uuid.uuid4().hex, bool(run and run[1]), [path])
            if rid is None:  # written before run ids: its id-less siblings (if in this directory) are the same run
                inside = path.resolve().parent == self.root.resolve()
                plan = _Plan(run[0] if inside and run and run[1] else uuid.uuid4().hex, inside, [path])
            else:
                plan = _Plan(rid, bool(run and run[0] == rid and run[1]), [path])
            others = [f for f in found if f[2] != _UNKNOWN and not _owned(plan, f[2])]
            if others:
                raise self._refuse(f"resuming {path} ({_describe(rid)}) into it would mix the two runs", others)
            return plan
        if run is None:
            with_id = [f for f in found if f[2] not in (None, _UNKNOWN)]
            if with_id:
                raise self._refuse(f"{self.run_file} is missing, so nothing says which run continues here and "
                                   "checkpoint.resume=auto picks none of them", with_id,
                                   resume_hint=f"checkpoint.resume={with_id[-1][1]}")
            if not found:
                return _Plan(uuid.uuid4().hex, False, [])
            return _Plan(uuid.uuid4().hex, True, [p for _, p, _ in reversed(found)])  # written before run ids
        plan = _Plan(run[0], run[1], [])
        others = [f for f in found if f[2] != _UNKNOWN and not _owned(plan, f[2])]
        if others:
            raise self._refuse(f"this directory's run is {run[0]} and checkpoint.resume=auto resumes only its own",
                               others, resume_hint=f"checkpoint.resume={others[-1][1]}")
        mine = [p for _, p, rid in reversed(found) if rid == _UNKNOWN or _owned(plan, rid)]
        return _Plan(run[0], run[1], mine) if mine else _Plan(uuid.uuid4().hex, False, [])

    def preflight(self) -> None:
        """Raise CheckpointError now if `checkpoint.resume` would refuse this directory (another run's
        checkpoints): the driver calls it before it writes anything or starts Ray."""
        self._plan()

    # -- resuming -----------------------------------------------------------------------------
    def _load(self, path: Path, load_learner: Callable[[Path], None] | None) -> LoadedCheckpoint:
        """Verify sizes and digests of every file, then (only then) read the pending rollouts (tensors and
        builtins only) and let `load_learner` unpickle."""
        state = verify(path, digests=True)
        marker = read_marker(path)
        if "sha256" not in marker:
            log.warning("%s was written before checkpoints recorded digests: only file sizes were checked "
                        "before loading it", path)
        pending = torch.load(path / PENDING_FILE, weights_only=True) if PENDING_FILE in marker["files"] else None
        if load_learner is not None:
            load_learner(path / LEARNER_DIR)
        return LoadedCheckpoint(path, int(state["step"]), state, (path / CONFIG_FILE).read_text(), pending)

    def resume(self, load_learner: Callable[[Path], None] | None = None) -> LoadedCheckpoint | None:
        """Apply `checkpoint.resume`; `load_learner(dir)` restores the learner from `step_N/learner`.
        Returns None when starting fresh (the run gets a new id)."""
        plan = self._plan()
        if not plan.candidates:
            self._adopt(plan)
            log.info("starting run %s in %s", plan.run_id, self.root)
            return None
        if self.cfg.resume != "auto":
            try:
                loaded = self._load(plan.candidates[0], load_learner)
            except Exception as exc:
                raise CheckpointError(f"checkpoint.resume={self.cfg.resume!r} cannot be loaded: {exc}") from exc
            self._adopt(plan)
            return loaded
        failures = []
        for path in plan.candidates:
            try:
                loaded = self._load(path, load_learner)
            except Exception as exc:  # a corrupt checkpoint may raise anything; the next older one is tried
                failures.append(f"{path}: {type(exc).__name__}: {exc}")
                continue
            if failures:
                log.warning("resuming from %s; newer checkpoints failed to load:\n  %s", path, "\n  ".join(failures))
            self._adopt(plan)
            return loaded
        raise CheckpointError(f"checkpoint.resume=auto: {len(failures)} checkpoint(s) in {self.root} but none loads:\n  "
                              + "\n  ".join(failures)
                              + "\nfix or remove them, or start a fresh run in its own directory (another run.name "
                                "or run.output_dir)")


def _owned(plan: _Plan, run_id: str | None) -> bool:
    return run_id == plan.run_id or (run_id is None and plan.legacy)


def _describe(run_id: str | None) -> str:
    if run_id is None:
        return "no run id: written before run ids"
    return "no readable marker" if run_id == _UNKNOWN else f"run {run_id}"


# -- RNG states as JSON ---------------------------------------------------------------------------
def _b64(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.numpy().tobytes()).decode()


def _unb64(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


def capture_rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and every CUDA device) generator states, JSON-serialisable."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
             "torch": _b64(torch.get_rng_state())}
    if torch.cuda.is_available():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])
