"""Masked-diffusion supervised fine-tuning (the cold-start stage), on the DeepSpeed learner group.

    python -m jobs.sft [--config jobs/configs/sft_demo.yaml] [--set sft.max_steps=500 ...] [--print-config]

The objective, LLaDA's SFT loss, is rl/sft.py (its docstring has the formula); the driver draws a step's masks
from (run.seed, step) (jobs/sft_data.py), so they do not depend on the number of ranks, which run `rl.sft.sft_step`
and only compute. The config is the tree of every job (jobs/config.py): the `sft` section, and `run`, `data`,
`model`, `rollout.sampler`, `eval`, `learner`, `cluster` as the other jobs read them (docs/demo.md §2).

Phases: `setup` (jobs/sft_parts.py), `train` (a line every `sft.log_every`), `evaluate` (step 0, every `eval.every` and the last, by
jobs/heldout.py's in-training `HeldoutEvaluator`) and `finish`. The best checkpoint by pass@1 goes to `<run
dir>/best_policy/`; training stops after `sft.patience` evaluations without a gain above `sft.min_delta` (not
before `sft.min_steps`) or at `sft.max_steps`.

Deviations from LLaDA's recipe: `sft.mask_eps` defaults to LLaDA's 1e-3, but the demo config uses 0.1 — with
batches of 32, a row with p ~ 1e-3 weights its few masked tokens x1000 and dominates the clipped gradient of most
steps (docs/demo.md); the learning rate is the learner's schedule (`learner.lr_warmup_steps`, `lr_decay`,
`min_lr_ratio` over `sft.max_steps`; the demo: linear warm-up then cosine; LLaDA: warm-up, constant, linear decay
over a known number of steps); prompts are left-padded to the batch's longest prompt and hidden by the attention
mask, as in the sampler (LLaDA packs same-length batches).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.config import CONFIG_DIR, ConfigError, TrainConfig, job_main, job_parser
from jobs.data import DataError
from jobs.heldout import should_evaluate
from jobs.sft_data import make_batch, shard
from jobs.sft_parts import Session, SFTJobError, setup
from model.resolve import ModelSpecError
from rl.sft import sft_step

SFT_CONFIG = CONFIG_DIR / "sft_demo.yaml"  # what `python -m jobs.sft` reads without --config: the demo policy's SFT


class SFTDiverged(RuntimeError):
    """`learner.max_nonfinite_steps` SFT steps in a row were skipped entirely (a NaN or inf loss or gradient)."""

    exit_code = 3  # as jobs.train's NonFiniteUpdates: neither an input error (2) nor a signal


def check_sft(cfg: TrainConfig) -> None:
    """The checks of the tree that only SFT needs, as one ConfigError naming the keys."""
    problems = []
    if cfg.sft.batch_size % cfg.learner.num_ranks:
        problems.append(f"sft.batch_size: {cfg.sft.batch_size} is not divisible by learner.num_ranks="
                        f"{cfg.learner.num_ranks}; every rank needs an equal shard")
    if not cfg.data.eval:
        problems.append("data.eval: SFT picks its policy by held-out pass@1; set it to a .jsonl or .parquet file")
    if problems:
        raise ConfigError(problems)


# -- driver ---------------------------------------------------------------------------------------
@dataclass
class Progress:
    """What changes as the run goes: the step, the best evaluation so far, the losses since the last line."""

    step: int = 0
    best_pass1: float = -1.0
    best_step: int = -1
    evals_without_gain: int = 0
    losses: list[float] = field(default_factory=list)


def save_policy(session: Session, path: Path) -> None:
    """The evaluator's copy of the learner's weights (LoRA: merged) at `path`, and `adapter/`, as jobs.train exports."""
    import model

    model.save((session.evaluator.network, session.tokenizer), path, max_shard_bytes=None)
    session.group.save_adapter(path / "adapter")


def evaluate(session: Session, progress: Progress) -> bool:
    """Held-out pass@1 of the learner's weights now; a gain saves best_policy. True when patience has run out."""
    cfg, evaluator = session.cfg, session.evaluator
    scores = evaluator.evaluate(progress.step,
                                evaluator.driver_decoder(progress.step, session.group.state_dict_for_sync()))
    pass1 = scores["eval/pass@1"]
    wall_seconds = time.perf_counter() - session.started
    if pass1 > progress.best_pass1 + cfg.sft.min_delta:
        progress.best_pass1, progress.best_step, progress.evals_without_gain = pass1, progress.step, 0
        save_policy(session, session.run_dir / "best_policy")
        shutil.copyfile(evaluator.out_dir / f"step_{progress.step}.jsonl", session.run_dir / "best_samples.jsonl")
    else:
        progress.evals_without_gain += 1
    session.metrics.log(progress.step, {**scores, "eval/best_pass@1": progress.best_pass1, "perf/wall_s": wall_seconds})
    print(f"[sft] eval step {progress.step}: held-out pass@1 {pass1:.3f} (best {progress.best_pass1:.3f} at "
          f"{progress.best_step}), format {scores['eval/format_rate']:.3f}, {wall_seconds:.0f}s", flush=True)
    return progress.evals_without_gain >= cfg.sft.patience and progress.step >= cfg.sft.min_steps


