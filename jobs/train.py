"""UniGRPO training driver: config -> actors -> (rollout -> reward -> advantage -> update -> sync) x steps.

    python -m jobs.train --config jobs/configs/demo.yaml [--set algo.mu=4 --set learner.num_ranks=2]
    ray job submit --working-dir . -- python -m jobs.train --config jobs/configs/X.yaml

One step (docs/algorithm.md §2):
1. draw `run.prompts_per_step` prompts; every prompt is sampled `algo.group_size` times by the rollout
   workers, which hold π_old at `policy_version` v. A batch may mix text, image-understanding and
   text-to-image prompts: each dataset task maps to a sampler kind (jobs/multitask.py, docs/multimodal.md);
2. score every response with its task's reward terms (weights from `rewards`; heavy terms such as `clip`
   and `image_reward` in Ray actors of their own); t2i samples are scored on their generated image,
   understanding samples on their input image;
3. group z-score advantages per prompt uid (unscorable samples: Â = 0, left out of the statistics);
4. the learner ranks (DeepSpeed ZeRO, data parallel) run the UniGRPO update on their shards: μ
   structured-masked copies, old/reference log-probs, μ optimizer steps (rl.update);
5. learner rank 0's weights go to the workers as version v+1; metrics are logged; every
   `checkpoint.every` steps the run is checkpointed atomically.

Where this deviates from a textbook synchronous loop, and why:
- `run.mode: async` samples step s+1 while the learner trains on step s (bounded by
  `run.max_policy_lag`); the update then treats the current policy as π_old for those samples (the
  importance ratio ignores the one-version lag), as asynchronous GRPO implementations do.
- Rewards are weighted per task by the reward service; the batch carries that weighted `total` as its
  reward term, so mixed-task batches need no shared weight table.
- With `algo.advantage.drop_groups_*`, dropped groups leave the batch; the learner then needs the kept
  rows to split evenly over its ranks, which `algo.group_size % learner.num_ranks == 0` guarantees.
- Resume is exact (bit for bit) in sync mode: a checkpoint holds the data cursor from before the next
  step's prompts were drawn, and rollout seeds and masks are pure functions of (run seed, step, ...).
  In async mode the samples of step s+1 in flight at the checkpoint of step s (from π_{s-1}) are not
  saved: a resumed run draws the same prompts again and samples them with π_s.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from jobs.config import CONFIG_DIR, TrainConfig, load_config, write_resolved
from jobs.configtree import ConfigError, commented_yaml, to_dict

log = logging.getLogger("unigrpo.train")
DEFAULT_CONFIG = CONFIG_DIR / "demo.yaml"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.train", description="UniGRPO training on Ray.")
    parser.add_argument("--config", default=None, help=f"YAML config (default: {DEFAULT_CONFIG.relative_to(CONFIG_DIR.parent.parent)})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set algo.mu=4 (repeatable)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config, each key with its doc as a comment, and exit")
    return parser.parse_args(argv)


# -- pieces the loop uses ------------------------------------------------------------------------------
def network_source(cfg: TrainConfig):
    """A checkpoint directory, or a seeded factory of a tiny twin (every process builds the same)."""
    if cfg.model.path in ("tiny", "tiny-mmada"):
        from model.tiny import tiny_mmada_model, tiny_model

        factory = tiny_model if cfg.model.path == "tiny" else tiny_mmada_model
        return functools.partial(factory, seed=cfg.run.seed, **cfg.model.tiny_size)
    return cfg.model.path


def driver_tokenizer_and_config(cfg: TrainConfig):
    """The tokenizer (to build prompts) and the backbone config (to export), without loading weights."""
    from model.checkpoint import CONFIG_NAME, config_from_json
    from model.tokenizer import load_tokenizer

    if cfg.model.path in ("tiny", "tiny-mmada"):
        loaded = network_source(cfg)()
        return loaded.tokenizer, loaded.config
    path = Path(cfg.model.path)
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        raise ConfigError([f"model.path: {cfg.model.path!r} has no {CONFIG_NAME}; give a checkpoint directory "
                           "in the published format, or 'tiny' / 'tiny-mmada'"])
    return load_tokenizer(path), config_from_json(json.loads(config_file.read_text()), str(config_file))


def score(samples, scorer) -> tuple[dict[str, Any], dict[str, float]]:
    """Reward terms per row (+ the per-task weighted `total`), and the reward metrics (plus the reward
    actors' health counters when the scorer is the Ray router)."""
    scored = scorer.score(samples)
    rewards = {"total": scored.total}
    for term, values in scored.terms.items():  # terms every row has (mixed tasks: some are absent)
        if all(reason != "absent" for reason in scored.reasons[term]):
            rewards[term] = values
    metrics = dict(scored.metrics)
    if hasattr(scorer, "health_metrics"):
        metrics.update(scorer.health_metrics())
    return rewards, metrics


def shard_rows(num_rows: int, num_ranks: int) -> list[list[int]]:
    """Contiguous equal row ranges, one per learner rank (the config guarantees divisibility)."""
    size = num_rows // num_ranks
    return [list(range(r * size, (r + 1) * size)) for r in range(num_ranks)]


def sample_rows(batch, advantages, limit: int) -> list[dict[str, Any]]:
    rows = []
    for row in range(min(limit, batch.num_rows)):
        meta = batch.metadata[row]
        rows.append({"uid": batch.uid[row], "sample": batch.sample_index[row],
                     "task": meta.get("task", batch.task[row]), "prompt": meta.get("prompt"),
                     "response": meta.get("response"), "reward": batch.rewards["total"][row],
                     "advantage": round(float(advantages[row]), 4)})
    return rows


# -- the run ---------------------------------------------------------------------------------------------
def sampler_metrics(metadata: list[dict]) -> dict[str, float]:
    """`rollout/forwards_per_token` (NFE ÷ generated tokens) and `rollout/tokens_per_forward` over the text and
    mmu rows (their metadata carries `sampler_forwards`, `sampler_tokens`); {} for a batch without them.
    With a confidence threshold a rising tokens_per_forward means the policy reveals more tokens per step."""
    rows = [m for m in metadata if "sampler_forwards" in m]
    forwards = sum(m["sampler_forwards"] for m in rows)
    tokens = sum(m["sampler_tokens"] for m in rows)
    if not rows or not forwards:
        return {}
    return {"rollout/forwards_per_token": forwards / tokens, "rollout/tokens_per_forward": tokens / forwards}


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) the training described by `cfg`; returns a summary of the run."""
    import ray
    import torch
    from tqdm import tqdm

    from actors.cluster import (
        create_placement_groups,
        init_ray,
        learner_role,
        remove_placement_groups,
        rollout_role,
    )
    from actors.learner import LearnerGroup, unigrpo_step
    from actors.rollout_pool import RolloutPool
    from jobs.checkpoint import CheckpointManager, capture_rng_state, restore_rng_state
    from jobs.data import PromptDataset, PromptStream
    from jobs.heldout import HeldoutEvaluator, eval_history, should_evaluate
    from jobs.metrics import MetricsLogger
    from jobs.multitask import (
        build_requests,
        check_tasks,
        image_loader,
        image_tasks,
        reward_actor_roles,
        reward_samples,
        reward_scorer,
        t2i_grid,
        task_metrics,
        without_images,
    )
    from jobs.plots import learning_curve
    from rl.advantages import batch_advantages
    from rl.batch import RolloutBatch
    from rl.losses import reduce_stats, summarize_stats

    run_dir = cfg.run.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = write_resolved(cfg, run_dir)
    tokenizer, backbone = driver_tokenizer_and_config(cfg)
    dataset = PromptDataset(cfg.data.train, default_task=cfg.data.default_task, image_tasks=image_tasks(cfg.data))
    for problem in dataset.problems:
        log.warning("skipped %s", problem)
    stream = PromptStream(dataset, seed=cfg.run.seed, shuffle=cfg.data.shuffle)
    records_by_uid = {r.uid: r for r in dataset.records}
    problems = check_tasks(cfg, dataset.records, backbone)  # data tasks vs reward terms, model, image tokenizer
    if problems:
        raise ConfigError(problems, str(cfg.data.train))
    tasks = sorted({r.task for r in dataset.records})
    load_image = image_loader(cache_size=4 * cfg.run.prompts_per_step)  # input images of mmu rows
    roles = [learner_role(cfg.learner), rollout_role(cfg.rollout)]

    with contextlib.ExitStack() as cleanup:  # whatever was started is stopped, in reverse order, on any exit
        if not ray.is_initialized() and cfg.cluster.address is None and not _ray_was_external():
            cleanup.callback(ray.shutdown)  # the local Ray this run starts (a no-op if it never starts)
        # an impossible resource request fails here, before any actor exists (reward actors included)
        init_ray(cfg.cluster, roles + reward_actor_roles(cfg, tasks))
        scorer = reward_scorer(cfg, tasks)  # heavy terms (clip, image_reward): Ray actors; else in-process
        cleanup.callback(scorer.close)
        groups = create_placement_groups(roles, cfg.cluster)
        cleanup.callback(remove_placement_groups, groups)
        source = network_source(cfg)
        learners = LearnerGroup(cfg.learner, source, total_steps=cfg.run.steps,
                                placement_group=groups.get("learner"))
        cleanup.callback(learners.shutdown)
        pool = RolloutPool(cfg.rollout, source, dtype=cfg.learner.dtype, placement_group=groups.get("rollout"),
                           name=cfg.run.name)
        cleanup.callback(pool.shutdown)
        checkpoints = CheckpointManager(run_dir / "checkpoints", cfg.checkpoint)

        start, version = 0, 0
        resumed = checkpoints.resume(learners.load_checkpoint)
        if resumed is not None:
            state = resumed.driver_state
            start, version = state["step"], state["policy_version"]
            stream.load_state_dict(state["data"])
            restore_rng_state(state["rng"])
            if version > 0:
                pool.sync(learners, version)
            log.info("resumed from %s (step %d, policy version %d)", resumed.path, start, version)

        metrics = MetricsLogger(run_dir, cfg.logging, run_name=cfg.run.name, config=to_dict(cfg),
                                resume_step=start if resumed is not None else -1)  # fresh: drop an old run's lines
        cleanup.callback(metrics.close)
        summary: dict[str, Any] = {"run_dir": str(run_dir), "config": str(config_path), "start_step": start}
        # The next step's prompts are drawn (and dispatched) before the current step is checkpointed; the
        # checkpoint keeps the cursor from before that draw, so a resumed run draws those prompts again.
        cursor_before: dict[str, Any] = {}  # {"step": s, "data": cursor before step s's prompts were drawn}
        evaluator = HeldoutEvaluator(cfg, backbone, tokenizer, run_dir) if cfg.data.eval else None
        if evaluator is not None and start == 0:  # the starting policy: the curve's first point
            metrics.log(0, evaluator.evaluate(0, learners.state_dict_for_sync()))

        def dispatch(step: int):
            cursor_before.update(step=step, data=stream.state_dict())
            records = stream.next_batch(cfg.run.prompts_per_step)
            return pool.dispatch(build_requests(records, tokenizer, cfg, load_image), step=step, run_seed=cfg.run.seed)

        def save(step: int) -> None:
            data = cursor_before["data"] if cursor_before.get("step") == step + 1 else stream.state_dict()
            driver_state = {"policy_version": version, "data": data, "rng": capture_rng_state()}
            checkpoints.save(step, driver_state=driver_state, config_text=config_path.read_text(),
                             save_learner=learners.save_checkpoint)

        def export(name: str) -> Path:
            from model.checkpoint import save_state_dict

            return save_state_dict(learners.state_dict_for_sync(), backbone, tokenizer, run_dir / name)

        pending = dispatch(start + 1) if start < cfg.run.steps else None
        progress = tqdm(range(start + 1, cfg.run.steps + 1), initial=start, total=cfg.run.steps, desc="unigrpo",
                        dynamic_ncols=True, disable=None)
        for step in progress:
            step_started = time.perf_counter()
            batches, step_metrics = pool.collect(pending)
            batch = RolloutBatch.concat(batches)
            lag = version - min(batch.policy_version)
            if lag > cfg.run.max_policy_lag:
                raise RuntimeError(f"step {step}: samples at version {min(batch.policy_version)} are {lag} versions "
                                   f"behind the learner ({version}); run.max_policy_lag is {cfg.run.max_policy_lag}")
            pending = None
            if cfg.run.mode == "async" and step < cfg.run.steps:
                pending = dispatch(step + 1)  # sampled with the current weights while the learner trains

            t = time.perf_counter()
            samples = reward_samples(batch, records_by_uid, load_image)
            rewards, reward_metrics = score(samples, scorer)
            batch = dataclasses.replace(batch, rewards=rewards)
            step_metrics.update(reward_metrics)
            step_metrics["perf/reward_s"] = time.perf_counter() - t

            kept, advantages, adv_stats = batch_advantages(batch, cfg.algo.advantage, {"total": 1.0})
            step_metrics.update({f"health/{k}": v for k, v in adv_stats.items()})
            row_tasks = [sample.task for sample in samples]  # dataset task names (the batch holds kinds)
            step_metrics.update(task_metrics(batch, row_tasks, [records_by_uid[u].task for u in kept.uid], advantages))
            if kept.num_rows:
                t = time.perf_counter()
                rows = shard_rows(kept.num_rows, cfg.learner.num_ranks)
                rank_stats = learners.train_step(
                    unigrpo_step, [{"batch": without_images(kept.select(r)), "advantages": advantages[r]} for r in rows],
                    rl_step=step, algo=cfg.algo, step=step, run_seed=cfg.run.seed, num_sequences_global=kept.num_rows)
                stats = summarize_stats(reduce_stats(rank_stats), num_steps=1)
                step_metrics.update({f"loss/{k}": v for k, v in stats.items() if not k.endswith(("_sum", "_count"))})
                step_metrics["perf/update_s"] = time.perf_counter() - t
                version += 1
                step_metrics.update(pool.sync(learners, version))
            if pending is None and step < cfg.run.steps:
                pending = dispatch(step + 1)

            lengths = batch.scored_mask.sum(dim=1).float()  # [B] scored response tokens (through EOS)
            step_metrics.update({
                "rollout/response_tokens_mean": float(lengths.mean()),
                "rollout/response_tokens_max": float(lengths.max()),
                "rollout/tokens_per_s": float(lengths.sum()) / max(step_metrics["perf/rollout_collect_s"], 1e-9),
                "rollout/policy_version": float(version),
                **sampler_metrics(batch.metadata),
                "perf/step_s": time.perf_counter() - step_started,
            })
            if "perf/weight_sync_s" in step_metrics:
                step_metrics["perf/weight_sync_frac"] = step_metrics["perf/weight_sync_s"] / step_metrics["perf/step_s"]
            if evaluator is not None and should_evaluate(step, every=cfg.eval.every, last_step=cfg.run.steps):
                step_metrics.update(evaluator.evaluate(step, learners.state_dict_for_sync()))
            metrics.log(step, step_metrics)
            metrics.log_rollouts(step, [
                {"uid": uid, "sample": index, "task": task, "version": v, "reward": reward}
                for uid, index, task, v, reward in zip(batch.uid, batch.sample_index, row_tasks, batch.policy_version,
                                                       batch.rewards["total"])])
            if metrics.should_log_samples(step):  # the advantages belong to the kept rows (groups may be dropped)
                rows = sample_rows(kept, advantages, cfg.logging.sample_table_rows) if kept.num_rows else \
                    sample_rows(batch, torch.zeros(batch.num_rows), cfg.logging.sample_table_rows)
                metrics.log_samples(step, rows)
                grid_rows, captions = t2i_grid(batch, row_tasks)
                if grid_rows:
                    metrics.log_image_grid(step, grid_rows, captions)
            scored = [r for r in batch.rewards["total"] if r is not None]
            progress.set_postfix(reward=f"{sum(scored) / len(scored):.3f}" if scored else "n/a", v=version)
            if checkpoints.should_save(step, final=step == cfg.run.steps):
                save(step)
            if checkpoints.should_export(step, final=step == cfg.run.steps):
                summary["export"] = str(export("export" if step == cfg.run.steps else f"export_step_{step}"))
        summary.update({"final_step": cfg.run.steps, "policy_version": version,
                        "learner_checksums": learners.checksums(), "worker_checksums": pool.checksums(),
                        "worker_versions": pool.versions(), "worker_restarts": pool.restarts})
    summary["heldout"] = eval_history(run_dir / "metrics.jsonl")
    summary["learning_curve"] = str(learning_curve(run_dir))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _ray_was_external() -> bool:
    """True inside `ray job submit` (the job joins an existing cluster; never shut that down)."""
    import os

    return bool(os.environ.get("RAY_ADDRESS") or os.environ.get("RAY_JOB_ID"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config_file = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    try:
        cfg = load_config(config_file, args.overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.print_config:
        print(commented_yaml(cfg), end="")
        return 0
    from actors.cluster import ResourceError
    from jobs.data import DataError

    try:
        summary = train(cfg)
    except (ConfigError, ResourceError, DataError) as exc:  # a config the cluster or the data cannot satisfy
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(f"run finished: {summary['run_dir']} (policy version {summary.get('policy_version')})")
    if "export" in summary:
        print(f"policy exported to {summary['export']}")
    heldout = summary.get("heldout") or []
    if heldout:
        first, last = heldout[0], heldout[-1]
        print(f"held-out pass@1: {100 * first['eval/pass@1']:.1f}% at step {first['step']} -> "
              f"{100 * last['eval/pass@1']:.1f}% at step {last['step']} ({int(last['eval/problems'])} problems)")
    print(f"learning curve: {summary['learning_curve']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
