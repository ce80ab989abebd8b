"""UniGRPO training driver: config -> actors -> (collect -> score -> advantages -> update -> sync) x steps.

    python -m jobs.train --config jobs/configs/demo.yaml [--set algo.mu=4 --set learner.num_ranks=2]
    ray job submit --working-dir . -- python -m jobs.train --config jobs/configs/X.yaml

The recipe: `setup` builds the run's parts (`Run`), then `rl_step`, `log_step`, `save` per step; what changes
between steps is one explicit `RunState`. The parts themselves are in jobs/train_parts.py, the maths in rl/.

Where this deviates from a textbook synchronous loop, and why:
- `run.mode: async` samples step s+1 while the learner trains on step s (bounded by
  `run.max_policy_lag`); the update then treats the current policy as π_old for those samples (the
  importance ratio ignores the one-version lag), as asynchronous GRPO implementations do.
- Resume is exact (bit for bit) in both modes, although step s+1's prompts are drawn before step s is
  checkpointed: a sync checkpoint keeps the cursor from before that draw (seeds are pure functions of run seed,
  step, ...), an async one saves step s+1's samples, made by π_{s-1} (docs/architecture.md §5).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from jobs.checkpoint import CheckpointError, CheckpointManager, capture_rng_state
from jobs.config import DEFAULT_CONFIG, TrainConfig, job_parser, load_config, write_resolved
from jobs.configtree import ConfigError, to_dict
from jobs.data import DataError, PromptStream
from jobs.heldout import HeldoutEvaluator, check_placement, should_evaluate
from jobs.metrics import MetricsLogger
from jobs.multitask import build_requests, image_loader, t2i_grid
from jobs.preflight import preflight, with_dry_run
from jobs.stop_signal import Stopped, StopSignal
from jobs.train_parts import (
    StepResult,
    collect,
    compute_advantages,
    load_data,
    lost_actor_message,
    mean_reward,
    pending_payload,
    policy_parts,
    print_summary,
    resume,
    rollout_metrics,
    rollout_rows,
    run_summary,
    sample_rows,
    score,
    start_actors,
    update,
    write_summary,
)


@dataclasses.dataclass(frozen=True)
class Run:
    """The run's parts, built once by `setup`; handles of the actors, not their state."""

    cfg: TrainConfig
    config_path: Path                # <run dir>/config.yaml, the resolved tree (copied into every checkpoint)
    tokenizer: Any                   # builds the prompts
    backbone: Any                    # the backbone config: exports, held-out evaluation
    stream: PromptStream             # the data order; its cursor is checkpointed
    load_image: Any                  # path -> HxWx3 uint8 array (LRU-cached): the input images of mmu requests
    scorer: Any                      # RewardService in the driver, or the RewardRouter over reward actors
    learners: Any                    # LearnerGroup
    pool: Any                        # RolloutPool
    checkpoints: CheckpointManager
    metrics: MetricsLogger
    evaluator: HeldoutEvaluator | None  # None without data.eval


@dataclasses.dataclass
class RunState:
    """What changes from step to step, besides the stream's cursor; owned by `train`, passed to each phase."""

    start: int = 0                   # the last step done before this process started (0: a fresh run)
    version: int = 0                 # the learner's policy version: +1 per update, the workers' after a sync
    pending: Any = None              # list[PendingShard]: the next step's prompts being sampled, or None
    # The cursor before the pending step's draw: a sync-mode checkpoint keeps it, so a resumed run draws
    # those prompts again (an async one saves their samples instead: `save`).
    cursor_before: dict[str, Any] | None = None
    export: str | None = None        # the latest policy export


