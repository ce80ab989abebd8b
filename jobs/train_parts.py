"""The parts of a training run that `jobs/train.py` composes, each a function of what it is given (none
keeps state): the data and the actors a run starts, and the driver's side of one RL step (collect, score,
advantages, update) with the step's metrics and logged rows.

One step (docs/algorithm.md §2): the rollout workers sample every prompt `algo.group_size` times with
π_old at `policy_version` v (a batch may mix text, image-understanding and text-to-image prompts:
jobs/multitask.py); the reward service scores every response with its task's weighted terms (t2i samples
on their generated image, understanding samples on their input image); advantages are group z-scores per
prompt uid (unscorable samples: Â = 0, left out of the statistics); the learner ranks (DeepSpeed ZeRO,
data parallel) run the UniGRPO update on contiguous shards of the kept rows (rl.update); rank 0's weights
then go to the workers as version v+1 (`RolloutPool.sync`, called by the driver).

Rewards are weighted per task by the reward service, which writes them into the batch (its `rewards` per term
and the weighted `total` per row), so mixed-task batches need no shared weight table; the learner ranks get
the kept rows without their text and images (`RolloutBatch.for_learner`). With `algo.advantage.drop_groups_*`, dropped groups
leave the batch; the learner then needs the kept rows to split evenly over its ranks, which
`algo.group_size % learner.num_ranks == 0` guarantees.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from jobs.checkpoint import CONFIG_FILE, PENDING_FILE, CheckpointError, LoadedCheckpoint, restore_rng_state
from jobs.config import TrainConfig
from jobs.configtree import ConfigError
from jobs.data import PromptDataset, PromptStream, check_training_prompts
from jobs.multitask import check_tasks, image_tasks, reward_actor_roles, reward_scorer, task_metrics
from jobs.preflight import log_gpu_plan
from rl.advantages import batch_advantages
from rl.batch import RolloutBatch
from rl.losses import reduce_stats, summarize_stats

log = logging.getLogger("unigrpo.train")


# -- the run's model, data and actors --------------------------------------------------------------------
def policy_parts(cfg: TrainConfig):
    """`model.path` resolved by model/resolve.py: the workers' network source (a checkpoint directory or a
    seeded tiny-twin factory, so every process builds the same weights), the tokenizer (to build prompts)
    and the backbone config (to export), without loading a checkpoint's weights here."""
    from model.resolve import ModelSpecError, model_parts

    try:
        return model_parts(cfg.model.path, key="model.path", seed=cfg.run.seed, size=cfg.model.tiny_size)
    except ModelSpecError as exc:
        raise ConfigError([str(exc)]) from exc


def load_data(cfg: TrainConfig, backbone, tokenizer) -> tuple[PromptStream, list]:
    """The training prompts (bad rows, and prompts the policy cannot take, reported and skipped) and their
    stream; a ConfigError when the data's tasks do not fit the config (reward terms, model, image tokenizer),
    raised before Ray starts."""
    dataset = PromptDataset(cfg.data.train_files, default_task=cfg.data.default_task, fields=cfg.data.fields,
                            image_tasks=image_tasks(cfg.data))
    for problem in dataset.problems:
        log.warning("skipped %s", problem)
    check_training_prompts(dataset, cfg, tokenizer, backbone)  # logs what it skips; before the stream's fingerprint
    stream = PromptStream(dataset, seed=cfg.run.seed, shuffle=cfg.data.shuffle, weights=cfg.data.train_weights)
    problems = check_tasks(cfg, dataset.records, backbone)
    if problems:
        raise ConfigError(problems, ", ".join(cfg.data.train_files))
    return stream, dataset.records


