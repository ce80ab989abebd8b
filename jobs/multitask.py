"""Mixed-task plumbing of the training driver: dataset task -> sampler kind, prompt requests per kind, the
reward scorer, per-task metrics and the text-to-image sample grid.

Two names per row, kept apart on purpose (`RolloutBatch.task` and `RolloutBatch.kind`):
- the *task* (`PromptRecord.task`, e.g. `captioning`) selects the reward terms (`rewards.tasks.<task>`) and
  names the per-task metrics;
- the *kind* (`text`, `mmu`, `t2i`; rl/kinds.py, `DataConfig.kind_of`) selects the prompt layout and the
  sampler. `captioning` is an `mmu`-kind task.

Prompts per kind: `text` and `mmu` get the chat template (`model.templates.chat_prompt_ids`, with the
thinking instruction when `data.thinking`); `mmu` requests also carry the row's image as an HxWx3 uint8
array, which the worker encodes with the image tokenizer, so rollout workers never need the driver's files;
`t2i` requests carry the plain text ids of the prompt (the worker builds the `<|t2i|>` layout). A request
carries the record's task, prompt, answer and extra fields (`meta`), which the worker copies into the row:
the rewards then read the row itself (`rewards.samples_of`: the generated image for `t2i` rows, the input
image for `mmu` rows), never the records.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

IMAGE_KINDS = ("mmu", "t2i")
GRID_PROMPTS = 8  # rows (prompts) of the logged t2i sample grid
GRID_SAMPLES = 8  # columns (samples of one prompt) of the grid


def record_kinds(records: Iterable[Any], data_cfg: Any) -> dict[str, str]:
    """uid -> sampler kind of every record."""
    return {r.uid: data_cfg.kind_of(r.task, r.image is not None) for r in records}


def image_tasks(data_cfg: Any) -> set[str]:
    """Tasks whose rows must have an image: `mmu` and every task `data.task_kinds` maps to `mmu`."""
    return {"mmu"} | {task for task, kind in data_cfg.task_kinds.items() if kind == "mmu"}


def image_loader(cache_size: int) -> Callable[[str], Any]:
    """`load_image` with an LRU cache of `cache_size` images (a prompt drawn again in a later epoch, or a
    picture several prompts share, is read once while it stays in the cache)."""
    from jobs.data import load_image

    return functools.lru_cache(maxsize=cache_size)(load_image)


def build_requests(records: Sequence[Any], tokenizer: Any, cfg: Any, load_image: Callable[[str], Any], *,
                   samples: int) -> list:
    """`samples` PromptRequests per record (sample indices 0..samples-1: jobs.train's `algo.group_size`,
    jobs.rollout's `generate.samples_per_prompt`), with the record's fields; the group of a prompt shares its
    uid, its `meta` dict and its image array (each pickled once per shard, module docstring)."""
    from actors.rollout import PromptRequest
    from model.templates import chat_prompt_ids

    requests = []
    for record in records:
        kind = cfg.data.kind_of(record.task, record.image is not None)
        if kind == "t2i":
            ids = tuple(tokenizer(record.prompt, add_special_tokens=False)["input_ids"])
        else:
            ids = tuple(chat_prompt_ids(tokenizer, record.prompt, thinking=cfg.data.thinking))
        image = load_image(record.image) if kind == "mmu" else None
        for index in range(samples):
            requests.append(PromptRequest(ids, record.uid, index, kind, task=record.task, prompt=record.prompt,
                                          answer=record.answer, meta=record.meta, image=image))
    return requests


def uses_reward_actors(rewards_cfg: Any, tasks: Iterable[str], heavy_terms: Sequence[str]) -> bool:
    """True when a term of one of `tasks` is a heavy term (it then gets a Ray actor of its own)."""
    return any(term.name in heavy_terms for task in tasks for term in rewards_cfg.terms_for(task))


def reward_scorer(cfg: Any, tasks: Sequence[str]) -> Any:
    """The driver's scorer: `actors.rewards.RewardRouter` (one actor per heavy term, one for the CPU terms)
    when the tasks present have heavy terms, else an in-process `rewards.RewardService` (CPU terms in its
    deadline worker processes; no actor to reserve CPUs for). Both answer `score(batch)` identically."""
    if uses_reward_actors(cfg.rewards, tasks, cfg.reward_actors.heavy_terms):
        from actors.rewards import RewardRouter

        return RewardRouter(cfg.rewards, cfg.reward_actors, tasks=tasks)
    from rewards import RewardService

    return RewardService(cfg.rewards, tasks=tasks)


def reward_actor_roles(cfg: Any, tasks: Sequence[str]) -> list:
    """The reward actors `reward_scorer` will start, as `RoleResources` for the resource check (none when the
    scorer runs in-process). GPUs: those of the connected Ray, or of the local Ray about to start; when
    joining a cluster by address this is the local machine's count, and a heavy actor that then cannot be
    placed fails after `reward_actors.start_timeout_s` naming its resources."""
    if not uses_reward_actors(cfg.rewards, tasks, cfg.reward_actors.heavy_terms):
        return []
    import ray

    from actors.cluster import local_nodes
    from actors.rewards import reward_roles

    gpus = ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else local_nodes(cfg.cluster)[0]["GPU"]
    return reward_roles(cfg.rewards, cfg.reward_actors, tasks=tasks, has_gpus=gpus > 0)


def task_metrics(batch: Any, kept: Any, advantages: Any) -> dict[str, float]:
    """Per dataset task: `rollout/<task>/rows`, `rollout/<task>/response_tokens_mean` (scored response tokens:
    through the first EOS for text, the image slots for t2i), `health/<task>/rows_unscorable` (total reward
    None) and `health/<task>/rows_zero_advantage` (among the `kept` rows, whose advantages are [B'] float32).
    The reward metrics per task and term come from the reward service (`reward/<task>/<term>/*`,
    `reward/<task>/total/*`)."""
    lengths = batch.scored_mask.sum(dim=1).tolist()  # [B] scored tokens per row
    rows: dict[str, list[int]] = defaultdict(list)
    for row, task in enumerate(batch.task):
        rows[task].append(row)
    metrics: dict[str, float] = {}
    for task, indices in rows.items():
        metrics[f"rollout/{task}/rows"] = float(len(indices))
        metrics[f"rollout/{task}/response_tokens_mean"] = sum(lengths[i] for i in indices) / len(indices)
        metrics[f"health/{task}/rows_unscorable"] = float(sum(batch.total[i] is None for i in indices))
        metrics[f"health/{task}/rows_zero_advantage"] = float(
            sum(float(advantages[i]) == 0.0 for i, kept_task in enumerate(kept.task) if kept_task == task))
    return metrics


def t2i_grid(batch: Any) -> tuple[list[list[Any]], list[str]]:
    """The generated images of the batch's t2i rows as grid rows (one per prompt, at most GRID_PROMPTS, each
    with at most GRID_SAMPLES samples in sample order) and one caption per grid row: task, prompt and the
    samples' total rewards. Empty when the batch has no t2i row."""
    groups: dict[str, list[int]] = {}
    for row, (kind, uid) in enumerate(zip(batch.kind, batch.uid)):
        if kind == "t2i" and batch.image[row] is not None:
            groups.setdefault(uid, []).append(row)
    rows, captions = [], []
    for members in list(groups.values())[:GRID_PROMPTS]:
        members = sorted(members, key=lambda r: batch.sample_index[r])[:GRID_SAMPLES]
        rows.append([batch.image[r] for r in members])
        rewards = " ".join("-" if batch.total[r] is None else f"{batch.total[r]:.3f}" for r in members)
        captions.append(f"[{batch.task[members[0]]}] {batch.prompt[members[0]]} | rewards: {rewards}")
    return rows, captions


def check_tasks(cfg: Any, records: Sequence[Any], backbone: Any) -> list[str]:
    """Problems (one line each, naming the config key) with the data's tasks under this config: a task without
    reward terms; image kinds without an MMaDA model or without `rollout.image_tokenizer`."""
    problems = []
    by_task: dict[str, list[Any]] = defaultdict(list)
    for record in records:
        by_task[record.task].append(record)
    for task, members in sorted(by_task.items()):
        if task not in cfg.rewards.tasks:
            problems.append(f"rewards.tasks: no reward terms for the data task {task!r} ({len(members)} row(s), e.g. "
                            f"{members[0].source}); add rewards.tasks.{task} (configured: "
                            f"{', '.join(sorted(cfg.rewards.tasks))})")
    kinds = record_kinds(records, cfg.data)
    image_tasks = sorted({r.task for r in records if kinds[r.uid] in IMAGE_KINDS})
    if not image_tasks:
        return problems
    which = f"the data has image tasks ({', '.join(image_tasks)})"
    if not getattr(backbone, "mmada", None):
        problems.append(f"model.path: {cfg.model.path!r} has no image vocabulary (its config has no MMaDA fields: "
                        f"new_vocab_size, codebook_size, num_vq_tokens), but {which}; use an MMaDA checkpoint")
    tokenizer_dir = getattr(cfg.rollout, "image_tokenizer", None)
    if tokenizer_dir is None:
        problems.append(f"rollout.image_tokenizer: not set, but {which}; set it to the MAGVIT-v2 tokenizer directory")
    elif not Path(tokenizer_dir).is_dir():
        problems.append(f"rollout.image_tokenizer: {tokenizer_dir!r} is not a directory; give the MAGVIT-v2 "
                        "tokenizer directory (config.json + weights)")
    elif getattr(backbone, "mmada", None):
        problems += _check_codebook(tokenizer_dir, backbone.mmada)
    return problems


def _check_codebook(tokenizer_dir: str, mmada: Mapping[str, Any]) -> list[str]:
    """The image tokenizer's codes must be the model's image vocabulary, and its images square grids of
    `num_vq_tokens` codes (read from config.json; the workers load and check the weights)."""
    import json
    import math

    from model.magvit import CONFIG_NAME, MagvitConfig, config_from_json

    config_path = Path(tokenizer_dir) / CONFIG_NAME
    try:
        config = (config_from_json(json.loads(config_path.read_text()), str(config_path)) if config_path.is_file()
                  else MagvitConfig())  # no config.json: the published architecture (as the loader assumes)
    except ValueError as exc:
        return [f"rollout.image_tokenizer: {exc}"]
    problems = []
    codebook, tokens = mmada.get("codebook_size"), mmada.get("num_vq_tokens")
    if codebook is not None and config.num_codes != codebook:
        problems.append(f"rollout.image_tokenizer: {tokenizer_dir!r} has {config.num_codes} codes (2^z_channels, "
                        f"z_channels={config.z_channels}) but the model's codebook_size is {codebook}; use the "
                        "tokenizer the model was trained with")
    if tokens is not None and math.isqrt(tokens) ** 2 != tokens:
        problems.append(f"model.path: num_vq_tokens={tokens} is not a square number; images are square grids of codes")
    return problems
