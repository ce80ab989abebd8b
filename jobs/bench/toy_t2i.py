"""`python -m jobs.bench toy_t2i`: does UniGRPO teach a tiny MMaDA-layout policy to draw the prompted shape?

For each seed s: the warm start `jobs.tasks.shapes_sft` (seed s, written to `<out>/sft-seed<s>/`), then
`jobs.train` on `jobs/configs/toy_t2i.yaml` (the coloured-shapes task of jobs/tasks/shapes.py, the toy VQ
tokenizer model/assets/shapes_vq, the `shape_match` reward plugin of examples/shape_reward) from it with
run seed s. Then it tests, from each run's metrics.jsonl, whether the reward went up. The reward series is r_s(t), the mean
`shape_match` score of the rollouts of step t of seed s (`reward/t2i/<term>/mean`, over every sample of the
step). With W = `--window` (5) steps:

    first_s = mean(r_s(1..W)),  last_s = mean(r_s(T-W+1..T)),  d_s = last_s - first_s
    SE_s    = sqrt(var(r_s(1..W)) / W + var(r_s(T-W+1..T)) / W)     (sample variances, ddof = 1)
    d̄ = mean_s d_s,  SE_seeds = sd(d_1..d_S) / sqrt(S)                  (sd with ddof = 1)

PASS when every seed's d_s > 3·SE_s (the per-step means of the first and last windows, as two samples of
W steps each) AND d̄ > 3·SE_seeds (the seed-to-seed spread of the improvement). Both margins are reported.

Outputs under `--out` (default runs/bench/toy_t2i): one run directory per seed (`toy_t2i-seed<s>/`, with its
metrics, sample grids `samples/step_N.png` and learning curve), `summary.json` (per-step series, the
statistics above, the paths of the first and last sample grids of each seed) and `summary.md` (the table).
Exit code 0 on PASS, 1 on FAIL.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "toy_t2i.yaml"
TASK = "t2i"
SIGMAS = 3.0


def window_stats(series: list[float], window: int) -> dict[str, float]:
    """first/last window means, their difference d and SE = sqrt(var_first / W + var_last / W)."""
    if window < 2 or len(series) < 2 * window:
        raise ValueError(f"need at least 2 x window = {2 * window} steps with window >= 2, got {len(series)} "
                         f"steps and window {window}")
    first, last = series[:window], series[-window:]
    se = math.sqrt(statistics.variance(first) / window + statistics.variance(last) / window)
    d = statistics.mean(last) - statistics.mean(first)
    return {"first": statistics.mean(first), "last": statistics.mean(last), "diff": d, "se": se,
            "margin": d / se if se > 0 else math.inf if d > 0 else 0.0}


def learning_stats(series_by_seed: dict[int, list[float]], window: int = 5) -> dict[str, Any]:
    """The module docstring's statistics for each seed and across seeds, and the verdict."""
    per_seed = {seed: window_stats(series, window) for seed, series in series_by_seed.items()}
    diffs = [s["diff"] for s in per_seed.values()]
    mean_diff = statistics.mean(diffs)
    se_seeds = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan
    across = {"mean_diff": mean_diff, "se_seeds": se_seeds,
              "margin": mean_diff / se_seeds if se_seeds > 0 else (math.inf if mean_diff > 0 else 0.0)}
    passed = all(s["diff"] > SIGMAS * s["se"] for s in per_seed.values()) and len(diffs) > 1 and \
        mean_diff > SIGMAS * se_seeds
    return {"window": window, "sigmas": SIGMAS, "per_seed": per_seed, "across_seeds": across, "passed": passed}


def reward_series(metrics_path: Path, term_key: str) -> list[float]:
    """The per-step values of `term_key` in a metrics.jsonl, in step order (every step must have one)."""
    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    rows = sorted((r for r in rows if r.get("step", 0) >= 1 and "perf/step_s" in r), key=lambda r: r["step"])
    missing = [r["step"] for r in rows if r.get(term_key) is None]
    if missing:
        raise ValueError(f"{metrics_path}: no {term_key} at steps {missing}")
    return [float(r[term_key]) for r in rows]