def start_actors(cfg: TrainConfig, tasks: list[str], source, cleanup) -> tuple[Any, Any, Any]:
    """Ray (started here, or the cluster joined), then the judge server (`reward_actors.judge_server`, if set), the
    reward scorer, the `LearnerGroup` and the `RolloutPool` over the network `source`; each is registered on the
    ExitStack `cleanup` to be stopped."""
    import ray  # Ray loads once a run starts, never for --print-config or a config error

    from actors.cluster import (
        create_placement_groups,
        init_ray,
        learner_role,
        remove_placement_groups,
        rollout_role,
    )
    from actors.judge_server import JudgedScorer, judge_server_roles, start_judge_server
    from actors.learner import LearnerGroup
    from actors.rollout_pool import RolloutPool

    log_gpu_plan(cfg)  # on GPUs: the memory plan (docs/gpu.md §Memory planner), before Ray places anything
    roles = [learner_role(cfg.learner), rollout_role(cfg.rollout)]
    if not ray.is_initialized() and cfg.cluster.address is None and not _ray_was_external():
        cleanup.callback(ray.shutdown)  # the local Ray this run starts (a no-op if it never starts)
    started = time.perf_counter()  # progress: a line per start-up phase, on stderr (the log)
    log.info("start-up: Ray (%s)", cfg.cluster.address or os.environ.get("RAY_ADDRESS") or "a local instance")
    # an impossible resource request fails here, before any actor exists (reward actors included)
    init_ray(cfg.cluster, roles + reward_actor_roles(cfg, tasks) + judge_server_roles(cfg.reward_actors))
    judge = start_judge_server(cfg.reward_actors.judge_server, cfg.run.run_dir, cleanup)  # loads while the rest starts
    served = cfg if judge is None else dataclasses.replace(cfg, rewards=judge.serve(cfg.rewards))
    scorer = reward_scorer(served, tasks)  # heavy terms (clip, image_reward): Ray actors; else in-process
    cleanup.callback(scorer.close)
    groups = create_placement_groups(roles, cfg.cluster)
    cleanup.callback(remove_placement_groups, groups)
    log.info("start-up: Ray and reward scorer ready after %.1f s; %d learner rank(s) loading the policy",
             time.perf_counter() - started, cfg.learner.num_ranks)
    learners = LearnerGroup(cfg.learner, source, total_steps=cfg.run.steps, placement_group=groups.get("learner"),
                            checkpoint_timeout_s=cfg.checkpoint.timeout_s)
    cleanup.callback(learners.shutdown)
    log.info("start-up: learner ready after %.1f s; %d rollout worker(s) loading the policy",
             time.perf_counter() - started, cfg.rollout.num_workers)
    pool = RolloutPool(cfg.rollout, source, dtype=cfg.learner.dtype, placement_group=groups.get("rollout"),
                       name=cfg.run.name, lora=cfg.learner.lora)
    cleanup.callback(pool.shutdown)
    log.info("start-up: rollout workers ready after %.1f s", time.perf_counter() - started)
    if judge is not None:  # launched before the learners: its model loaded while theirs did
        judge.ready()
        log.info("start-up: judge server ready after %.1f s at %s", time.perf_counter() - started, judge.url)
        scorer = JudgedScorer(scorer, judge)  # checked before each batch; its restarts in the health metrics
    return scorer, learners, pool


def resume(checkpoints, learners, pool, stream: PromptStream, cfg: TrainConfig) -> tuple[int, int, Any] | None:
    """(step, policy version, the next step's saved samples or None: `saved_pending`) of the checkpoint
    `checkpoint.resume` selects, once the learner weights, the workers (synced to them), the data cursor and
    the RNG are restored from it; None: a fresh run."""
    resumed = checkpoints.resume(learners.load_checkpoint)
    if resumed is None:
        return None
    state = resumed.driver_state
    step, version = state["step"], state["policy_version"]
    pending = saved_pending(resumed, cfg)  # refused if they do not fit: before the workers are synced
    stream.load_state_dict(state["data"])
    restore_rng_state(state["rng"])
    if version > 0:
        pool.sync(learners, version)
    log.info("resumed from %s (step %d, policy version %d%s)", resumed.path, step, version,
             "" if pending is None else f", step {step + 1}'s samples as saved")
    return step, version, pending


# -- the next step's samples in a checkpoint (async mode) ------------------------------------------------
_PENDING_KEYS = ("step", "dispatched_version", "batches")


def pending_payload(step: int, shards: list) -> dict[str, Any]:
    """Step `step`'s delivered shards (`RolloutPool.finish`) as `pending_rollouts.pt` holds them: each batch's
    `RolloutBatch.to_dict` with its images (H x W x 3 uint8 arrays) as uint8 tensors, so that the file loads
    with `torch.load(weights_only=True)`; an array several rows share (an mmu group's input) is saved once."""
    tensors: dict[int, torch.Tensor] = {}  # id(array) -> its tensor

    def as_tensor(image: Any) -> torch.Tensor | None:
        if image is not None and id(image) not in tensors:
            tensors[id(image)] = torch.tensor(image, dtype=torch.uint8)  # [H, W, 3]
        return None if image is None else tensors[id(image)]

    batches = [{**shard.batch.to_dict(), "image": [as_tensor(image) for image in shard.batch.image]}
               for shard in shards]
    return {"step": step, "dispatched_version": shards[0].dispatched_version, "batches": batches}


