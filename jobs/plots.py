"""The learning curve of a run: training reward and held-out accuracy against the step, as a PNG.

    python -m jobs.plots runs/demo            # re-draw runs/demo/learning_curve.png from its metrics.jsonl

`jobs.train` calls `learning_curve(run_dir)` after its last step and prints the path. Two panels share the
step axis:
- top: the mean total reward of each step's rollouts per task (`reward/<task>/total/mean`; every sample of
  the step, before any group filtering), with a moving average over `smooth` steps drawn over the raw points;
- bottom: held-out pass@1 and format rate (`eval/pass@1`, `eval/format_rate`) at every evaluation, the
  first one being the starting policy (step 0).
matplotlib runs on its non-interactive Agg backend (no display needed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CURVE_NAME = "learning_curve.png"


def read_metrics(metrics_path: Path) -> list[dict]:
    """Every JSON line of a metrics.jsonl, in file order; a missing file raises naming it."""
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path}: no metrics file; is this a run directory of jobs.train?")
    return [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]


def reward_series(records: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """task -> (steps, mean total reward) from `reward/<task>/total/mean` keys."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for record in records:
        for key, value in record.items():
            parts = key.split("/")
            if len(parts) == 4 and parts[0] == "reward" and parts[2:] == ["total", "mean"] and value is not None:
                steps, values = series.setdefault(parts[1], ([], []))
                steps.append(int(record["step"]))
                values.append(float(value))
    return series


def eval_series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    points = [(int(r["step"]), float(r[key])) for r in records if r.get(key) is not None]
    return [s for s, _ in points], [v for _, v in points]


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over up to `window` values (shorter at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def learning_curve(run_dir: str | Path, *, smooth: int = 10, title: str | None = None) -> Path:
    """Draw `<run_dir>/learning_curve.png` from `<run_dir>/metrics.jsonl`; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    rewards = reward_series(records)
    accuracy = eval_series(records, "eval/pass@1")
    formats = eval_series(records, "eval/format_rate")
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    for task, (steps, values) in sorted(rewards.items()):
        line, = top.plot(steps, values, ".", alpha=0.35, label=f"{task}: step mean")
        top.plot(steps, moving_average(values, smooth), "-", color=line.get_color(),
                 label=f"{task}: {smooth}-step moving average")
    top.set_ylabel("training reward (weighted total)")
    top.grid(alpha=0.3)
    if rewards:
        top.legend(fontsize=8, loc="lower right")
    if accuracy[0]:
        bottom.plot(accuracy[0], [100 * v for v in accuracy[1]], "o-", label="held-out pass@1")
        for step, value in zip(*accuracy):
            bottom.annotate(f"{100 * value:.1f}", (step, 100 * value), textcoords="offset points", xytext=(0, 6),
                            ha="center", fontsize=7)
    if formats[0]:
        bottom.plot(formats[0], [100 * v for v in formats[1]], "s--", alpha=0.6, label="held-out format rate")
    bottom.set_xlabel("RL step")
    bottom.set_ylabel("held-out (%)")
    bottom.grid(alpha=0.3)
    if accuracy[0] or formats[0]:
        bottom.legend(fontsize=8, loc="center right")
    else:
        bottom.text(0.5, 0.5, "no held-out evaluation (data.eval not set)", ha="center", va="center",
                    transform=bottom.transAxes)
    figure.suptitle(title or run_dir.name)
    figure.tight_layout()
    path = run_dir / CURVE_NAME
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.plots", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run directory of jobs.train (holds metrics.jsonl)")
    parser.add_argument("--smooth", type=int, default=10, help="moving-average window of the reward curve")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        path = learning_curve(args.run_dir, smooth=args.smooth)
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"learning curve: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
