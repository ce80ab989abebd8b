"""`python -m jobs.bench pipeline`: where a training step's time goes, sync vs async, 1 vs 2 rollout workers.

Runs the same small job (`jobs.train.train`, 2 learner ranks with ZeRO-2, the default text rewards) four
times side by side in one process and one local Ray: modes {sync, async} × {1, 2} rollout workers. Each
run does one warm-up step (actor start-up, first sampling call; excluded) and then `--steps` measured
steps. From the runs' metrics.jsonl it reports, per run, the mean seconds of each phase of a step:

- rollout: the driver's waits for samples, `perf/rollout_collect_s` + `perf/weight_sync_wait_s` (in async
  mode the next step's sampling runs during the update, and a worker finishes it before it takes new
  weights: what is not hidden behind the update shows up as that wait);
- reward: `perf/reward_s`; update: `perf/update_s` (μ masked copies, old/ref log-probs, optimizer steps on
  every rank); weight sync: `perf/weight_sync_s` (learner rank 0 -> every worker through the object
  store, the transfer alone);
- other: the rest of `perf/step_s` (advantages, dispatching, batch assembly);

each phase's share of the step, weight-sync time as a fraction of the step, and steps/s from the wall
clock between logged steps (which also counts logging and the per-step work outside `perf/step_s`).
The model is a tiny LLaDA twin (`--size tiny`) or a somewhat larger one (`--size small`, the default,
so that every phase is measurable), written to a temporary checkpoint directory and loaded from there.
Numbers on a shared CPU machine are noisy: compare rows of one invocation, not across invocations.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SIZES = {"tiny": None, "small": {"d_model": 256, "n_layers": 4, "n_heads": 4, "mlp_hidden_size": 768}}
PHASES = {"rollout": ("perf/rollout_collect_s", "perf/weight_sync_wait_s"), "reward": ("perf/reward_s",),
          "update": ("perf/update_s",), "weight_sync": ("perf/weight_sync_s",)}
DATA = Path(__file__).resolve().parents[2] / "tests/jobs/data/arith_small.jsonl"


def job_overrides(args: argparse.Namespace, model_path: str, output_dir: Path, mode: str, workers: int) -> list[str]:
    return [f"run.name=pipeline-{mode}-{workers}w", f"run.output_dir={output_dir}", f"run.mode={mode}",
            f"run.steps={args.steps + 1}", f"run.prompts_per_step={args.prompts}", f"data.train={args.data}",
            f"model.path={model_path}", f"rollout.num_workers={workers}",
            f"rollout.sampler.gen_length={args.gen_length}", f"rollout.sampler.steps={args.sampler_steps}",
            f"rollout.sampler.block_length={args.gen_length // 2}", "rollout.sampler.temperature=0.9",
            f"algo.group_size={args.group_size}", "algo.mu=2", "learner.num_ranks=2", "learner.zero_stage=2",
            "learner.micro_batch_size=4", "learner.lr=1.0e-4", "checkpoint.every=0", "checkpoint.resume=never",
            "logging.tensorboard=false", "logging.sample_table_every=0", f"cluster.num_cpus={2 + max(args.workers)}"]


def summarize(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean phase seconds and shares over the measured steps (every step after the first)."""
    measured = [m for m in metrics if m["step"] > 1]
    if not measured:
        raise ValueError("no measured step: run at least 2 steps (the first is the warm-up)")
    step_s = statistics.mean(m["perf/step_s"] for m in measured)
    phases = {name: statistics.mean(sum(m.get(key, 0.0) for key in keys) for m in measured)
              for name, keys in PHASES.items()}
    phases["other"] = max(step_s - sum(phases.values()), 0.0)
    wall_s = (measured[-1]["wall_time"] - metrics[0]["wall_time"]) / len(measured)
    return {"steps": len(measured), "step_s": step_s, "phase_s": phases,
            "phase_share": {name: seconds / step_s for name, seconds in phases.items()},
            "weight_sync_frac": statistics.mean(m["perf/weight_sync_s"] / m["perf/step_s"] for m in measured),
            "wall_s_per_step": wall_s, "steps_per_s": 1.0 / wall_s}


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (f"{'mode':>5} {'workers':>7} {'step s':>7} {'steps/s':>7} | {'rollout':>7} {'reward':>7} "
              f"{'update':>7} {'sync':>7} {'other':>7} | {'sync/step':>9}")
    print(header)
    print("-" * len(header))
    for row in rows:
        share = row["phase_share"]
        print(f"{row['mode']:>5} {row['workers']:>7} {row['step_s']:>7.3f} {row['steps_per_s']:>7.2f} | "
              + " ".join(f"{100 * share[p]:>6.1f}%" for p in ("rollout", "reward", "update", "weight_sync", "other"))
              + f" | {100 * row['weight_sync_frac']:>8.2f}%", flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.bench pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="measured steps per run (plus one warm-up step)")
    parser.add_argument("--modes", default="sync,async", help="comma-separated run.mode values")
    parser.add_argument("--workers", default="1,2", help="comma-separated rollout worker counts")
    parser.add_argument("--size", choices=sorted(SIZES), default="small", help="policy size")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step")
    parser.add_argument("--group-size", type=int, default=4, help="samples per prompt")
    parser.add_argument("--gen-length", type=int, default=32, help="response tokens (two blocks)")
    parser.add_argument("--sampler-steps", type=int, default=16, help="denoising steps per response")
    parser.add_argument("--data", default=str(DATA), help="prompt file")
    parser.add_argument("--output-dir", default=None, help="keep the runs here (default: a temporary directory)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if bad := [m for m in modes if m not in ("sync", "async")]:
        parser.error(f"--modes: unknown {bad}; valid: sync, async")
    try:
        args.workers = [int(w) for w in args.workers.split(",") if w]
    except ValueError:
        parser.error(f"--workers: {args.workers!r} is not a comma-separated list of integers")
    if args.steps < 1 or not args.workers or min(args.workers) < 1:
        parser.error("--steps and every --workers value must be at least 1")

    import ray

    from actors.cluster import init_ray
    from jobs.config import load_config
    from jobs.train import train

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as scratch:
        output_dir = Path(args.output_dir or scratch)
        model_path = "tiny"
        if SIZES[args.size] is not None:
            from model import save
            from model.tiny import tiny_model

            model_path = str(save(tiny_model(0, **SIZES[args.size]), Path(scratch) / f"policy-{args.size}"))
        plan = [(mode, workers) for mode in modes for workers in args.workers]
        started_ray = not ray.is_initialized()
        init_ray(load_config(None, job_overrides(args, model_path, output_dir, *plan[0])).cluster)
        rows = []
        try:
            for mode, workers in plan:
                cfg = load_config(None, job_overrides(args, model_path, output_dir, mode, workers))
                began = time.perf_counter()
                summary = train(cfg)
                lines = Path(summary["run_dir"], "metrics.jsonl").read_text().splitlines()
                row = {"mode": mode, "workers": workers, **summarize([json.loads(line) for line in lines]),
                       "run_s": time.perf_counter() - began}
                rows.append(row)
                print(f"{mode} × {workers} worker(s): {row['steps']} measured steps, run {row['run_s']:.1f} s",
                      file=sys.stderr, flush=True)
        finally:
            if started_ray:
                ray.shutdown()
    print(f"policy {args.size}, {args.prompts} prompts × {args.group_size} samples per step, "
          f"{args.gen_length} tokens in {args.sampler_steps} steps, 2 learner ranks (ZeRO-2); "
          f"mean over {args.steps} steps after 1 warm-up step; shares of perf/step_s")
    print_table(rows)
    if args.out:
        setup = {k: v for k, v in vars(args).items() if k != "out"}
        Path(args.out).write_text(json.dumps({"setup": setup, "runs": rows}, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