def saved_pending(loaded: LoadedCheckpoint, cfg: TrainConfig) -> list | None:
    """The next step's samples an async run saved with its checkpoint, as delivered shards
    (`PendingShard.delivered`): the resumed run trains that step on them, as the uninterrupted run did. None
    when the checkpoint has none (sync mode, the last step, or written before they were saved): the step's
    prompts are then drawn from the saved cursor. CheckpointError naming the file when they cannot be read
    or do not fit this run (another step, `run.prompts_per_step`, `algo.group_size`)."""
    from actors.rollout_pool import PendingShard  # imports Ray: loaded once a run starts

    pending_step, payload = loaded.driver_state.get("pending_step"), loaded.pending_rollouts
    if pending_step is None and payload is None:
        return None
    where = loaded.path / PENDING_FILE
    if payload is None:
        raise CheckpointError(f"{loaded.path / 'driver_state.json'} says step {pending_step}'s samples were saved, "
                              f"but the checkpoint lists no {PENDING_FILE}")
    try:
        if sorted(payload) != sorted(_PENDING_KEYS):
            raise ValueError(f"keys {sorted(payload)}, expected {list(_PENDING_KEYS)}")
        arrays: dict[int, Any] = {}  # id(tensor) -> its array: rows that shared one array share it again
        batches = [RolloutBatch.from_dict({**data, "image": [
            None if image is None else arrays.setdefault(id(image), image.numpy()) for image in data["image"]]})
            for data in payload["batches"]]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{where} cannot be read as a step's samples ({type(exc).__name__}: {exc}); was it "
                              "written by another version of this code?") from None
    groups: dict[str, int] = {}  # uid -> its samples (each (uid, sample index) once: collected so)
    for batch in batches:
        for uid in batch.uid:
            groups[uid] = groups.get(uid, 0) + 1
    problems = []
    if not payload["step"] == pending_step == loaded.step + 1:
        problems.append(f"it holds step {payload['step']}'s samples, driver_state.json names step {pending_step}, "
                        f"and the step after this checkpoint is {loaded.step + 1}")
    if len(groups) != cfg.run.prompts_per_step:
        problems.append(f"{len(groups)} prompts, run.prompts_per_step is {cfg.run.prompts_per_step}")
    if set(groups.values()) != {cfg.algo.group_size}:
        problems.append(f"{sorted(set(groups.values()))} samples per prompt, algo.group_size is {cfg.algo.group_size}")
    if problems:
        raise CheckpointError(f"{where} does not fit this run: {'; '.join(problems)}. Resume it with the settings "
                              f"it was written with ({loaded.path / CONFIG_FILE}), or start a fresh run")
    return [PendingShard.delivered(k, batch, payload["dispatched_version"]) for k, batch in enumerate(batches)]


def _ray_was_external() -> bool:
    """True inside `ray job submit` (the job joins an existing cluster; never shut that down)."""
    return bool(os.environ.get("RAY_ADDRESS") or os.environ.get("RAY_JOB_ID"))


# -- one step --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StepResult:
    """What a step leaves for logging: the scored batch (B rows), the kept rows and their advantages
    ([B'] float32), and the step's metrics."""

    batch: Any
    kept: Any
    advantages: Any
    metrics: dict[str, float]


def collect(pool, pending, step: int, version: int, max_policy_lag: int) -> tuple[RolloutBatch, dict]:
    """The step's samples as one batch (rows in shard order) and the rollout metrics; raises when the oldest
    sample is more than `max_policy_lag` versions behind the learner (async mode)."""
    batches, metrics = pool.collect(pending)
    batch = RolloutBatch.concat(batches)
    lag = version - min(batch.policy_version)
    if lag > max_policy_lag:
        raise RuntimeError(f"step {step}: samples at version {min(batch.policy_version)} are {lag} versions "
                           f"behind the learner ({version}); run.max_policy_lag is {max_policy_lag}")
    return batch, metrics


def score(batch: RolloutBatch, scorer) -> tuple[RolloutBatch, dict]:
    """`batch` with its reward columns filled by the scorer (a new batch: every term of the rows' tasks, the
    per-task weighted `total`, and why a value is None), and the reward metrics (with the reward actors'
    health counters when the scorer is the Ray router) and `perf/reward_s`."""
    started = time.perf_counter()
    batch, metrics = scorer.score(batch)
    if hasattr(scorer, "health_metrics"):
        metrics.update(scorer.health_metrics())
    metrics["perf/reward_s"] = time.perf_counter() - started
    return batch, metrics


