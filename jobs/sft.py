"""Masked-diffusion supervised fine-tuning (the cold-start stage), on the DeepSpeed learner group.

    python -m jobs.sft --config jobs/configs/sft_demo.yaml [--set sft.max_steps=500 ...]

The objective, LLaDA's SFT loss, is rl/sft.py (its docstring has the formula): response positions masked with a
per-row ratio p_i = eps + (1 - eps) t_i, never the prompt; the masked tokens' cross-entropy weighted 1/(p_i L_i).
The driver draws a step's masks from (run.seed, step) (jobs/sft_data.py), so they do not depend on the number of
ranks; the ranks run `rl.sft.sft_step` and only compute. The config: jobs/sft_config.py.

The phases: `setup`, `train` (a line every `sft.log_every`), `evaluate` (step 0, every `sft.eval_every` and the
last; the decode + judge of jobs/evaluate.py, as `python -m jobs.eval` and in-training evaluation) and `finish`.
The best checkpoint by pass@1 goes to `<run dir>/best_policy/`; training stops after `sft.patience` evaluations
without a gain above `sft.min_delta` (not before `sft.min_steps`) or at `sft.max_steps` (docs/demo.md §2).

Deviations from LLaDA's recipe: `sft.mask_eps` defaults to LLaDA's 1e-3, but the demo config uses 0.1 — with
batches of 32, a row with p ~ 1e-3 weights its few masked tokens x1000 and dominates the clipped gradient of most
steps (docs/demo.md); the learning rate is a linear warm-up then a cosine decay to `min_lr_ratio` (LLaDA: warm-up,
constant, linear decay over a known number of steps); prompts are left-padded to the batch's longest prompt and
hidden by the attention mask, as in the sampler (LLaDA packs same-length batches).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from jobs.sft_config import SFTJobConfig, learning_rate, load_sft_config, tiny_size
from jobs.sft_data import Example, make_batch, shard, tokenize_examples
from rl.sft import sft_step


# -- driver ---------------------------------------------------------------------------------------
@dataclass
class Session:
    """What `setup` builds: fixed for the run (the learner group's weights change, the handle does not)."""

    cfg: SFTJobConfig
    run_dir: Path
    metrics_path: Path
    tokenizer: Any
    ids: Any  # model.templates.special_ids: .mask, .pad, .eos
    train_examples: dict[str, Example]  # uid -> Example
    heldout: list  # the first sft.eval_size held-out PromptRecords
    stream: Any  # jobs.data.PromptStream over the training rows
    eval_network: torch.nn.Module  # the driver's copy, loaded from rank 0 to evaluate and save
    group: Any  # actors.learner.LearnerGroup
    placement_groups: Any
    started: float  # time.perf_counter() once the learner group is up


@dataclass
class Progress:
    """What changes as the run goes: the step, the best evaluation so far, the losses since the last line."""

    step: int = 0
    best_pass1: float = -1.0
    best_step: int = -1
    evals_without_gain: int = 0
    losses: list[float] = field(default_factory=list)


def _log(path: Path, record: dict) -> None:
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def setup(cfg: SFTJobConfig) -> Session:
    """Run directory and resolved config, the policy's parts and the tokenised data (a bad `model.path` or data
    file raises here, before Ray starts), then the learner group."""
    from actors.cluster import create_placement_groups, init_ray, learner_role
    from actors.learner import LearnerGroup
    from actors.network_source import build_network
    from jobs.configtree import write_yaml
    from jobs.data import DataError, PromptDataset, PromptStream
    from model.resolve import model_parts
    from model.templates import special_ids

    torch.set_num_threads(cfg.run.torch_threads)
    run_dir = cfg.run.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    write_yaml(cfg, run_dir / "config.yaml")
    metrics_path = run_dir / "sft_metrics.jsonl"
    metrics_path.write_text("")
    parts = model_parts(cfg.model.path, key="model.path", seed=cfg.model.init_seed, size=tiny_size(cfg.model))
    ids = special_ids(parts.tokenizer)
    train_set = PromptDataset(cfg.data.train, default_task="text")
    try:
        examples = tokenize_examples(train_set.records, parts.tokenizer, response_field=cfg.data.response_field,
                                     thinking=cfg.data.thinking, gen_length=cfg.sampler.gen_length, eos_id=ids.eos)
    except ValueError as exc:  # a row without a usable response, named by file:row
        raise DataError(str(exc)) from exc
    heldout = PromptDataset(cfg.data.heldout, default_task="text").records[:cfg.sft.eval_size]
    stream = PromptStream(train_set, seed=cfg.run.seed, shuffle=True)
    eval_network, _ = build_network(parts.source, cfg.learner.dtype)
    print(f"[sft] {len(examples)} training rows, {len(heldout)} held-out; policy "
          f"{sum(p.numel() for p in eval_network.parameters()) / 1e6:.2f}M parameters; run dir {run_dir}", flush=True)
    role = learner_role(cfg.learner)
    init_ray(cfg.cluster, [role])
    groups = create_placement_groups([role], cfg.cluster)
    group = LearnerGroup(cfg.learner, parts.source, placement_group=groups[role.name])
    return Session(cfg, run_dir, metrics_path, parts.tokenizer, ids, {e.uid: e for e in examples}, heldout, stream,
                   eval_network, group, groups, time.perf_counter())


def evaluate(session: Session, progress: Progress) -> bool:
    """Held-out pass@1 of the learner's weights now; a gain saves best_policy. True when patience has run out."""
    import model
    from jobs.evaluate import evaluate_policy
    from model.checkpoint import LoadedModel

    cfg, network, started = session.cfg, session.eval_network, session.started
    network.load_state_dict(session.group.state_dict_for_sync())
    eval_started = time.perf_counter()
    policy = LoadedModel(network=network, tokenizer=session.tokenizer, config=network.config)
    rows, scores = evaluate_policy(policy, session.heldout, samples=cfg.sft.eval_samples,
                                   sampler=dataclasses.asdict(cfg.sampler), thinking=cfg.data.thinking,
                                   seed=cfg.run.seed, batch_size=cfg.sft.eval_batch_size)
    pass1 = scores["pass_at_k"]["1"]
    record = {"step": progress.step, "heldout_pass1": pass1, "format_rate": scores["format_rate"],
              "eval_seconds": round(time.perf_counter() - eval_started, 2),
              "wall_seconds": round(time.perf_counter() - started, 1)}
    if pass1 > progress.best_pass1 + cfg.sft.min_delta:
        progress.best_pass1, progress.best_step, progress.evals_without_gain = pass1, progress.step, 0
        model.save((network, session.tokenizer), session.run_dir / "best_policy", max_shard_bytes=None)
        (session.run_dir / "best_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        progress.evals_without_gain += 1
    record["best_pass1"] = progress.best_pass1
    _log(session.metrics_path, {"kind": "eval", **record})
    print(f"[sft] eval step {progress.step}: held-out pass@1 {pass1:.3f} (best {progress.best_pass1:.3f} at "
          f"{progress.best_step}), format {scores['format_rate']:.3f}, {record['wall_seconds']:.0f}s", flush=True)
    return progress.evals_without_gain >= cfg.sft.patience and progress.step >= cfg.sft.min_steps


def train_step(session: Session, progress: Progress) -> None:
    """One optimizer step on the next batch (masks drawn here, the update on the ranks); a line every log_every."""
    cfg = session.cfg
    records = session.stream.next_batch(cfg.sft.batch_size)
    batch = make_batch([session.train_examples[r.uid] for r in records], step=progress.step, cfg=cfg,
                       mask_id=session.ids.mask, pad_id=session.ids.pad)
    lr = learning_rate(progress.step, cfg.sft, cfg.learner.lr)
    stats = session.group.train_step(sft_step, shard(batch, cfg.learner.num_ranks),
                                     num_sequences_global=cfg.sft.batch_size, lr=lr)
    progress.losses.append(sum(s["loss"] for s in stats))
    progress.step += 1
    if progress.step % cfg.sft.log_every == 0:
        loss = sum(progress.losses) / len(progress.losses)
        _log(session.metrics_path, {"kind": "train", "step": progress.step, "loss": loss, "lr": lr,
                                    "grad_norm": stats[0].get("grad_norm"), "epoch": session.stream.epoch,
                                    "wall_seconds": round(time.perf_counter() - session.started, 1)})
        print(f"[sft] step {progress.step}: loss {loss:.4f} lr {lr:.2e}", flush=True)
        progress.losses = []


def train(session: Session, progress: Progress) -> None:
    """Evaluate at step 0, then step until patience runs out or sft.max_steps, evaluating every eval_every."""
    sft = session.cfg.sft
    stop = evaluate(session, progress)
    while not stop and progress.step < sft.max_steps:
        train_step(session, progress)
        if progress.step % sft.eval_every == 0 or progress.step == sft.max_steps:
            stop = evaluate(session, progress)


def save_last(session: Session) -> None:
    """The weights after the last step, to `<run dir>/last_policy/` (the run's policy with sft.select=last)."""
    import model

    session.eval_network.load_state_dict(session.group.state_dict_for_sync())
    model.save((session.eval_network, session.tokenizer), session.run_dir / "last_policy", max_shard_bytes=None)


def finish(session: Session, progress: Progress) -> dict[str, Any]:
    """summary.json, and the run's policy copied to run.export_to when set."""
    cfg, run_dir = session.cfg, session.run_dir
    seconds = time.perf_counter() - session.started
    policy = run_dir / f"{cfg.sft.select}_policy"
    summary = {"best_pass1": progress.best_pass1, "best_step": progress.best_step, "steps": progress.step,
               "seconds": round(seconds, 1), "best_policy": str(run_dir / "best_policy"), "policy": str(policy)}
    if cfg.run.export_to:
        target = Path(cfg.run.export_to)
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(policy, target)
        summary["exported_to"] = str(target)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"[sft] done: best held-out pass@1 {progress.best_pass1:.3f} at step {progress.best_step} after "
          f"{progress.step} steps, {seconds / 60:.1f} min; the {cfg.sft.select} policy is in "
          f"{summary.get('exported_to', policy)}", flush=True)
    return summary


def run(cfg: SFTJobConfig) -> dict[str, Any]:
    """Train until pass@1 plateaus; returns {best_pass1, best_step, steps, seconds, best_policy, policy}."""
    from actors.cluster import remove_placement_groups

    session = setup(cfg)
    progress = Progress()
    try:
        train(session, progress)
        if cfg.sft.select == "last":
            save_last(session)
    finally:
        session.group.shutdown()
        remove_placement_groups(session.placement_groups)
    return finish(session, progress)


def main(argv: list[str] | None = None) -> int:
    """Exit status 0, or 2 with one line on stderr for an input error: the config, the model (`model.path`, its
    checkpoint checked before Ray starts), the data, or resources the cluster cannot give."""
    from jobs.configtree import ConfigError
    from jobs.data import DataError
    from model.resolve import ModelSpecError

    parser = argparse.ArgumentParser(prog="python -m jobs.sft", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="YAML config (default: all defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, e.g. sft.max_steps=500 (repeatable)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        cfg = load_sft_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"ConfigError: {exc}", file=sys.stderr)
        return 2
    from actors.cluster import ResourceError  # imports Ray: only once a run starts

    try:
        run(cfg)
    except (ModelSpecError, DataError, ResourceError) as exc:  # model.path, data files and rows, cluster
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
