"""Metrics: TensorBoard + one JSON object per step, optional W&B, and a table of sample generations.

Keys are namespaced and checked: `loss/*`, `reward/<task>/<term>/*`, `rollout/*` (lengths, tokens/s), `eval/*` (held-out),
`perf/*` (seconds per phase, weight sync), `health/*` (restarts, skipped samples). A key outside
these fails loudly, so dashboards never silently lose a metric to a typo.

Files under the run directory:
- `metrics.jsonl`: `{"step": N, "wall_time": t, "<key>": value, ...}` per `log` call, flushed at once;
  non-finite values are written as null (JSON has no NaN) and kept as NaN in TensorBoard.
- `rollouts.jsonl`: `{"step": N, "rows": [...], "images": [...]}` per step, one row per sample the step
  consumed; with `logging.rollout_text` the rows hold the text, rewards, advantage and reveal order and
  `images` names the step's image grid files (`python -m jobs.show` prints them; fields and size per row:
  docs/cluster.md §3).
- `samples.jsonl`: `{"step": N, "rows": [...]}` every `sample_table_every` steps; the same rows go to
  TensorBoard's text tab as a markdown table (cells truncated there, full in the jsonl).
- `samples/step_N.png` (+ `samples/step_N.json`, the caption of each grid row): a grid of generated
  images (text-to-image rows: one grid row per prompt, its group's samples side by side), logged with
  `log_image_grid` on the sample-table steps; the same grid goes to TensorBoard's image tab.
- `tensorboard/`: event files.
On resume (`resume_step=k`), lines for steps > k (written after the last checkpoint by the run that
died) and a line torn by the kill are dropped from the jsonl files, and TensorBoard purges its events
after k, so every step appears once. (A fresh run reusing a run directory passes `resume_step=-1`: every old line goes.)
W&B: the W&B run's id is the run's own id (`run_id`: jobs.train passes the one in `<run dir>/run_id.json`, which
a resumed run keeps), so a resumed run continues the same W&B run (`resume="allow"`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from actors.config import LoggingConfig
from model.atomic_write import write_atomic

NAMESPACES = ("loss", "reward", "rollout", "perf", "health", "eval")
CELL_CHARS = 400  # markdown cells are cut here; the jsonl keeps the whole text
GRID_GAP = 2  # pixels of white between the cells of an image grid


def check_key(key: str) -> None:
    """Raise ValueError unless `key` is `<namespace>/<name>` (`reward/<term>/<name>` for rewards)."""
    parts = key.split("/")
    if parts[0] not in NAMESPACES or len(parts) < 2 or not all(parts):
        raise ValueError(f"metric key {key!r}: expected '<namespace>/<name>' with namespace one of "
                         f"{', '.join(NAMESPACES)}")
    if parts[0] == "reward" and len(parts) < 3:
        raise ValueError(f"metric key {key!r}: reward metrics are 'reward/<term>/<name>', e.g. reward/correctness/mean")


def _number(key: str, value: Any) -> float:
    if hasattr(value, "item"):  # 0-d tensors and numpy scalars
        value = value.item()
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, (int, float)):
        raise ValueError(f"metric {key!r}: expected a number, got {type(value).__name__} {value!r:.60}")
    return float(value)


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop lines whose step is after `last_step`, and a torn last line of a killed run (atomic rewrite)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            step = json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
        if step <= last_step:
            kept.append(line + "\n")
    write_atomic(path, "".join(kept))


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows of dicts -> a markdown table; columns in first-seen order, `|` escaped, newlines as <br>."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)

    def cell(value: Any) -> str:
        text = "" if value is None else str(value)
        if len(text) > CELL_CHARS:
            text = text[:CELL_CHARS] + "…"
        return text.replace("|", "\\|").replace("\n", "<br>")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def check_image(image: Any, where: str) -> np.ndarray:
    """`image` as an HxWx3 uint8 array; ValueError naming `where` otherwise."""
    shape, dtype = getattr(image, "shape", None), getattr(image, "dtype", None)
    if not isinstance(image, np.ndarray) or len(shape) != 3 or shape[2] != 3 or dtype != np.uint8 or 0 in shape:
        raise ValueError(f"{where}: expected a non-empty HxWx3 uint8 numpy array, got {type(image).__name__} "
                         f"shape={shape} dtype={dtype}")
    return image


def image_grid(rows: Sequence[Sequence[np.ndarray]], gap: int = GRID_GAP) -> np.ndarray:
    """Rows of HxWx3 uint8 images -> one [R·(h+gap)+gap, C·(w+gap)+gap, 3] uint8 image (white background).

    Every cell is h x w = the largest height and width among the images; a smaller image sits in its cell's
    top-left corner, and rows shorter than the longest one leave their last cells white.
    """
    if not rows or not any(rows):
        raise ValueError("image_grid: no images")
    cells = [[check_image(image, f"image_grid: rows[{r}][{c}]") for c, image in enumerate(row)]
             for r, row in enumerate(rows)]
    h = max(image.shape[0] for row in cells for image in row)
    w = max(image.shape[1] for row in cells for image in row)
    columns = max(len(row) for row in cells)
    grid = np.full((len(cells) * (h + gap) + gap, columns * (w + gap) + gap, 3), 255, dtype=np.uint8)
    for r, row in enumerate(cells):
        for c, image in enumerate(row):
            top, left = gap + r * (h + gap), gap + c * (w + gap)
            grid[top:top + image.shape[0], left:left + image.shape[1]] = image
    return grid


class MetricsLogger:
    """Writes each step's metrics to every enabled sink; use as a context manager or call `close()`."""

    def __init__(self, run_dir: str | Path, cfg: LoggingConfig, *, run_name: str | None = None,
                 config: Mapping[str, Any] | None = None, resume_step: int | None = None, run_id: str | None = None):
        """`run_id`: the W&B run id (None: W&B draws one, and a rerun starts a new W&B run)."""
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self._grids: dict[int, list[Path]] = {}  # step -> image grid files written (log_image_grid), for rollouts.jsonl
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.samples_path = self.run_dir / "samples.jsonl"
        self.rollouts_path = self.run_dir / "rollouts.jsonl"
        if resume_step is not None:
            for path in (self.metrics_path, self.samples_path, self.rollouts_path):
                truncate_jsonl(path, resume_step)
        self._jsonl = self.metrics_path.open("a", encoding="utf-8") if cfg.jsonl else None
        self._writer = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = None if resume_step is None else resume_step + 1
            self._writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=purge)
        self._wandb = None
        if cfg.wandb_project is not None:
            try:
                import wandb
            except ImportError as exc:
                raise ImportError(f"logging.wandb_project={cfg.wandb_project!r} needs the wandb package: "
                                  "pip install -c constraints.txt -e '.[wandb]' (or set it to null)") from exc
            self._wandb = wandb.init(project=cfg.wandb_project, name=run_name, id=run_id, dir=str(self.run_dir),
                                     config=dict(config or {}), resume="allow")

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Log one step's metrics (call once per step with everything for that step)."""
        values = {}
        for key, value in metrics.items():
            check_key(key)
            values[key] = _number(key, value)
        if self._jsonl is not None:
            row = {"step": step, "wall_time": time.time()}
            row.update({k: (v if math.isfinite(v) else None) for k, v in values.items()})
            self._jsonl.write(json.dumps(row) + "\n")
            self._jsonl.flush()
        if self._writer is not None:
            for key, value in values.items():
                self._writer.add_scalar(key, value, step)
            self._writer.flush()
        if self._wandb is not None:
            self._wandb.log(values, step=step)

    def log_rollouts(self, step: int, rows: Sequence[Mapping[str, Any]]) -> None:
        """Record what a step consumed (a dict per row: uid, sample index, policy version, reward, and with
        `rollout_text` the sample's text: jobs/train_parts.py `rollout_rows`) in rollouts.jsonl, so runs can be
        compared row by row (resume, fault tests) and read afterwards (`python -m jobs.show`). With
        `rollout_text`, the image grids `log_image_grid` wrote for this step (call it first) are listed, relative
        to the run directory."""
        entry: dict[str, Any] = {"step": step, "rows": list(rows)}
        grids = self._grids.pop(step, [])
        if self.cfg.rollout_text and grids:
            entry["images"] = [str(path.relative_to(self.run_dir)) for path in grids]
        with self.rollouts_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")

    def should_log_samples(self, step: int) -> bool:
        every = self.cfg.sample_table_every
        return every > 0 and step % every == 0

    def log_samples(self, step: int, rows: Sequence[Mapping[str, Any]]) -> None:
        """Write the first `sample_table_rows` rows (dicts: prompt, response, reward, ...) as a table."""
        rows = [dict(row) for row in rows[: self.cfg.sample_table_rows]]
        if not rows:
            return
        with self.samples_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, "rows": rows}, default=str) + "\n")
        if self._writer is not None:
            self._writer.add_text("samples", markdown_table(rows), step)
            self._writer.flush()
        if self._wandb is not None:
            import wandb

            columns = list(dict.fromkeys(k for row in rows for k in row))
            table = wandb.Table(columns=columns, data=[[str(row.get(c, "")) for c in columns] for row in rows])
            self._wandb.log({"samples": table}, step=step)

    def log_image_grid(self, step: int, rows: Sequence[Sequence[np.ndarray]], captions: Sequence[str],
                       tag: str = "samples/t2i") -> Path:
        """Write `rows` of images (e.g. one row per prompt, its samples side by side) as one grid:
        `samples/step_N.png`, the row captions in `samples/step_N.json`, TensorBoard image `tag`, W&B.
        Returns the PNG's path."""
        from PIL import Image

        if len(captions) != len(rows):
            raise ValueError(f"log_image_grid: {len(captions)} captions for {len(rows)} rows; give one per row")
        grid = image_grid(rows)  # [H, W, 3] uint8
        directory = self.run_dir / "samples"
        directory.mkdir(exist_ok=True)
        path = directory / f"step_{step}.png"
        write_atomic(path, lambda tmp: Image.fromarray(grid).save(tmp, format="PNG"))
        (directory / f"step_{step}.json").write_text(json.dumps(
            {"step": step, "png": path.name, "rows": [str(c) for c in captions]}, indent=1) + "\n")
        self._grids.setdefault(step, []).append(path)
        if self._writer is not None:
            self._writer.add_image(tag, grid, step, dataformats="HWC")
            self._writer.add_text(f"{tag}/captions", "\n".join(f"{i}. {c}" for i, c in enumerate(captions)), step)
            self._writer.flush()
        if self._wandb is not None:
            import wandb

            self._wandb.log({tag: wandb.Image(grid, caption=" | ".join(map(str, captions)))}, step=step)
        return path

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
