"""Generation at cluster scale: sample N responses per prompt of a file on K Ray rollout workers.

    python -m jobs.rollout --model PATH|demo|tiny --prompts FILE.jsonl|.parquet --out DIR --workers K \\
        --samples-per-prompt N [--gen-length L --steps S --block-length B --temperature T ...] \\
        [--format jsonl|parquet] [--shard-size S] [--seed SEED] [--score TERM ...] [--address auto]

1. The prompt file is read with `jobs.data.PromptDataset` (task `text` for rows without one). Bad rows are
   reported with file and row and skipped; so are rows this job cannot sample: a task other than `text`,
   an image, a prompt that does not fit the model with `--gen-length` tokens after it.
2. Prompts (chat template, thinking instruction unless `--no-thinking`) are cut, in file order, into
   shards of `--shard-size` prompts: shard k holds prompts [kS, (k+1)S), a pure function of the file and S.
3. Shards go to K `RolloutWorker` actors (at most one shard each at a time). Rows of a shard are
   (prompt, sample_index) in order, sampled in calls of at most `--batch-size` rows; call j of shard k is
   seeded with `shard_seed(seed, k, j)`, and the sampler seeds row r of a call from (that seed, r)
   (`model.sampling.row_seed`), so rerunning a shard reproduces it exactly. A shard whose worker died goes
   to a fresh worker (`--max-attempts` tries in all); any other error in a shard stops the run.
4. A finished shard (scored first with `--score`, through `actors.rewards.RewardRouter`) is written to
   `DIR/shards/shard-00042.jsonl|.parquet` atomically: into a hidden temporary file, then renamed. A shard
   file exists only complete; temporary files left by a killed run are deleted on the next start.
5. `DIR/manifest.json` records the arguments that shape the output and a fingerprint of the prompts; a
   rerun with the same ones does only the missing shards, a rerun with others refuses (naming them).
6. At the end the shards are concatenated in shard order into `DIR/rollouts.jsonl|.parquet`, and
   throughput (prompts/s, tokens/s) goes to stdout and `DIR/summary.json`. It is measured from the first
   shard sent to the last one written (scoring and writing included, actor start-up excluded); tokens/s
   counts all `--gen-length` positions of a row (the sampler reveals every one), response_tokens_per_s
   only those through the first EOS.

One output row per (uid, sample_index): uid, sample_index, task, prompt (the user text), answer, prompt_ids
(chat prompt), response (decoded up to the first EOS / end-of-turn), response_ids and reveal_step (all
`--gen-length` positions), response_length (tokens through the first EOS, inclusive), policy_version,
seed and seed_row (the sampler call's seed and the row's index in that call), shard; with `--score` also
reward (weighted total, null when unscorable), rewards and reward_reasons (per term). Other dataset
columns are not copied: join on uid.

This module reads as those phases; the plan (steps 1, 2, 5) is `jobs.rollout_plan`, running and writing the
shards (steps 3, 4, 6) is `jobs.rollout_shards`.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from jobs.rollout_plan import Plan, RolloutJobError, Shard, make_manifest, make_plan, shard_calls
from jobs.rollout_shards import (
    ShardScheduler,
    check_score_terms,
    merge,
    prepare_out_dir,
    rewards_config,
    sampler_submit,
    shard_path,
    shard_rows,
    start_one_worker,
    start_rollout_workers,
    write_rows,
)
from model.atomic_write import write_atomic

SUMMARY = "summary.json"


# ---------------------------------------------------------------------------------------------- parse
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    from jobs.sampler_flags import ROLLOUT_DEFAULTS, add_sampler_flags, sampler_knobs
    from model.sampling import check_schedule

    parser = argparse.ArgumentParser(prog="python -m jobs.rollout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint directory, 'demo' (the shipped policy), or 'tiny' / 'tiny-mmada' (a random tiny twin)")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16"], help="weight dtype (default: as stored)")
    parser.add_argument("--prompts", required=True, help="prompt file (.jsonl or .parquet)")
    parser.add_argument("--out", required=True, help="output directory (rerun into it to resume)")
    parser.add_argument("--workers", type=int, default=1, help="rollout worker actors")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, help="Ray CPUs per worker")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per worker (0: CPU)")
    parser.add_argument("--address", default=None, help="Ray cluster to join ('auto' or host:port); default: "
                                                        "start a local Ray")
    parser.add_argument("--samples-per-prompt", type=int, default=1, help="responses per prompt (N)")
    parser.add_argument("--shard-size", type=int, default=64, help="prompts per shard (S)")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per sampler call within a shard")
    parser.add_argument("--max-attempts", type=int, default=3, help="tries per shard when its worker dies")
    parser.add_argument("--no-thinking", dest="thinking", action="store_false",
                        help="leave out the <think> instruction from the chat prompt")
    add_sampler_flags(parser, ROLLOUT_DEFAULTS)
    parser.add_argument("--seed", type=int, default=0, help="run seed; shard seeds derive from (seed, shard)")
    parser.add_argument("--format", default="jsonl", choices=["jsonl", "parquet"], help="output file format")
    parser.add_argument("--score", nargs="+", default=[], metavar="TERM",
                        help="reward terms to score each response with (correctness, format, a plugin ...)")
    parser.add_argument("--reward-cpus", type=float, default=1.0, help="Ray CPUs per reward actor")
    args = parser.parse_args(list(argv))
    for flag in ("workers", "samples_per_prompt", "shard_size", "batch_size", "max_attempts"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')}: {getattr(args, flag)}; need at least 1")
    if args.cpus_per_worker <= 0 and args.gpus_per_worker <= 0:
        parser.error("--cpus-per-worker and --gpus-per-worker are both 0; a worker must reserve something")
    try:
        check_schedule(**sampler_knobs(args))
    except ValueError as exc:
        parser.error(f"sampler settings: {exc}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from actors.cluster import ResourceError

    try:
        return run(args)
    except (RolloutJobError, ResourceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------------------------------- phases
def run(args: argparse.Namespace) -> int:
    """Plan, resume from DIR, generate the missing shards, then merge them and write the summary."""
    out = Path(args.out)
    plan = make_plan(args)
    manifest = make_manifest(args, plan)
    if args.score:
        check_score_terms(args.score)
    pending = prepare_out_dir(out, manifest, plan, args)
    stats = {"shards": len(plan.shards), "shards_complete_before": len(plan.shards) - len(pending),
             "shards_generated": [], "rows_generated": 0, "worker_restarts": 0, "bad_rows": plan.bad_rows}
    if pending:
        stats.update(generate(args, plan, pending, out))
    target = merge(out, plan.shards, args.format, args.score)
    summary = json.dumps(stats, indent=2) + "\n"
    write_atomic(out / SUMMARY, summary)
    print(f"{len(plan.shards)} shard(s), {len(pending)} generated now; "
          f"{stats.get('prompts_per_s', 0.0):.2f} prompts/s, {stats.get('tokens_per_s', 0.0):.1f} tokens/s; "
          f"wrote {target}")
    return 0


def generate(args: argparse.Namespace, plan: Plan, pending: list[Shard], out: Path) -> dict[str, Any]:
    """Start Ray and the actors, run the pending shards, write each as it finishes; returns throughput stats."""
    import ray

    from actors.cluster import init_ray
    from actors.config import ClusterConfig
    from actors.rewards import RewardActorsConfig, RewardRouter

    workers_needed = min(args.workers, len(pending))
    reward_cfg = rewards_config(args.score) if args.score else None
    actors_cfg = RewardActorsConfig(cpus_per_actor=args.reward_cpus)
    started_ray = not ray.is_initialized()
    init_ray(ClusterConfig(address=args.address, num_gpus=0 if args.gpus_per_worker == 0 else None),
             ray_roles(args, workers_needed, reward_cfg, actors_cfg))
    router, scheduler = None, None
    try:
        scheduler = ShardScheduler(start_rollout_workers(args, plan.network_source, workers_needed),
                                   functools.partial(start_one_worker, args, plan.network_source),
                                   max_attempts=args.max_attempts)
        check_workers_built_the_model(args, scheduler.workers)
        router = RewardRouter(reward_cfg, actors_cfg) if reward_cfg is not None else None
        stats = write_shards(args, plan, pending, out, scheduler, router)
        if router is not None:
            stats.update(router.health_metrics())
        return stats
    finally:
        if router is not None:
            router.close()
        for worker in scheduler.workers if scheduler is not None else []:
            ray.kill(worker)
        if started_ray:
            ray.shutdown()


def ray_roles(args: argparse.Namespace, workers: int, reward_cfg: Any, actors_cfg: Any) -> list[Any]:
    """The actors init_ray must find room for, each named by the flags that size it (for its error message)."""
    from actors.cluster import RoleResources
    from actors.rewards import reward_roles

    roles = [RoleResources("rollout worker", workers, args.cpus_per_worker, args.gpus_per_worker,
                           "--workers", "--cpus-per-worker", "--gpus-per-worker")]
    if reward_cfg is not None:
        roles += [replace(role, count_key="--score", cpus_key="--reward-cpus", gpus_key="--reward-cpus")
                  for role in reward_roles(reward_cfg, actors_cfg, has_gpus=False)]
    return roles


def check_workers_built_the_model(args: argparse.Namespace, workers: list[Any]) -> None:
    """A model that cannot load fails here, once, rather than as every shard's error."""
    import ray

    try:
        ray.get([w.version.remote() for w in workers])
    except ray.exceptions.RayError as exc:
        raise RolloutJobError(f"--model {args.model}: the rollout workers could not build it: "
                              f"{str(exc).strip().splitlines()[-1]}") from exc