def compute_advantages(batch: RolloutBatch, cfg: TrainConfig) -> tuple[RolloutBatch, torch.Tensor, dict[str, float]]:
    """The kept rows (`algo.advantage.drop_groups_*` may drop groups), their advantages [B'] float32 (from the
    rows' weighted totals), and the `health/*` and per-task metrics."""
    kept, values, stats = batch_advantages(batch, cfg.algo.advantage)
    metrics = {f"health/{k}": v for k, v in stats.items()}
    metrics.update(task_metrics(batch, kept, values))
    return kept, values, metrics


def shard_rows(num_rows: int, num_ranks: int) -> list[list[int]]:
    """Contiguous equal row ranges, one per learner rank (the config guarantees divisibility)."""
    size = num_rows // num_ranks
    return [list(range(r * size, (r + 1) * size)) for r in range(num_ranks)]


def update(learners, kept: RolloutBatch, advantages: torch.Tensor, cfg: TrainConfig, step: int) -> dict[str, float]:
    """One UniGRPO update of every learner rank on its shard of the kept rows (advantages: [B'] float32), each
    shard without its text and images (`RolloutBatch.for_learner`); returns the `loss/*` metrics reduced over
    the ranks, and `perf/update_s`."""
    from actors.learner import unigrpo_step  # actors import Ray: loaded once a run starts, not by the CLI

    started = time.perf_counter()
    rows = shard_rows(kept.num_rows, cfg.learner.num_ranks)
    rank_stats = learners.train_step(
        unigrpo_step, [{"batch": kept.select(r).for_learner(), "advantages": advantages[r]} for r in rows],
        rl_step=step, algo=cfg.algo, step=step, run_seed=cfg.run.seed, num_sequences_global=kept.num_rows)
    stats = summarize_stats(reduce_stats(rank_stats), num_steps=1)
    metrics = {f"loss/{k}": v for k, v in stats.items() if not k.endswith(("_sum", "_count"))}
    metrics["perf/update_s"] = time.perf_counter() - started
    return metrics


def sampler_metrics(batch: RolloutBatch) -> dict[str, float]:
    """`rollout/forwards_per_token` (NFE ÷ generated tokens) and `rollout/tokens_per_forward` over the text and
    mmu rows (those with `forwards`; their generated tokens are the response span, gen_length); {} for a batch
    without them. With a confidence threshold a rising tokens_per_forward means the policy reveals more
    tokens per step."""
    rows = [row for row, forwards in enumerate(batch.forwards) if forwards is not None]
    widths = (batch.response_end - batch.response_start).tolist()  # [B] generated tokens per row
    forwards = sum(batch.forwards[row] for row in rows)
    tokens = sum(widths[row] for row in rows)
    if not rows or not forwards:
        return {}
    return {"rollout/forwards_per_token": forwards / tokens, "rollout/tokens_per_forward": tokens / forwards}


def rollout_metrics(batch: RolloutBatch, collect_s: float, version: int, step_started: float) -> dict:
    """Response lengths, sampling throughput and sampler metrics of the batch, the policy version after the
    update, and `perf/step_s` (measured here: everything of the step but logging and checkpoints)."""
    lengths = batch.scored_mask.sum(dim=1).float()  # [B] scored response tokens (through EOS)
    return {
        "rollout/response_tokens_mean": float(lengths.mean()),
        "rollout/response_tokens_max": float(lengths.max()),
        "rollout/tokens_per_s": float(lengths.sum()) / max(collect_s, 1e-9),
        "rollout/policy_version": float(version),
        **sampler_metrics(batch),
        "perf/step_s": time.perf_counter() - step_started,
    }


