"""Atomic, complete checkpoints under `runs/<name>/checkpoints/step_N/` and resume.

A checkpoint holds:
- `learner/`: the DeepSpeed state written by every learner rank (model, optimizer partitions);
- `driver_state.json`: step, data cursor, RNG states, policy version and whatever else the driver needs;
- `config.yaml`: the resolved config of the run that wrote it;
- `COMPLETE`: the marker, written last, listing every file with its size.

Atomicity: everything is written into `.step_N.tmp-<id>/`; the marker is its last file; then one
`rename` makes `step_N/` appear complete. A `step_N/` without a valid marker (or with a listed file
missing or of another size) is not a checkpoint and is never resumed from. Old checkpoints are
deleted only after the new one is complete, by renaming them to `.trash-*` first, so a crash mid-delete
never leaves something that looks complete.

Resume (`checkpoint.resume`): `never` starts fresh; a path loads exactly that checkpoint; `auto`
loads the newest complete checkpoint and, if it fails to load, the next older one (with a warning);
if checkpoints exist but none loads, it raises an error listing each one found and why it failed.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import re
import shutil
import time
import uuid
from collections.abc import Callable
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
_STEP_DIR = re.compile(r"^step_(\d+)$")
_TEMPORARY = re.compile(r"^\.(step_\d+\.tmp|step_\d+\.old|trash)-")


class CheckpointError(RuntimeError):
    """No checkpoint could be resumed from although some exist (or the named one is not usable)."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    path: Path
    step: int
    driver_state: dict[str, Any]
    config_text: str


def verify(path: Path) -> dict[str, Any]:
    """Return the driver state of a complete checkpoint, or raise ValueError saying what is missing."""
    marker = path / MARKER
    if not marker.is_file():
        raise ValueError(f"no {MARKER} marker (a save that never finished)")
    try:
        manifest = json.loads(marker.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{MARKER} marker is unreadable ({exc})") from None
    for name, size in files.items():
        file = path / name
        if not file.is_file():
            raise ValueError(f"listed file {name} is missing")
        if file.stat().st_size != size:
            raise ValueError(f"listed file {name} has {file.stat().st_size} bytes, the marker says {size}")
    try:
        state = json.loads((path / DRIVER_STATE).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{DRIVER_STATE} is not valid JSON ({exc})") from None
    if state.get("step") != manifest.get("step"):
        raise ValueError(f"{DRIVER_STATE} says step {state.get('step')}, the marker says {manifest.get('step')}")
    return state


class CheckpointManager:
    """Saves, lists, prunes and resumes checkpoints in one directory (`runs/<name>/checkpoints`)."""

    def __init__(self, root: str | Path, cfg: CheckpointConfig):
        self.root, self.cfg = Path(root), cfg

    # -- when ---------------------------------------------------------------------------------
    def should_save(self, step: int, *, final: bool = False) -> bool:
        return final or (self.cfg.every > 0 and step % self.cfg.every == 0)

    def should_export(self, step: int, *, final: bool = False) -> bool:
        return final or (self.cfg.export_every > 0 and step % self.cfg.export_every == 0)

    # -- listing ------------------------------------------------------------------------------
    def step_dirs(self) -> list[tuple[int, Path]]:
        """Every `step_N` directory, complete or not, oldest first."""
        if not self.root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
        return sorted(found)

    def complete(self) -> list[tuple[int, Path]]:
        """Complete checkpoints (valid marker, every listed file present), oldest first."""
        out = []
        for step, path in self.step_dirs():
            try:
                verify(path)
            except ValueError:
                continue
            out.append((step, path))
        return out

    def latest_complete(self) -> Path | None:
        done = self.complete()
        return done[-1][1] if done else None

    # -- saving -------------------------------------------------------------------------------
    def save(self, step: int, *, driver_state: dict[str, Any], config_text: str,
             save_learner: Callable[[Path], None] | None = None) -> Path:
        """Write `step_N/` atomically, then apply retention. `save_learner(dir)` writes the learner state
        into `dir` (all ranks, a directory they share). Returns the final path."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temporaries()
        final = self.root / f"step_{step}"
        tmp = self.root / f".step_{step}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        if save_learner is not None:
            (tmp / LEARNER_DIR).mkdir()
            save_learner(tmp / LEARNER_DIR)
        write_atomic(tmp / DRIVER_STATE, json.dumps({**driver_state, "step": step}, indent=1))
        write_atomic(tmp / CONFIG_FILE, config_text)
        files = {str(f.relative_to(tmp)): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
        write_atomic(tmp / MARKER, json.dumps({"step": step, "time": time.time(), "files": files}, indent=1))
        fsync_directory(tmp)
        if final.exists():  # the same step saved again (e.g. after a resume): swap, then delete the old one
            old = self.root / f".step_{step}.old-{uuid.uuid4().hex[:8]}"
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
        fsync_directory(self.root)
        self._apply_retention()
        return final

    def _apply_retention(self) -> None:
        done = self.complete()
        for _, path in done[: max(0, len(done) - self.cfg.keep_last)]:
            trash = self.root / f".trash-{uuid.uuid4().hex[:8]}"
            path.rename(trash)  # atomic: never a half-deleted dir that still has its marker
            shutil.rmtree(trash)

    def _remove_stale_temporaries(self) -> None:
        for path in self.root.iterdir():
            if path.is_dir() and _TEMPORARY.match(path.name):
                log.warning("removing %s left by an interrupted save or delete", path)
                shutil.rmtree(path, ignore_errors=True)

    # -- resuming -----------------------------------------------------------------------------
    def _load(self, path: Path, load_learner: Callable[[Path], None] | None) -> LoadedCheckpoint:
        state = verify(path)
        if load_learner is not None:
            load_learner(path / LEARNER_DIR)
        return LoadedCheckpoint(path, int(state["step"]), state, (path / CONFIG_FILE).read_text())

    def resume(self, load_learner: Callable[[Path], None] | None = None) -> LoadedCheckpoint | None:
        """Apply `checkpoint.resume`; `load_learner(dir)` restores the learner from `step_N/learner`.
        Returns None when starting fresh."""
        if self.cfg.resume == "never":
            return None
        if self.cfg.resume != "auto":
            path = Path(self.cfg.resume)
            try:
                return self._load(path, load_learner)
            except Exception as exc:
                raise CheckpointError(f"checkpoint.resume={self.cfg.resume!r} cannot be loaded: {exc}") from exc
        found = self.step_dirs()
        if not found:
            return None
        failures = []
        for _, path in reversed(found):
            try:
                loaded = self._load(path, load_learner)
            except Exception as exc:  # a corrupt checkpoint may raise anything; the next older one is tried
                failures.append(f"{path}: {type(exc).__name__}: {exc}")
                continue
            if failures:
                log.warning("resuming from %s; newer checkpoints failed to load:\n  %s", path, "\n  ".join(failures))
            return loaded
        raise CheckpointError(f"checkpoint.resume=auto: {len(found)} checkpoint(s) in {self.root} but none loads:\n  "
                              + "\n  ".join(failures)
                              + "\nfix or remove them, or set checkpoint.resume=never to start a fresh run")


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