def markdown(result: dict[str, Any]) -> str:
    window = result["stats"]["window"]
    lines = [f"# toy_t2i: reward `{result['term']}` (mean over each step's samples)", "",
             f"{result['setup']}", "",
             f"| seed | first {window} steps | last {window} steps | diff | SE | diff / SE | warm start s | RL s |",
             "|---|---|---|---|---|---|---|---|"]
    for seed, s in result["stats"]["per_seed"].items():
        lines.append(f"| {seed} | {s['first']:.4f} | {s['last']:.4f} | {s['diff']:+.4f} | {s['se']:.4f} | "
                     f"{s['margin']:.1f} | {result['seconds'][f'sft-{seed}']:.0f} | {result['seconds'][str(seed)]:.0f} |")
    across = result["stats"]["across_seeds"]
    lines += ["", f"Across seeds: mean diff {across['mean_diff']:+.4f}, SE over seeds {across['se_seeds']:.4f}, "
                  f"diff / SE {across['margin']:.1f}.",
              f"Verdict: **{'PASS' if result['stats']['passed'] else 'FAIL'}** (every seed's diff > "
              f"{SIGMAS:g} x its SE, and the mean diff > {SIGMAS:g} x the SE over seeds).", "",
              "Sample grids (one row per prompt, 8 samples each):"]
    for seed, grids in result["grids"].items():
        lines.append(f"- seed {seed}: first {grids['first']}, last {grids['last']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.bench toy_t2i", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="run seeds (default 0 1 2)")
    parser.add_argument("--config", default=str(CONFIG), help="training config (default jobs/configs/toy_t2i.yaml)")
    parser.add_argument("--out", default="runs/bench/toy_t2i", help="output directory")
    parser.add_argument("--window", type=int, default=5, help="steps in the first and last windows (default 5)")
    parser.add_argument("--sft-steps", type=int, default=600, help="warm-start steps (jobs.tasks.shapes_sft)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value for every seed, e.g. --set run.steps=30")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) < 2:
        parser.error("--seeds: give at least two different seeds (the SE over seeds needs them)")

    import torch

    from jobs.config import load_config
    from jobs.tasks.shapes_sft import train_sft
    from jobs.train import train
    from model.checkpoint import save
    from rewards.service import metric_term

    torch.set_num_threads(1)
    out = Path(args.out)
    series, seconds, grids, term_key, setup = {}, {}, {}, "", ""
    for seed in args.seeds:
        cfg = load_config(args.config, [*args.overrides, f"run.seed={seed}"])
        sft_dir = out / f"sft-seed{seed}"
        began = time.perf_counter()
        loaded, record = train_sft(cfg.rollout.image_tokenizer, seed=seed, steps=args.sft_steps,
                                   text_length=cfg.rollout.image_sampler.text_length,
                                   log=lambda line, s=seed: print(f"seed {s} warm start: {line}", file=sys.stderr))
        save(loaded, sft_dir)
        (sft_dir / "training.json").write_text(json.dumps(record, indent=2) + "\n")
        seconds[f"sft-{seed}"] = time.perf_counter() - began
        overrides = [*args.overrides, f"run.seed={seed}", f"run.name=toy_t2i-seed{seed}", f"run.output_dir={out}",
                     f"model.path={sft_dir}", "checkpoint.resume=never"]
        cfg = load_config(args.config, overrides)
        shutil.rmtree(cfg.run.run_dir, ignore_errors=True)  # a fresh run appends to an old run's metrics.jsonl
        term_key = f"reward/{TASK}/{metric_term(cfg.rewards.terms_for(TASK)[0].name)}/mean"
        setup = (f"warm start {args.sft_steps} steps; RL {cfg.run.steps} steps x {cfg.run.prompts_per_step} prompts x "
                 f"{cfg.algo.group_size} samples, lr {cfg.learner.lr}, mu {cfg.algo.mu}, beta {cfg.algo.beta}, "
                 f"image sampler {cfg.rollout.image_sampler}")
        began = time.perf_counter()
        summary = train(cfg)
        seconds[str(seed)] = time.perf_counter() - began
        run_dir = Path(summary["run_dir"])
        series[seed] = reward_series(run_dir / "metrics.jsonl", term_key)
        pngs = sorted((run_dir / "samples").glob("step_*.png"), key=lambda p: int(p.stem.split("_")[1]))
        grids[str(seed)] = {"first": str(pngs[0]) if pngs else None, "last": str(pngs[-1]) if pngs else None}
        print(f"seed {seed}: {len(series[seed])} steps in {seconds[str(seed)]:.0f} s, reward "
              f"{series[seed][0]:.4f} -> {series[seed][-1]:.4f}", file=sys.stderr, flush=True)
    result = {"term": term_key, "setup": setup, "series": {str(s): v for s, v in series.items()},
              "stats": learning_stats(series, args.window), "seconds": seconds, "grids": grids}
    result["stats"]["per_seed"] = {str(k): v for k, v in result["stats"]["per_seed"].items()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "summary.md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {out / 'summary.json'} and {out / 'summary.md'}")
    return 0 if result["stats"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
