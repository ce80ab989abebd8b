"""What an SFT run (jobs/sft.py) is built from: its `Session` (data, evaluator, logger, the learner group on Ray)
and `setup`, which raises a bad `model.path`, data file or resource request before the learner ranks start."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.config import TrainConfig, write_resolved
from jobs.data import DataError
from jobs.heldout import HeldoutEvaluator
from jobs.sft_data import Example, tokenize_examples


class SFTJobError(RuntimeError):
    """Resources the cluster cannot give (actors.cluster's ResourceError, whose module imports Ray), for `main`."""


@dataclass
class Session:
    """What `setup` builds: fixed for the run (the learner group's weights change, the handle does not)."""

    cfg: TrainConfig
    run_dir: Path
    metrics: Any  # jobs.metrics.MetricsLogger: metrics.jsonl, TensorBoard, W&B as `logging` says
    tokenizer: Any
    ids: Any  # model.templates.special_ids: .mask, .pad, .eos
    train_examples: dict[str, Example]  # uid -> Example
    stream: Any  # jobs.data.PromptStream over the training rows
    evaluator: Any  # jobs.heldout.HeldoutEvaluator: its `network`, loaded from rank 0, is also what is saved
    group: Any  # actors.learner.LearnerGroup
    placement_groups: Any
    started: float  # time.perf_counter() once the learner group is up


def setup(cfg: TrainConfig) -> Session:
    """Run directory and resolved config, the policy's parts and the tokenised data (a bad `model.path` or data
    file raises here, before Ray starts), then the learner group."""
    from actors.cluster import ResourceError, create_placement_groups, init_ray, learner_role
    from actors.learner import LearnerGroup
    from jobs.configtree import to_dict
    from jobs.data import PromptDataset, PromptStream
    from jobs.metrics import MetricsLogger
    from model.resolve import model_parts
    from model.templates import special_ids

    run_dir = cfg.run.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    write_resolved(cfg, run_dir)
    parts = model_parts(cfg.model.path, key="model.path", seed=cfg.run.seed, size=cfg.model.tiny_size)
    ids = special_ids(parts.tokenizer)
    train_set = PromptDataset(cfg.data.train_files, default_task=cfg.data.default_task, fields=cfg.data.fields)
    column = cfg.data.fields.get("response", "response")
    try:
        examples = tokenize_examples(train_set.records, parts.tokenizer, column=column, thinking=cfg.data.thinking,
                                     gen_length=cfg.rollout.sampler.gen_length, eos_id=ids.eos)
    except ValueError as exc:  # a row without a usable response, named by file:row
        raise DataError(str(exc)) from exc
    evaluator = HeldoutEvaluator(cfg, parts.config, parts.tokenizer, run_dir, driver_copy=True)  # no workers
    metrics = MetricsLogger(run_dir, cfg.logging, run_name=cfg.run.name, config=to_dict(cfg), resume_step=-1)  # fresh
    stream = PromptStream(train_set, seed=cfg.run.seed, shuffle=cfg.data.shuffle, weights=cfg.data.train_weights)
    print(f"[sft] {len(examples)} training rows, {len(evaluator.records)} held-out; policy "
          f"{sum(p.numel() for p in evaluator.network.parameters()) / 1e6:.2f}M parameters; run dir {run_dir}",
          flush=True)
    try:
        role = learner_role(cfg.learner)
        init_ray(cfg.cluster, [role])
        groups = create_placement_groups([role], cfg.cluster)
    except ResourceError as exc:
        raise SFTJobError(str(exc)) from exc
    group = LearnerGroup(cfg.learner, parts.source, total_steps=cfg.sft.max_steps, placement_group=groups[role.name])
    return Session(cfg, run_dir, metrics, parts.tokenizer, ids, {e.uid: e for e in examples}, stream, evaluator,
                   group, groups, time.perf_counter())
