"""The shards of `python -m jobs.rollout` after planning: run on rollout workers (an `actors.group.ActorGroup`),
scored with the config's reward terms (`generate.score`), turned into output rows from the batch's columns,
written as shard files (t2i images as PNG files beside them), and concatenated into DIR/rollouts.<fmt>.

A shard file exists only complete (written atomically, after its images), so the files on disk are the resume
state: the shards still to do are those without a complete file (`prepare_out_dir`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jobs.rollout_plan import MANIFEST, Plan, RolloutJobError, Shard, check_manifest
from model.atomic_write import write_atomic

log = logging.getLogger("jobs.rollout")

SHARDS_DIR = "shards"
IMAGES_DIR = "images"


# ---------------------------------------------------------------------------------------------- workers
def start_worker(rollout_cfg: Any, network_source: Any, dtype: str, index: int, generation: int) -> Any:
    """`start` of the workers' ActorGroup: one RolloutWorker actor with the resources of `rollout_cfg`."""
    from actors.rollout import start_workers

    return start_workers(dataclasses.replace(rollout_cfg, num_workers=1), network_source, dtype=dtype)[0]


def await_ready(workers: Sequence[Any], cfg: Any) -> None:
    """Wait until every worker has built its model and image tokenizer, within `rollout.start_timeout_s`, so a
    model that cannot load fails here, once, rather than as every shard's error, and a shard's deadline
    measures its sampling only."""
    from actors.group import ActorCallError, gather

    try:
        gather([w.version.remote() for w in workers], "start", "rollout worker", cfg.rollout.start_timeout_s,
               "rollout.start_timeout_s")
    except ActorCallError as exc:
        raise RolloutJobError(f"the rollout workers could not build model.path {cfg.model.path!r} (rollout.image_"
                              f"tokenizer {cfg.rollout.image_tokenizer!r}): {exc}") from exc


class ShardScheduler:
    """Runs shards on the workers of an ActorGroup, one shard per worker at a time. A worker that dies, or does
    not finish its shard within `timeout_s` (hung, stopped), is killed and replaced in its slot
    (`ActorGroup.replace`), and the shard goes to the fresh worker with the same seeds and rows, at most
    `max_attempts` tries per shard. A shard whose sampler raised stops the run (it would raise again)."""

    TIMEOUT_KEY = "rollout.sample_timeout_s"

    def __init__(self, group: Any, *, timeout_s: float, max_attempts: int, ready: Callable[[list], None]):
        self.group, self.timeout_s, self.max_attempts, self.ready = group, timeout_s, max_attempts, ready
        self.failures: Counter = Counter()
        """Tries that failed, by how: `died` or `timeout`."""

    def run(self, shards: Sequence[Shard], submit: Callable[[Any, Shard], list[Any]]) -> Iterator[tuple[Shard, list]]:
        """Yield (shard, results of its `submit(worker, shard)` refs) as shards finish, in finishing order."""
        queue, attempts = deque(shards), Counter()
        idle, running = list(range(len(self.group))), {}  # slot -> (shard, refs, deadline)
        while queue or running:
            while queue and idle:
                slot, shard = idle.pop(0), queue.popleft()
                attempts[shard.index] += 1
                running[slot] = (shard, submit(self.group[slot], shard), time.monotonic() + self.timeout_s)
            slot, outcome = self._next_finished(running)
            shard, refs, _ = running.pop(slot)
            if outcome.status == "ok":
                outcome, results = self._results(refs)
            if outcome.status == "ok":
                idle.append(slot)
                yield shard, results
                continue
            what = outcome.describe(self.timeout_s, self.TIMEOUT_KEY)
            if not outcome.actor_failed:
                raise RolloutJobError(f"shard {shard.index} failed: {what}") from outcome.error
            self.failures[outcome.status] += 1
            if attempts[shard.index] >= self.max_attempts:
                raise RolloutJobError(f"shard {shard.index}: {attempts[shard.index]} tries failed (generate.max_attempts "
                                      f"{self.max_attempts}); last: worker {slot}: {what}") from outcome.error
            log.warning("shard %d: worker %d failed (%s); it goes to a fresh worker", shard.index, slot, what)
            self.ready([self.group.replace(slot)])
            idle.append(slot)
            queue.appendleft(shard)

    def _next_finished(self, running: dict[int, tuple]) -> tuple[int, Any]:
        """(slot, Outcome) of the first shard to end: its last call finished (a worker runs a shard's calls in
        order), or the earliest deadline passed (that shard's outcome is `timeout`)."""
        from actors.group import wait

        deadlines = {slot: deadline for slot, (_, _, deadline) in running.items()}
        timeout = max(0.0, min(deadlines.values()) - time.monotonic())
        slot, outcome = next(wait({slot: refs[-1] for slot, (_, refs, _) in running.items()}, timeout))
        if outcome.status == "timeout":
            slot = min(deadlines, key=deadlines.__getitem__)
        return slot, outcome

    @staticmethod
    def _results(refs: list[Any]) -> tuple[Any, list]:
        """(the first failed Outcome, or the last ok one; every call's value in order) of finished calls."""
        from actors.group import wait

        values: dict[int, Any] = {}
        for call, outcome in wait(dict(enumerate(refs)), None):
            if outcome.status != "ok":
                return outcome, []
            values[call] = outcome.value
        return outcome, [values[call] for call in range(len(refs))]