def write_shards(args: argparse.Namespace, plan: Plan, pending: list[Shard], out: Path,
                 scheduler: ShardScheduler, router: Any) -> dict[str, Any]:
    """Run the pending shards on the scheduler's workers, score and write each as it finishes; its stats."""
    from tqdm import tqdm

    generated, rows_done, response_tokens = [], 0, 0
    started = time.perf_counter()
    with tqdm(total=len(plan.shards), initial=len(plan.shards) - len(pending), unit="shard",
              desc="rollout") as progress:
        for shard, batches in scheduler.run(pending, sampler_submit(args)):
            rows = shard_rows(shard, shard_calls(shard, args), batches, router)  # scored first with a router
            write_rows(shard_path(out, shard.index, args.format), rows, args.format, args.score)
            generated.append(shard.index)
            rows_done += len(rows)
            response_tokens += sum(row["response_length"] for row in rows)
            progress.update(1)
            progress.set_postfix(rows_per_s=f"{rows_done / (time.perf_counter() - started):.1f}")
    seconds = time.perf_counter() - started
    prompts_done = sum(len(plan.shards[i].prompts) for i in generated)
    return {"shards_generated": sorted(generated), "rows_generated": rows_done, "seconds": seconds,
            "prompts_per_s": prompts_done / seconds, "tokens_per_s": rows_done * args.gen_length / seconds,
            "response_tokens_per_s": response_tokens / seconds, "worker_restarts": scheduler.restarts}


if __name__ == "__main__":
    sys.exit(main())
