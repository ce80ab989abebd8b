"""Estimator ablation on the embedded demo: UniGRPO (stratified) vs UniGRPO (random schedule) vs diffu-GRPO.

    python -m jobs.bench ablation                      # 3 variants x seeds 0 1 2 at the demo's budget
    python -m jobs.bench ablation --seeds 0 1 --out runs/ablation --set run.steps=40

Every run is `python -m jobs.train --config jobs/configs/demo.yaml` (same data, policy, sampler, optimizer,
steps and evaluation) with one change per variant:

    stratified   algo.estimator=unigrpo  algo.masking.schedule=stratified   (the default)
    random       algo.estimator=unigrpo  algo.masking.schedule=random       (the paper's "fully random" ablation)
    diffu_grpo   algo.estimator=diffu_grpo                                  (d1: whole response masked, prompt 15%)

and `run.seed` = the seed, which changes the data order, the rollout samples and the masks. Runs go one
after the other (each takes the machine's CPUs); a run whose `summary.json` exists is not run again, so an
interrupted ablation continues where it stopped. The result is the final held-out pass@1 of each run
(the demo's greedy evaluation on `data.eval`), summarised per variant as mean ± sample std (ddof 1) and
written to `<out>/ablation.json` and `<out>/ablation.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VARIANTS = {
    "stratified": ["algo.estimator=unigrpo", "algo.masking.schedule=stratified"],
    "random": ["algo.estimator=unigrpo", "algo.masking.schedule=random"],
    "diffu_grpo": ["algo.estimator=diffu_grpo"],
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.bench ablation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "jobs/configs/demo.yaml"), help="base training config")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default="runs/ablation", help="output directory (one run directory per run)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override applied to every run (e.g. --set run.steps=40)")
    return parser.parse_args(argv)


def run_one(args: argparse.Namespace, variant: str, seed: int) -> dict:
    """Train one (variant, seed) unless its summary exists; returns its result row."""
    name = f"{variant}-seed{seed}"
    run_dir = Path(args.out) / name
    summary_path = run_dir / "summary.json"
    wall = None
    if not summary_path.is_file():
        command = [sys.executable, "-m", "jobs.train", "--config", args.config,
                   "--set", f"run.output_dir={args.out}", "--set", f"run.name={name}", "--set", f"run.seed={seed}"]
        for override in [*args.overrides, *VARIANTS[variant]]:
            command += ["--set", override]
        print(f"[ablation] {name}: {' '.join(command[1:])}", flush=True)
        started = time.perf_counter()
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_JOB_ID")}
        result = subprocess.run(command, cwd=REPO, env=env)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(f"run {name} failed with exit code {result.returncode}; its log is above, its "
                               f"outputs in {run_dir}")
    summary = json.loads(summary_path.read_text())
    heldout = summary.get("heldout") or []
    if not heldout:
        raise RuntimeError(f"{summary_path}: no held-out evaluation; the base config needs data.eval")
    return {"variant": variant, "seed": seed, "run_dir": str(run_dir), "start": heldout[0]["eval/pass@1"],
            "final": heldout[-1]["eval/pass@1"], "final_step": heldout[-1]["step"],
            "problems": int(heldout[-1]["eval/problems"]), "wall_s": wall}


def summarise(rows: list[dict]) -> dict[str, dict]:
    """Per variant: final pass@1 mean and sample std over seeds, and the per-seed values."""
    out = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        finals = [r["final"] for r in rows if r["variant"] == variant]
        out[variant] = {"n": len(finals), "mean": statistics.fmean(finals),
                        "std": statistics.stdev(finals) if len(finals) > 1 else 0.0, "finals": finals}
    return out


def markdown(rows: list[dict], table: dict[str, dict]) -> str:
    lines = ["| variant | final held-out pass@1 (%) mean ± std | per seed (%) | start (%) |", "|---|---|---|---|"]
    for variant, stats in table.items():
        starts = sorted({round(100 * r["start"], 1) for r in rows if r["variant"] == variant})
        lines.append(f"| {variant} | {100 * stats['mean']:.1f} ± {100 * stats['std']:.1f} | "
                     f"{', '.join(f'{100 * v:.1f}' for v in stats['finals'])} | {', '.join(map(str, starts))} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    rows = [run_one(args, variant, seed) for variant in args.variants for seed in args.seeds]
    table = summarise(rows)
    report = {"config": args.config, "overrides": args.overrides, "seeds": args.seeds, "runs": rows, "summary": table}
    (Path(args.out) / "ablation.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(rows, table)
    (Path(args.out) / "ablation.md").write_text(text)
    print(text)
    return 0
