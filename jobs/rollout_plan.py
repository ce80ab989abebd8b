"""What `python -m jobs.rollout` will do, decided before any actor starts: the usable prompts of the file, the
shards they are cut into, the seeded sampler calls of each shard, and the manifest that lets a rerun resume.

All of it is a pure function of the config tree and the prompt file, which is what makes a shard reproducible
and a resume safe; `jobs.rollout_shards` runs and writes what is planned here. The prompts are read, checked
and turned into requests by the training driver's own functions (`jobs.data`, `jobs.multitask`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MANIFEST = "manifest.json"
MANIFEST_VERSION = 2
IDENTITY_KEYS = ("model.path", "model.tiny_size", "eval.dtype", "run.seed", "data.default_task", "data.thinking",
                 "data.task_kinds", "rollout.sampler", "rollout.image_sampler", "rollout.image_tokenizer",
                 "generate.samples_per_prompt", "generate.shard_size", "generate.batch_size", "generate.format",
                 "generate.score")
"""The config keys that shape the output files (and `rewards.tasks` when `generate.score`); a rerun into the same
`generate.out` must repeat them. Worker counts and resources are not among them: they never change a row."""


class RolloutJobError(RuntimeError):
    """The run must not start (or cannot finish); the message says what is wrong and what would be right."""


@dataclass(frozen=True)
class Shard:
    index: int
    records: tuple[Any, ...]  # jobs.data.PromptRecord, in file order


@dataclass(frozen=True)
class Plan:
    """Everything decided before any actor starts."""

    prompts: list[str]  # the prompt files
    records: list[Any]  # the usable PromptRecords
    shards: list[Shard]
    bad_rows: list[str]
    fingerprint: str
    network_source: Any  # actors.network_source.NetworkSource
    tokenizer: Any
    tasks: list[str]  # the dataset tasks present, sorted


# ---------------------------------------------------------------------------------------------- prompts
def prompts_files(cfg: Any) -> list[str]:
    """`generate.prompts`, else the files of `data.train` in order (a mixture's weights do not apply: every
    prompt is sampled)."""
    return [cfg.generate.prompts] if cfg.generate.prompts else cfg.data.train_files


def make_plan(cfg: Any) -> Plan:
    """Read and check the prompts as the training driver does, and cut them into shards. Bad rows (an mmu row
    without its image, a prompt the model cannot take, ...) are reported by file:row and skipped; data that does
    not fit the config (image kinds without an MMaDA model or `rollout.image_tokenizer`; with `generate.score`, a
    task without reward terms) is a ConfigError."""
    from jobs.configtree import ConfigError
    from jobs.data import PromptDataset, check_training_prompts
    from jobs.multitask import check_tasks, image_tasks
    from jobs.train_parts import policy_parts

    paths = prompts_files(cfg)
    policy = policy_parts(cfg)
    dataset = PromptDataset(paths, default_task=cfg.data.default_task, fields=cfg.data.fields,
                            image_tasks=image_tasks(cfg.data))
    fingerprint = data_fingerprint(dataset.records)
    check_training_prompts(dataset, cfg, policy.tokenizer, policy.config)
    problems = check_tasks(cfg, dataset.records, policy.config)
    if not cfg.generate.score:  # reward terms matter only to scoring
        problems = [p for p in problems if not p.startswith("rewards.tasks:")]
    if problems:
        raise ConfigError(problems, ", ".join(paths))
    records, size = dataset.records, cfg.generate.shard_size
    shards = [Shard(k, tuple(records[k * size:(k + 1) * size])) for k in range(-(-len(records) // size))]
    # a checkpoint as an absolute path: a worker's working directory may not be ours
    source = os.path.abspath(policy.source) if isinstance(policy.source, str) else policy.source
    return Plan(paths, records, shards, list(dataset.problems), fingerprint, source, policy.tokenizer,
                sorted({r.task for r in records}))


def data_fingerprint(records: list[Any]) -> str:
    """Identifies the rows as read (before the prompt checks): uid, task, prompt, answer, image, extra fields."""
    digest = hashlib.blake2b(digest_size=16)
    for r in records:
        prompt = getattr(r.prompt, "messages", r.prompt)  # a chat prompt's whole conversation
        digest.update(json.dumps([r.uid, r.task, prompt, r.answer, r.image, r.meta], sort_keys=True,
                                 default=str).encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------- sampler calls
def shard_seed(seed: int, shard: int, call: int) -> int:
    """Seed of sampler call `call` of shard `shard`: a pure function of (run seed, shard, call), 63 bits."""
    from rl.masking import stable_seed

    return stable_seed("jobs.rollout", seed, shard, call)


def shard_calls(shard: Shard, cfg: Any, tokenizer: Any, load_image: Callable[[str], Any]) -> list[tuple[int, list]]:
    """The sampler calls of a shard: (seed, PromptRequests) with at most `generate.batch_size` rows each; the
    requests are the training driver's (`jobs.multitask.build_requests`), `generate.samples_per_prompt` per
    prompt, in (prompt, sample index) order."""
    from jobs.multitask import build_requests

    requests = build_requests(shard.records, tokenizer, cfg, load_image, samples=cfg.generate.samples_per_prompt)
    size = cfg.generate.batch_size
    return [(shard_seed(cfg.run.seed, shard.index, j), requests[j * size:(j + 1) * size])
            for j in range(-(-len(requests) // size))]


# ---------------------------------------------------------------------------------------------- manifest
def identity(cfg: Any) -> dict[str, Any]:
    """The settings recorded in the manifest, as dotted leaf keys (JSON values; paths made absolute)."""
    from jobs.configtree import to_dict
    from model.resolve import NAMES

    tree = to_dict(cfg)
    values: dict[str, Any] = {}
    for key in IDENTITY_KEYS + (("rewards.tasks",) if cfg.generate.score else ()):
        section, name = key.split(".")
        value = tree[section][name]
        if key == "model.path" and value not in NAMES or key == "rollout.image_tokenizer" and value is not None:
            value = os.path.abspath(value)
        values.update(_leaves(key, value))
    return json.loads(json.dumps(values))


def _leaves(key: str, value: Any) -> dict[str, Any]:
    """`value` flattened into dotted keys (a mapping becomes one key per leaf; lists stay values)."""
    if not isinstance(value, dict):
        return {key: value}
    return {k: v for name, item in value.items() for k, v in _leaves(f"{key}.{name}", item).items()}


def make_manifest(cfg: Any, plan: Plan) -> dict[str, Any]:
    """The content of DIR/manifest.json: what a rerun into DIR must repeat to resume."""
    return {"version": MANIFEST_VERSION, "settings": identity(cfg),
            "data": {"path": ", ".join(map(os.path.abspath, plan.prompts)), "fingerprint": plan.fingerprint,
                     "prompts": len(plan.records), "bad_rows": len(plan.bad_rows)},
            "shards": len(plan.shards)}


def check_manifest(path: Any, manifest: dict[str, Any]) -> None:
    """Refuse (naming each difference) when the manifest at `path` was written with other settings or data."""
    saved = json.loads(path.read_text())
    if saved.get("version") != MANIFEST_VERSION:
        raise RolloutJobError(f"{path} was written by another version of jobs.rollout (manifest version "
                              f"{saved.get('version')!r}; this one writes version {MANIFEST_VERSION}), so its shards "
                              "cannot be resumed; use a new generate.out (--out)")
    there, now = saved["settings"], manifest["settings"]
    keys = list(now) + [k for k in there if k not in now]
    differences = [f"{k}: {_shown(there, k)} there, {_shown(now, k)} now" for k in keys
                   if _shown(there, k) != _shown(now, k)]
    if saved["data"]["fingerprint"] != manifest["data"]["fingerprint"]:
        differences.append(f"generate.prompts: the prompt data differs from the data of that run "
                           f"({saved['data']['path']}, fingerprint {saved['data']['fingerprint']} there, "
                           f"{manifest['data']['fingerprint']} now)")
    if differences:
        raise RolloutJobError(f"{path} was written by a run with other settings or data:\n  "
                              + "\n  ".join(differences)
                              + "\nrerun with that run's settings to resume it, or use a new generate.out (--out)")


def _shown(settings: dict[str, Any], key: str) -> str:
    return repr(settings[key]) if key in settings else "(not set)"