def setup(cfg: TrainConfig, cleanup: contextlib.ExitStack) -> tuple[Run, RunState]:
    """Config → data → cluster and actors → resume state → logs. Data and task problems are raised before
    Ray starts; whatever starts is stopped by `cleanup`, in reverse order."""
    check_placement(cfg)  # eval.where vs eval.dtype: a ConfigError before anything is written
    run_dir = cfg.run.run_dir
    checkpoints = CheckpointManager(run_dir / "checkpoints", cfg.checkpoint)
    checkpoints.preflight()  # another run's checkpoints here: refused before anything is written or started
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = write_resolved(cfg, run_dir)
    policy = policy_parts(cfg)
    stream, records = load_data(cfg, policy.config, policy.tokenizer)
    evaluator = HeldoutEvaluator(cfg, policy.config, policy.tokenizer, run_dir) if cfg.data.eval else None  # reads data.eval
    load_image = image_loader(cache_size=4 * cfg.run.prompts_per_step)
    scorer, learners, pool = start_actors(cfg, sorted({r.task for r in records}), policy.source, cleanup)
    resumed = resume(checkpoints, learners, pool, stream, cfg)  # (step, version, pending), or None: a fresh run
    state = RunState() if resumed is None else RunState(*resumed)
    metrics = MetricsLogger(run_dir, cfg.logging, run_name=cfg.run.name, config=to_dict(cfg), run_id=checkpoints.run_id,
                            resume_step=state.start if resumed is not None else -1)  # fresh: drop an old run's lines
    cleanup.callback(metrics.close)
    return Run(cfg, config_path, policy.tokenizer, policy.config, stream, load_image, scorer,
               learners, pool, checkpoints, metrics, evaluator), state


def dispatch(run: Run, state: RunState, step: int) -> None:
    """Draw step `step`'s prompts and start sampling them; keeps the cursor from before the draw (checkpoints)."""
    state.cursor_before = run.stream.state_dict()
    records = run.stream.next_batch(run.cfg.run.prompts_per_step)
    requests = build_requests(records, run.tokenizer, run.cfg, run.load_image, samples=run.cfg.algo.group_size)
    state.pending = run.pool.dispatch(requests, step=step, run_seed=run.cfg.run.seed)


def rl_step(run: Run, state: RunState, step: int) -> StepResult:
    """Collect → score → advantages → update → sync; async mode dispatches the next step once the samples are in
    (sampling overlaps the update), sync mode in `train` after the step's held-out evaluation."""
    cfg, started = run.cfg, time.perf_counter()
    batch, metrics = collect(run.pool, state.pending, step, state.version, cfg.run.max_policy_lag)
    state.pending = None  # sync mode: the next step is dispatched by `train`, after this step's evaluation
    if cfg.run.mode == "async" and step < cfg.run.steps:
        dispatch(run, state, step + 1)  # sampled with the current weights while the learner trains
    batch, reward_metrics = score(batch, run.scorer)
    metrics.update(reward_metrics)
    kept, advantages, adv_metrics = compute_advantages(batch, cfg)
    metrics.update(adv_metrics)
    if kept.num_rows:
        metrics.update(update(run.learners, kept, advantages, cfg, step))
        state.version += 1
        metrics.update(run.pool.sync(run.learners, state.version))
    metrics.update(rollout_metrics(batch, metrics["perf/rollout_collect_s"], state.version, started))
    if "perf/weight_sync_s" in metrics:
        metrics["perf/weight_sync_frac"] = metrics["perf/weight_sync_s"] / metrics["perf/step_s"]
    return StepResult(batch, kept, advantages, metrics)


def heldout_metrics(run: Run, step: int) -> dict[str, float]:
    """Held-out pass@1 of the learner's weights at step 0, every `eval.every` steps and at the end; else {}."""
    if run.evaluator is None or not should_evaluate(step, every=run.cfg.eval.every, last_step=run.cfg.run.steps):
        return {}
    return run.evaluator.evaluate(step, run.evaluator.training_decoder(step, run.pool, run.learners))


def log_step(run: Run, step: int, result: StepResult) -> None:
    """metrics.jsonl (and TensorBoard), the sample table and t2i grid when due, then rollouts.jsonl (naming the grid)."""
    run.metrics.log(step, result.metrics)
    if run.metrics.should_log_samples(step):
        limit = run.cfg.logging.sample_table_rows
        run.metrics.log_samples(step, sample_rows(result.batch, result.kept, result.advantages, limit))
        grid_rows, captions = t2i_grid(result.batch)
        if grid_rows:
            run.metrics.log_image_grid(step, grid_rows, captions)
    run.metrics.log_rollouts(step, rollout_rows(result, text=run.cfg.logging.rollout_text))


