"""Generation at cluster scale: sample N responses per prompt of a file on K Ray rollout workers, every kind the
training driver samples (text, mmu, t2i), through its request path, resumable by shard. It reads the config tree
of `python -m jobs.train`; what only this job has is the `generate` section.

    python -m jobs.rollout --out DIR                      # the demo config: its policy on its training prompts
    python -m jobs.rollout --config runs/demo/config.yaml --model runs/demo/export --prompts FILE.jsonl \\
        --out DIR --workers 4 --samples-per-prompt 8 --set generate.score=true --set rollout.sampler.cache=dual

Deviations from training's sampling: none in what a request is and how it is sampled; the seeds are the job's
own (per shard and call, not per step), the workers hold `model.path` at `eval.dtype` (training's hold the
learner's weights at `learner.dtype`), and the rows stay in the job's order. The plan is `jobs.rollout_plan`,
running and writing the shards is `jobs.rollout_shards`.

Config keys and flags, the steps of a run, and the output columns: docs/cluster.md §7.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from jobs.config import ConfigError, TrainConfig, add_alias, job_main, job_parser
from jobs.data import DataError
from jobs.rollout_plan import Plan, RolloutJobError, Shard, make_manifest, make_plan, shard_calls
from jobs.rollout_shards import (
    ShardScheduler,
    await_ready,
    merge,
    prepare_out_dir,
    sampler_submit,
    score_terms,
    shard_rows,
    start_worker,
    write_shard,
)
from model.atomic_write import write_atomic
from model.resolve import ModelSpecError

SUMMARY = "summary.json"


def parser():
    """The tree's --config / --set / --print-config, and the short flags of the docstring."""
    result = job_parser("python -m jobs.rollout", __doc__)
    add_alias(result, "--model", "model.path", text=True)
    add_alias(result, "--prompts", "generate.prompts", text=True)
    add_alias(result, "--out", "generate.out", text=True)
    add_alias(result, "--workers", "rollout.num_workers")
    add_alias(result, "--samples-per-prompt", "generate.samples_per_prompt")
    return result


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return job_main(parser(), argv, run, errors=(RolloutJobError, DataError, ModelSpecError))


# ---------------------------------------------------------------------------------------------- phases
def run(cfg: TrainConfig) -> int:
    """Plan, resume from DIR, generate the missing shards, then merge them and write the summary."""
    if not cfg.generate.out:
        raise ConfigError(["generate.out: not set; give the output directory (--out DIR; rerun into it to resume)"])
    out = Path(cfg.generate.out)
    plan = make_plan(cfg)
    pending = prepare_out_dir(out, make_manifest(cfg, plan), plan, cfg)
    stats = {"shards": len(plan.shards), "shards_complete_before": len(plan.shards) - len(pending),
             "shards_generated": [], "rows_generated": 0, "worker_restarts": 0, "worker_timeouts": 0,
             "bad_rows": plan.bad_rows}
    if pending:
        stats.update(generate(cfg, plan, pending, out))
    target = merge(out, plan.shards, cfg.generate.format, score_terms(cfg, plan.tasks))
    write_atomic(out / SUMMARY, json.dumps(stats, indent=2) + "\n")
    print(f"{len(plan.shards)} shard(s), {len(pending)} generated now; "
          f"{stats.get('prompts_per_s', 0.0):.2f} prompts/s, {stats.get('tokens_per_s', 0.0):.1f} tokens/s; "
          f"wrote {target}")
    return 0


def generate(cfg: TrainConfig, plan: Plan, pending: list[Shard], out: Path) -> dict[str, Any]:
    """Start Ray and the actors, run the pending shards, write each as it finishes; returns throughput stats."""
    import ray

    from actors.cluster import ResourceError, init_ray, rollout_role
    from actors.group import ActorGroup
    from jobs.multitask import reward_actor_roles, reward_scorer

    rollout = dataclasses.replace(cfg.rollout, num_workers=min(cfg.rollout.num_workers, len(pending)))
    with contextlib.ExitStack() as cleanup:
        if not ray.is_initialized():
            cleanup.callback(ray.shutdown)  # the Ray this job starts or joins
        try:
            init_ray(cfg.cluster, [rollout_role(rollout)]
                     + (reward_actor_roles(cfg, plan.tasks) if cfg.generate.score else []))
        except ResourceError as exc:
            raise RolloutJobError(str(exc)) from exc
        group = ActorGroup("rollout worker", rollout.num_workers,
                           functools.partial(start_worker, rollout, plan.network_source, cfg.eval.dtype))
        cleanup.callback(group.shutdown)
        await_ready(list(group), cfg)
        scorer = reward_scorer(cfg, plan.tasks) if cfg.generate.score else None
        if scorer is not None:
            cleanup.callback(scorer.close)
        scheduler = ShardScheduler(group, timeout_s=cfg.rollout.sample_timeout_s, max_attempts=cfg.generate.max_attempts,
                                   ready=functools.partial(await_ready, cfg=cfg))
        stats = write_shards(cfg, plan, pending, out, scheduler, scorer)
        stats.update(scorer.health_metrics() if hasattr(scorer, "health_metrics") else {})
        return stats


def write_shards(cfg: TrainConfig, plan: Plan, pending: list[Shard], out: Path, scheduler: ShardScheduler,
                 scorer: Any) -> dict[str, Any]:
    """Run the pending shards on the scheduler's workers, score and write each as it finishes; its stats."""
    from tqdm import tqdm

    from jobs.multitask import image_loader

    load_image = image_loader(cache_size=2 * cfg.generate.shard_size)
    terms = score_terms(cfg, plan.tasks)
    generated, rows_done, tokens, response_tokens = [], 0, 0, 0
    started = time.perf_counter()
    with tqdm(total=len(plan.shards), initial=len(plan.shards) - len(pending), unit="shard",
              desc="rollout") as progress:
        for shard, batches in scheduler.run(pending, sampler_submit(cfg, plan, load_image)):
            calls = shard_calls(shard, cfg, plan.tokenizer, load_image)
            rows, images = shard_rows(shard, calls, batches, cfg, scorer)  # scored first with a scorer
            write_shard(out, shard.index, rows, images, cfg.generate.format, terms)
            generated.append(shard.index)
            rows_done += len(rows)
            tokens += sum(len(row["response_ids"]) for row in rows)
            response_tokens += sum(row["response_length"] for row in rows)
            progress.update(1)
            progress.set_postfix(rows_per_s=f"{rows_done / (time.perf_counter() - started):.1f}")
    seconds = time.perf_counter() - started
    prompts_done = sum(len(plan.shards[i].records) for i in generated)
    return {"shards_generated": sorted(generated), "rows_generated": rows_done, "seconds": seconds,
            "prompts_per_s": prompts_done / seconds, "tokens_per_s": tokens / seconds,
            "response_tokens_per_s": response_tokens / seconds, "worker_restarts": scheduler.group.restarts,
            "worker_timeouts": scheduler.failures["timeout"]}


if __name__ == "__main__":
    sys.exit(main())