def sampler_submit(cfg: Any, plan: Plan, load_image: Callable[[str], Any]) -> Callable[[Any, Shard], list[Any]]:
    """`submit` for ShardScheduler.run: a shard's sampler calls on a worker, with the tree's two samplers."""
    return functools.partial(submit_shard, cfg=cfg, plan=plan, load_image=load_image)


def submit_shard(worker: Any, shard: Shard, *, cfg: Any, plan: Plan, load_image: Callable[[str], Any]) -> list[Any]:
    from jobs.rollout_plan import shard_calls

    return [worker.sample.remote(requests, text=cfg.rollout.sampler, image=cfg.rollout.image_sampler, seed=seed)
            for seed, requests in shard_calls(shard, cfg, plan.tokenizer, load_image)]


# ---------------------------------------------------------------------------------------------- rows
def score_terms(cfg: Any, tasks: Sequence[str]) -> list[str]:
    """The reward terms of `tasks` (their columns in the output), sorted; none without `generate.score`."""
    if not cfg.generate.score:
        return []
    return sorted({term.name for task in tasks for term in cfg.rewards.tasks[task]})


def shard_rows(shard: Shard, calls: list[tuple[int, list]], batches: list[Any], cfg: Any, scorer: Any = None
               ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One output row per request, in request order, from the columns of the shard's RolloutBatches (one per
    call), and the t2i images to write (relative path -> H x W x 3 uint8 array). With a `scorer` the shard's
    batch is scored first, in one call, and every row gets reward (the weighted total), rewards and
    reward_reasons (its task's terms)."""
    from rl.batch import RolloutBatch

    batch = RolloutBatch.concat(batches)  # the calls' rows in request order (left re-padding moves no span's width)
    if scorer is not None:
        batch, _ = scorer.score(batch)
    placed = [(seed, seed_row, request) for seed, requests in calls for seed_row, request in enumerate(requests)]
    rows, images = [], {}
    for r, (seed, seed_row, request) in enumerate(placed):
        start, end = int(batch.response_start[r]), int(batch.response_end[r])
        response_ids = batch.input_ids[r, start:end].tolist()
        image = None
        if batch.kind[r] == "t2i":  # the image codes, and the decoded image beside the shard
            response_ids = [token - batch.score_vocab[r][0] for token in response_ids]
            image = f"{IMAGES_DIR}/{quote(batch.uid[r], safe='')}-{batch.sample_index[r]}.png"
            images[image] = batch.image[r]
        row = {
            "uid": batch.uid[r], "sample_index": batch.sample_index[r], "task": batch.task[r], "kind": batch.kind[r],
            "prompt": batch.prompt[r], "answer": batch.answer[r], "prompt_ids": list(request.prompt_ids),
            "response": batch.response[r], "response_ids": response_ids,
            "reveal_step": batch.reveal_step[r, start:end].tolist(),
            "response_length": int(batch.scored_mask[r].sum()), "policy_version": batch.policy_version[r],
            "seed": seed, "seed_row": seed_row, "shard": shard.index, "image": image,
        }
        if scorer is not None:
            terms = [term.name for term in cfg.rewards.tasks[batch.task[r]]]
            row["reward"] = batch.total[r]
            row["rewards"] = {term: batch.rewards[term][r] for term in terms}
            row["reward_reasons"] = {term: batch.reward_reasons[term][r] for term in terms}
        rows.append(row)
    return rows, images


# ---------------------------------------------------------------------------------------------- files
def shard_path(out: Path, index: int, fmt: str) -> Path:
    return out / SHARDS_DIR / f"shard-{index:05d}.{fmt}"


def parquet_schema(terms: Sequence[str]) -> Any:
    import pyarrow as pa

    ints = pa.list_(pa.int64())
    fields = [("uid", pa.string()), ("sample_index", pa.int64()), ("task", pa.string()), ("kind", pa.string()),
              ("prompt", pa.string()), ("answer", pa.string()), ("prompt_ids", ints), ("response", pa.string()),
              ("response_ids", ints), ("reveal_step", ints), ("response_length", pa.int64()),
              ("policy_version", pa.int64()), ("seed", pa.int64()), ("seed_row", pa.int64()), ("shard", pa.int64()),
              ("image", pa.string())]
    if terms:
        fields += [("reward", pa.float64()), ("rewards", pa.struct([(t, pa.float64()) for t in terms])),
                   ("reward_reasons", pa.struct([(t, pa.string()) for t in terms]))]
    return pa.schema(fields)


def write_shard(out: Path, index: int, rows: list[dict[str, Any]], images: dict[str, Any], fmt: str,
                terms: Sequence[str]) -> None:
    """The shard's images (each atomically), then its rows file (atomically): a complete file means complete images."""
    from PIL import Image

    if images:
        (out / IMAGES_DIR).mkdir(exist_ok=True)
    for relative, array in images.items():
        write_atomic(out / relative, lambda path, array=array: Image.fromarray(array).save(path, format="PNG"))
    path = shard_path(out, index, fmt)
    if fmt == "jsonl":
        write_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(rows, schema=parquet_schema(terms))
        write_atomic(path, functools.partial(pq.write_table, table))


def count_rows(path: Path, fmt: str) -> int:
    if fmt == "jsonl":
        with open(path, "rb") as handle:
            return sum(1 for _ in handle)
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def merge(out: Path, shards: list[Shard], fmt: str, terms: Sequence[str]) -> Path:
    """Concatenate the shard files in shard order into DIR/rollouts.<fmt> (atomically)."""
    paths = [shard_path(out, s.index, fmt) for s in shards]
    if fmt == "jsonl":
        return write_atomic(out / f"rollouts.{fmt}", functools.partial(concat_jsonl, paths))
    return write_atomic(out / f"rollouts.{fmt}", functools.partial(concat_parquet, paths, terms))


def concat_jsonl(paths: list[Path], target: Path) -> None:
    with open(target, "wb") as merged:
        for path in paths:
            merged.write(path.read_bytes())


def concat_parquet(paths: list[Path], terms: Sequence[str], target: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.concat_tables([pq.read_table(p, schema=parquet_schema(terms)) for p in paths]), target)


def prepare_out_dir(out: Path, manifest: dict[str, Any], plan: Plan, cfg: Any) -> list[Shard]:
    """Check or write the manifest, delete partial files, and return the shards still to do."""
    shards_dir = out / SHARDS_DIR
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        check_manifest(manifest_path, manifest)
    elif shards_dir.is_dir() and any(shards_dir.iterdir()):
        raise RolloutJobError(f"{shards_dir} has files but {manifest_path} is missing, so they cannot be trusted; "
                              "use an empty generate.out (--out)")
    shards_dir.mkdir(parents=True, exist_ok=True)
    if not manifest_path.exists():
        write_atomic(manifest_path, json.dumps(manifest, indent=2) + "\n")
    partial = sorted(shards_dir.glob(".shard-*.tmp-*")) + sorted((out / IMAGES_DIR).glob(".*.tmp-*"))
    for path in partial:
        path.unlink()
    if partial:
        log.warning("deleted %d partial file(s) left by an interrupted run", len(partial))
    return pending_shards(out, plan, cfg.generate)


def pending_shards(out: Path, plan: Plan, generate: Any) -> list[Shard]:
    """The shards without a complete file; a file with another row count is deleted (it is redone)."""
    pending = []
    for shard in plan.shards:
        path = shard_path(out, shard.index, generate.format)
        expected = len(shard.records) * generate.samples_per_prompt
        if path.exists():
            rows = count_rows(path, generate.format)
            if rows == expected:
                continue
            log.warning("%s has %d rows, expected %d; generating it again", path, rows, expected)
            path.unlink()
        pending.append(shard)
    return pending