def train_step(session: Session, progress: Progress) -> None:
    """One optimizer step on the next batch (masks drawn here, the update on the ranks); a line every log_every.

    The learner counts steps from 1 (`rl_step`): step s of the loop is the learner's s + 1, so the schedule's
    step 0 is the first update, as `rl.lr_schedule.learning_rate` counts it."""
    from actors.learner import scheduled_lr

    cfg = session.cfg
    records = session.stream.next_batch(cfg.sft.batch_size)
    batch = make_batch([session.train_examples[r.uid] for r in records], step=progress.step, cfg=cfg,
                       mask_id=session.ids.mask, pad_id=session.ids.pad)
    lr = scheduled_lr(cfg.learner, progress.step + 1, cfg.sft.max_steps)
    stats = session.group.train_step(sft_step, shard(batch, cfg.learner.num_ranks), rl_step=progress.step + 1,
                                     num_sequences_global=cfg.sft.batch_size)
    progress.losses.append(sum(s["loss"] for s in stats))
    progress.step += 1
    in_a_row = session.group.skipped_updates_in_a_row
    if in_a_row >= cfg.learner.max_nonfinite_steps:
        raise SFTDiverged(
            f"step {progress.step}: the last {in_a_row} SFT steps were skipped entirely (a NaN or inf loss or gradient "
            f"on a learner rank; learner.max_nonfinite_steps is {cfg.learner.max_nonfinite_steps}); stopped. The best "
            f"policy so far (step {progress.best_step}, held-out pass@1 {progress.best_pass1:.3f}) is in "
            f"{session.run_dir / 'best_policy'}; lower learner.lr or check the data, then rerun")
    if progress.step % cfg.sft.log_every == 0:
        loss = sum(progress.losses) / len(progress.losses)
        grad_norm = stats[0].get("grad_norm")
        session.metrics.log(progress.step, {"loss/sft": loss, "loss/lr": lr, "perf/data_epoch": session.stream.epoch,
                                            "perf/wall_s": time.perf_counter() - session.started,
                                            "health/nonfinite_skips": float(session.group.skipped_steps),
                                            **({} if grad_norm is None else {"loss/grad_norm": grad_norm})})
        print(f"[sft] step {progress.step}: loss {loss:.4f} lr {lr:.2e}", flush=True)
        progress.losses = []


def train(session: Session, progress: Progress) -> None:
    """Evaluate at step 0, then step until patience runs out or sft.max_steps, evaluating every eval.every."""
    cfg = session.cfg
    stop = evaluate(session, progress)
    while not stop and progress.step < cfg.sft.max_steps:
        train_step(session, progress)
        if should_evaluate(progress.step, every=cfg.eval.every, last_step=cfg.sft.max_steps):
            stop = evaluate(session, progress)


def save_last(session: Session) -> None:
    """The weights after the last step, to `<run dir>/last_policy/` (the run's policy with sft.select=last)."""
    session.evaluator.network.load_state_dict(session.group.state_dict_for_sync())
    save_policy(session, session.run_dir / "last_policy")


def finish(session: Session, progress: Progress) -> dict[str, Any]:
    """summary.json, and the run's policy copied to sft.export_to when set."""
    cfg, run_dir = session.cfg, session.run_dir
    seconds = time.perf_counter() - session.started
    policy = run_dir / f"{cfg.sft.select}_policy"
    summary = {"best_pass1": progress.best_pass1, "best_step": progress.best_step, "steps": progress.step,
               "seconds": round(seconds, 1), "best_policy": str(run_dir / "best_policy"), "policy": str(policy)}
    if cfg.sft.export_to:
        target = Path(cfg.sft.export_to)
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(policy, target)
        summary["exported_to"] = str(target)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"[sft] done: best held-out pass@1 {progress.best_pass1:.3f} at step {progress.best_step} after "
          f"{progress.step} steps, {seconds / 60:.1f} min; the {cfg.sft.select} policy is in "
          f"{summary.get('exported_to', policy)}", flush=True)
    return summary


def run(cfg: TrainConfig) -> dict[str, Any]:
    """Train until pass@1 plateaus; returns {best_pass1, best_step, steps, seconds, best_policy, policy}."""
    from actors.cluster import remove_placement_groups

    check_sft(cfg)
    session = setup(cfg)
    progress = Progress()
    try:
        train(session, progress)
        if cfg.sft.select == "last":
            save_last(session)
    finally:
        session.metrics.close()
        session.group.shutdown()
        remove_placement_groups(session.placement_groups)
    return finish(session, progress)


def job(cfg: TrainConfig) -> int:
    run(cfg)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Exit status 0, or 2 with one `error: ...` line on stderr for an input error: the config, the model
    (`model.path`, its checkpoint checked before Ray starts), the data, or resources the cluster cannot give; 3
    (diverged) or 4 (a learner rank lost) with an `aborted: ...` line (`job_main`)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")  # progress lines, stderr
    parser = job_parser("python -m jobs.sft", __doc__, default_config=SFT_CONFIG)
    return job_main(parser, argv, job, errors=(ModelSpecError, DataError, SFTJobError))


if __name__ == "__main__":
    sys.exit(main())