def save(run: Run, state: RunState, step: int, *, force: bool = False) -> None:
    """Checkpoint every `checkpoint.every` steps and if `force`d, export every `export_every`; both at the end.
    Step+1's prompts are drawn already (but after the last step): in sync mode the checkpoint keeps the cursor
    from before their draw, in async mode their samples (the module docstring says why)."""
    final = step == run.cfg.run.steps
    if run.checkpoints.should_save(step, final=final or force):
        driver_state = {"policy_version": state.version, "data": run.stream.state_dict(), "rng": capture_rng_state()}
        pending = None
        if state.pending is not None and run.cfg.run.mode == "async":
            state.pending = run.pool.finish(state.pending)  # sampled already: this step's sync waited for them
            pending = pending_payload(step + 1, state.pending)
            driver_state["pending_step"] = step + 1
        elif state.pending is not None:
            driver_state["data"] = state.cursor_before
        run.checkpoints.save(step, driver_state=driver_state, config_text=run.config_path.read_text(),
                             save_learner=run.learners.save_checkpoint, pending_rollouts=pending)
    if run.checkpoints.should_export(step, final=final):
        path = run.cfg.run.run_dir / ("export" if final else f"export_step_{step}")
        state.export = str(run.learners.export_policy(path, run.backbone, run.tokenizer))  # LoRA: + adapter/


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) the training described by `cfg`; returns a summary of the run."""
    from actors.learner import NonFiniteUpdates  # actors import Ray: loaded once a run starts

    with contextlib.ExitStack() as cleanup:  # whatever was started is stopped, in reverse order, on any exit
        run, state = setup(cfg, cleanup)  # a signal here aborts at once: nothing is trained yet
        stop = cleanup.enter_context(StopSignal())  # from now on a signal stops the run after a step (after ray.init)
        if state.start == 0 and run.evaluator is not None:  # the starting policy: the curve's first point
            run.metrics.log(0, heldout_metrics(run, 0))
        if state.start < cfg.run.steps and state.pending is None:  # else resumed with its samples (async mode)
            dispatch(run, state, state.start + 1)
        progress = tqdm(range(state.start + 1, cfg.run.steps + 1), initial=state.start, total=cfg.run.steps,
                        desc="unigrpo", dynamic_ncols=True, disable=None)
        for step in progress:
            skipped_before = run.learners.skipped_steps
            result = rl_step(run, state, step)
            in_a_row = run.learners.skipped_updates_in_a_row  # updates skipped entirely (docs/reliability.md §12)
            result.metrics.update({"health/nonfinite_skips": run.learners.skipped_steps - skipped_before,
                                   "health/nonfinite_updates_in_a_row": in_a_row})
            result.metrics.update(heldout_metrics(run, step))
            if state.pending is None and step < cfg.run.steps:  # sync mode: the next step samples after the evaluation
                dispatch(run, state, step + 1)
            log_step(run, step, result)
            progress.set_postfix(reward=mean_reward(result.batch), v=state.version)
            diverged = in_a_row >= cfg.learner.max_nonfinite_steps
            save(run, state, step, force=(stopping := stop.signum) is not None or diverged)  # a later signal: next step
            if diverged:
                raise NonFiniteUpdates(step, in_a_row, cfg.learner.max_nonfinite_steps,
                                       run.checkpoints.root / f"step_{step}")
            if stopping is not None and step < cfg.run.steps:
                raise Stopped(stopping, step, run.checkpoints.root / f"step_{step}", cfg.checkpoint.resume)
        summary = run_summary(run, state)  # the actors' checksums: before `cleanup` stops them
    return write_summary(cfg.run.run_dir, summary)


def main(argv: list[str] | None = None) -> int:
    args = with_dry_run(job_parser("python -m jobs.train", "UniGRPO training on Ray.")).parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config or DEFAULT_CONFIG, args.overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if (status := preflight(args, cfg)) is not None:  # --print-config, --dry-run: exit before Ray is imported
        return status
    from actors.cluster import ResourceError  # imports Ray: only once a run starts
    from actors.group import ActorLost
    from actors.learner import NonFiniteUpdates

    try:
        summary = train(cfg)
    except (ConfigError, ResourceError, DataError, CheckpointError) as exc:  # config, cluster, data, run dir
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except (Stopped, NonFiniteUpdates) as exc:  # SIGTERM/SIGINT, or updates skipped: the last step is saved
        print(exc, file=sys.stderr)
        return exc.exit_code
    except ActorLost as exc:  # an actor the run cannot replace (a learner rank) hung or died: reliability.md §14
        print(lost_actor_message(exc, CheckpointManager(cfg.run.run_dir / "checkpoints", cfg.checkpoint)), file=sys.stderr)
        return exc.exit_code
    print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
