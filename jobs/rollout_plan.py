"""What `python -m jobs.rollout` will do, decided before any actor starts: the usable prompts of the file, the
shards they are cut into, the seeded sampler calls of each shard, and the manifest that lets a rerun resume.

All of it is a pure function of the arguments and the prompt file, which is what makes a shard reproducible
and a resume safe; `jobs.rollout_shards` runs and writes what is planned here.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("jobs.rollout")

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
IDENTITY_ARGS = ("model", "dtype", "samples_per_prompt", "shard_size", "batch_size", "thinking", "gen_length",
                 "steps", "block_length", "temperature", "remasking", "cfg_scale", "cache", "threshold", "seed",
                 "format", "score")
"""Arguments that shape the output files; a rerun into the same --out must repeat them."""


class RolloutJobError(RuntimeError):
    """The run must not start (or cannot finish); the message says what is wrong and what would be right."""


@dataclass(frozen=True)
class Prompt:
    uid: str
    task: str
    text: str
    answer: str | None
    prompt_ids: tuple[int, ...]


@dataclass(frozen=True)
class Shard:
    index: int
    prompts: tuple[Prompt, ...]


@dataclass(frozen=True)
class Plan:
    """Everything decided before any actor starts."""

    prompts: list[Prompt]
    shards: list[Shard]
    bad_rows: list[str]
    fingerprint: str
    network_source: Any  # actors.network_source.NetworkSource


# ---------------------------------------------------------------------------------------------- prompts
def make_plan(args: argparse.Namespace) -> Plan:
    """Read and check the prompts, build the chat prompts and cut them into shards."""
    dataset, parts = load_inputs(args)
    # a checkpoint as an absolute path: a worker's working directory may not be ours
    network_source = os.path.abspath(parts.source) if isinstance(parts.source, str) else parts.source
    bad_rows: list[str] = []
    prompts: list[Prompt] = []
    digest = hashlib.blake2b(digest_size=16)
    for record in dataset.records:
        digest.update(json.dumps([record.uid, record.task, record.prompt, record.answer, record.image]).encode())
        prompt = text_prompt(record, parts.tokenizer, parts.config, args)
        if isinstance(prompt, str):
            bad_rows.append(prompt)
        else:
            prompts.append(prompt)
    if bad_rows:  # (PromptDataset has logged the rows it skipped itself)
        log.warning("skipped %d row(s) this job cannot sample:\n  %s", len(bad_rows), "\n  ".join(bad_rows))
    bad_rows = list(dataset.problems) + bad_rows
    if not prompts:
        raise RolloutJobError(f"no usable rows in {args.prompts}:\n  " + "\n  ".join(bad_rows))
    size = args.shard_size
    shards = [Shard(k, tuple(prompts[k * size:(k + 1) * size])) for k in range(-(-len(prompts) // size))]
    return Plan(prompts, shards, bad_rows, digest.hexdigest(), network_source)


def load_inputs(args: argparse.Namespace) -> tuple[Any, Any]:
    """The prompt file (a `PromptDataset`) and the model's parts, each failure as a RolloutJobError."""
    from jobs.data import DataError, PromptDataset
    from model.resolve import ModelSpecError, model_parts

    try:
        dataset = PromptDataset(args.prompts, default_task="text", read_images=False)  # image rows are refused
    except DataError as exc:
        raise RolloutJobError(str(exc)) from exc
    try:
        parts = model_parts(args.model, key="--model")
    except ModelSpecError as exc:
        raise RolloutJobError(str(exc)) from exc
    return dataset, parts


def text_prompt(record: Any, tokenizer: Any, config: Any, args: argparse.Namespace) -> Prompt | str:
    """The record as a chat Prompt, or (a str) the bad-row line saying why this job cannot sample it."""
    from model.templates import chat_prompt_ids

    if record.task != "text":
        return f"{record.source}: task {record.task!r}; jobs.rollout samples text only (task 'text')"
    if record.image is not None:
        return f"{record.source}: has an image; jobs.rollout samples text only (no image column)"
    ids = chat_prompt_ids(tokenizer, record.prompt, thinking=args.thinking)
    if len(ids) + args.gen_length > config.max_sequence_length:
        return (f"{record.source}: the chat prompt has {len(ids)} tokens; with --gen-length "
                f"{args.gen_length} that exceeds the model's max_sequence_length {config.max_sequence_length}")
    if config.mask_token_id in ids:
        return f"{record.source}: the prompt contains the mask token; remove it"
    return Prompt(record.uid, record.task, record.prompt, record.answer, tuple(ids))


# ---------------------------------------------------------------------------------------------- sampler calls
def shard_seed(seed: int, shard: int, call: int) -> int:
    """Seed of sampler call `call` of shard `shard`: a pure function of (run seed, shard, call), 63 bits."""
    from rl.masking import stable_seed

    return stable_seed("jobs.rollout", seed, shard, call)


def shard_calls(shard: Shard, args: argparse.Namespace) -> list[tuple[int, list[Any]]]:
    """The sampler calls of a shard: (seed, PromptRequests) with at most --batch-size rows each."""
    from actors.rollout import PromptRequest

    requests = [PromptRequest(p.prompt_ids, p.uid, i, "text", task=p.task, prompt=p.text, answer=p.answer)
                for p in shard.prompts for i in range(args.samples_per_prompt)]
    size = args.batch_size
    return [(shard_seed(args.seed, shard.index, j), requests[j * size:(j + 1) * size])
            for j in range(-(-len(requests) // size))]


# ---------------------------------------------------------------------------------------------- manifest
def identity(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments recorded in the manifest (a path model as an absolute path)."""
    from model.resolve import NAMES

    values = {name: getattr(args, name) for name in IDENTITY_ARGS}
    if values["model"] not in NAMES:
        values["model"] = os.path.abspath(values["model"])
    return values


def make_manifest(args: argparse.Namespace, plan: Plan) -> dict[str, Any]:
    """The content of DIR/manifest.json: what a rerun into DIR must repeat to resume."""
    return {"version": MANIFEST_VERSION, "args": identity(args),
            "data": {"path": os.path.abspath(args.prompts), "fingerprint": plan.fingerprint,
                     "prompts": len(plan.prompts), "bad_rows": len(plan.bad_rows)},
            "shards": len(plan.shards)}


def check_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Refuse (naming each difference) when the manifest at `path` was written with other arguments or data."""
    saved = json.loads(path.read_text())
    differences = [f"--{k.replace('_', '-')}: {saved['args'].get(k)!r} there, {v!r} now"
                   for k, v in manifest["args"].items() if saved["args"].get(k) != v]
    if saved["data"]["fingerprint"] != manifest["data"]["fingerprint"]:
        differences.append(f"--prompts: the prompt data differs from the data of that run "
                           f"({saved['data']['path']}, fingerprint {saved['data']['fingerprint']} there, "
                           f"{manifest['data']['fingerprint']} now)")
    if differences:
        raise RolloutJobError(f"{path} was written by a run with other arguments or data:\n  "
                              + "\n  ".join(differences)
                              + "\nrerun with that run's arguments to resume it, or use a new --out")
