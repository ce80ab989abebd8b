"""What `python -m jobs.train` does before (or instead of) starting Ray: `--print-config`, `--dry-run`, and the
memory plan a GPU run prints at start.

`--dry-run` loads and checks the config, reads the schema of the configured data files (rows, tasks, kinds, the
rows that would be skipped, the tasks' reward terms and image needs: `jobs.multitask.check_tasks`) and prints the
memory plan (`jobs.bench.memory`), then exits without importing Ray: 0 when nothing is wrong, 2 on a config or data
error. Files a recipe expects the user to prepare (the data, a checkpoint not downloaded yet, the image tokenizer)
are reported as notes when absent, not as errors: recipes point at them (docs/gpu.md §Recipes).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from pathlib import Path

from jobs.config import TrainConfig
from jobs.configtree import commented_yaml

log = logging.getLogger("unigrpo.train")


def with_dry_run(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """jobs.train's parser: the job parser plus `--dry-run`."""
    parser.add_argument("--dry-run", action="store_true",
                        help="check the config, the data files' schema and the memory plan, then exit (Ray is "
                             "never started)")
    return parser


def preflight(args: argparse.Namespace, cfg: TrainConfig) -> int | None:
    """The exit status of `--print-config` or `--dry-run`, or None: go on and train."""
    if args.print_config:
        print(commented_yaml(cfg), end="")
        return 0
    return dry_run(cfg) if args.dry_run else None


def memory_plan_text(cfg: TrainConfig, gpu_gib: float = 80.0) -> tuple[str, bool]:
    """(the memory plan as a table, whether it fits); raises jobs.bench.memory.PlanError."""
    from jobs.bench.memory import format_plan, plan_for

    plan = plan_for(cfg, gpu_gib=gpu_gib)
    return format_plan(plan), plan.fits


def log_gpu_plan(cfg: TrainConfig) -> None:
    """A run on GPUs (`learner.gpus_per_rank` or `rollout.gpus_per_worker` > 0) logs its memory plan at start,
    with a warning when it does not fit 80 GiB; a CPU run logs nothing."""
    from jobs.bench.memory import PlanError

    if cfg.learner.gpus_per_rank == 0 and cfg.rollout.gpus_per_worker == 0:
        return
    try:
        text, fits = memory_plan_text(cfg)
    except PlanError as exc:
        log.warning("no memory plan: %s", exc)
        return
    log.info("%s", text)
    if not fits:
        log.warning("the memory plan above does not fit one 80 GiB GPU (docs/gpu.md §Memory planner)")


def data_report(cfg: TrainConfig, backbone) -> tuple[list[str], list[str], list[str]]:
    """(lines describing the data files, notes, errors): rows, tasks, kinds and skipped rows of `data.train` and
    `data.eval`; the training tasks checked against the reward terms and the model (`check_tasks`)."""
    from jobs.data import DataError, PromptDataset
    from jobs.multitask import check_tasks, image_tasks, record_kinds

    lines, notes, errors = [], [], []
    for key, paths in (("data.train", cfg.data.train_files), ("data.eval", [cfg.data.eval] if cfg.data.eval else [])):
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            notes.append(f"{key}: {', '.join(missing)} not found; the recipes point at data you prepare "
                         "(docs/gpu.md §Recipes), its schema is checked once it exists")
            continue
        if not paths:
            continue
        try:
            dataset = PromptDataset(paths, default_task=cfg.data.default_task, fields=cfg.data.fields,
                                    image_tasks=image_tasks(cfg.data))
        except (DataError, ValueError) as exc:
            errors.append(f"{key}: {exc}")
            continue
        tasks = Counter(r.task for r in dataset.records)
        kinds = Counter(record_kinds(dataset.records, cfg.data).values())
        lines.append(f"{key}: {len(dataset.records)} usable row(s) in {', '.join(paths)}; tasks "
                     f"{dict(sorted(tasks.items()))}, kinds {dict(sorted(kinds.items()))}; "
                     f"{len(dataset.problems)} row(s) skipped")
        lines += [f"  skipped {problem}" for problem in dataset.problems[:5]]
        if key == "data.train":
            tokenizer = cfg.rollout.image_tokenizer
            absent = tokenizer is not None and not Path(tokenizer).is_dir()
            for problem in check_tasks(cfg, dataset.records, backbone):
                if absent and problem.startswith("rollout.image_tokenizer:"):
                    notes.append(f"rollout.image_tokenizer: {tokenizer} not found; the image checks run once it "
                                 "exists")
                else:
                    errors.append(problem)
    return lines, notes, errors


def dry_run(cfg: TrainConfig) -> int:
    """Print the config's data report and memory plan; 0 when nothing is wrong, 2 otherwise (see the module
    docstring). Imports no Ray."""
    from jobs.bench.memory import PlanError, resolve_shape
    from jobs.configtree import ConfigError
    from jobs.heldout import check_placement

    try:
        check_placement(cfg)
        backbone, shape = resolve_shape(cfg.model.path, cfg.model.tiny_size)
        plan, _ = memory_plan_text(cfg)
    except (ConfigError, PlanError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    lines, notes, errors = data_report(cfg, backbone)
    print(f"config: {cfg.run.name}, {cfg.run.steps} steps of {cfg.run.prompts_per_step} prompts × "
          f"{cfg.algo.group_size}; model {cfg.model.path} ({shape})")
    print("\n".join([*lines, *(f"note: {n}" for n in notes), plan]))
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    print(f"dry run: {'errors above' if errors else 'OK'}; Ray was not started")
    return 2 if errors else 0