def rollout_rows(result: StepResult, *, text: bool) -> list[dict[str, Any]]:
    """One `rollouts.jsonl` entry per row of the step's batch: what the step consumed (uid, sample index, task,
    policy version, total reward); with `text` (`logging.rollout_text`) also what it takes to read the sample:
    kind, prompt, gold answer, response, rewards of the row's task's terms (and why one is None), the total's
    reason, the advantage the update used (None: its group was dropped) and the reveal order (the sampler step
    that revealed each scored response token; None for t2i rows, whose image slots are no text to read).
    The fields and their size: docs/cluster.md §3."""
    batch = result.batch
    columns = zip(batch.uid, batch.sample_index, batch.task, batch.policy_version, batch.total)
    rows = [{"uid": uid, "sample": index, "task": task, "version": v, "reward": reward}
            for uid, index, task, v, reward in columns]
    if not text:
        return rows
    advantages = dict(zip(zip(result.kept.uid, result.kept.sample_index), result.advantages.tolist()))  # [B'] by key
    for row, entry in enumerate(rows):
        terms = [t for t in batch.rewards if batch.reward_reasons[t][row] != "absent"]  # the row's task's terms
        reveal = batch.reveal_step[row][batch.scored_mask[row]]  # [n] sampler step of each scored token
        entry.update({
            "kind": batch.kind[row], "prompt": batch.prompt[row], "answer": batch.answer[row],
            "response": batch.response[row], "rewards": {t: batch.rewards[t][row] for t in terms},
            "reasons": {t: batch.reward_reasons[t][row] for t in terms if batch.reward_reasons[t][row] is not None},
            "total_reason": batch.total_reason[row], "advantage": advantages.get((entry["uid"], entry["sample"])),
            "reveal": None if batch.kind[row] == "t2i" else reveal.tolist()})
    return rows


def sample_rows(batch: RolloutBatch, kept: RolloutBatch, advantages: torch.Tensor, limit: int) -> list[dict]:
    """The first `limit` rows of the sample table: of the kept rows, which the advantages [B'] belong to
    (groups may be dropped), or of the whole batch with Â = 0 when no row was kept."""
    if not kept.num_rows:
        kept, advantages = batch, torch.zeros(batch.num_rows)
    rows = []
    for row in range(min(limit, kept.num_rows)):
        rows.append({"uid": kept.uid[row], "sample": kept.sample_index[row], "task": kept.task[row],
                     "prompt": kept.prompt[row], "response": kept.response[row], "reward": kept.total[row],
                     "advantage": round(float(advantages[row]), 4)})
    return rows


def mean_reward(batch: RolloutBatch) -> str:
    """The mean total reward of the scorable rows, for the progress bar ("n/a" when none is)."""
    scored = [r for r in batch.total if r is not None]
    return f"{sum(scored) / len(scored):.3f}" if scored else "n/a"


def lost_actor_message(exc: BaseException, checkpoints) -> str:
    """What jobs.train prints when an actor it cannot replace (a learner rank) hung or died: nothing can be saved
    then, so the message names the last complete checkpoint to resume from (docs/reliability.md §14)."""
    latest = checkpoints.latest_complete()
    resume = (f"the last complete checkpoint is {latest}: rerun with checkpoint.resume=auto (the default) to "
              "resume from it" if latest is not None else "no checkpoint was completed: a rerun starts from step 0")
    return (f"aborted: {exc}\nnothing was saved (the step cannot be finished, and a hung learner rank cannot be "
            f"checkpointed: its share of the state lives only in its process); {resume}")


def run_summary(run, state) -> dict[str, Any]:
    """What a finished run reports of itself and its actors (their weights' checksums: workers equal the learner)."""
    return {"run_dir": str(run.cfg.run.run_dir), "config": str(run.config_path), "start_step": state.start,
            **({"export": state.export} if state.export else {}), "final_step": run.cfg.run.steps,
            "policy_version": state.version, "learner_checksums": run.learners.checksums(),
            "worker_checksums": run.pool.checksums(), "worker_versions": run.pool.versions(),
            "worker_restarts": run.pool.restarts}


def write_summary(run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """`summary` with the held-out history and the learning curve, written to `<run dir>/summary.json`."""
    from jobs.heldout import eval_history
    from jobs.plots import learning_curve

    summary = {**summary, "heldout": eval_history(run_dir / "metrics.jsonl"),
               "learning_curve": str(learning_curve(run_dir))}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    """What `python -m jobs.train` prints when a run finishes: run directory, export, held-out pass@1, curve."""
    print(f"run finished: {summary['run_dir']} (policy version {summary.get('policy_version')})")
    if "export" in summary:
        print(f"policy exported to {summary['export']}")
    heldout = summary.get("heldout") or []
    if heldout:
        first, last = heldout[0], heldout[-1]
        print(f"held-out pass@1: {100 * first['eval/pass@1']:.1f}% at step {first['step']} -> "
              f"{100 * last['eval/pass@1']:.1f}% at step {last['step']} ({int(last['eval/problems'])} problems)")
    print(f"learning curve: {summary['learning_curve']}")
