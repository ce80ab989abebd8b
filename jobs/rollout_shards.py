"""The shards of `python -m jobs.rollout` after planning: run on worker actors, scored with `--score` (the
shard's batch through the reward router), turned into output rows from the batch's columns, written as shard
files, and concatenated into DIR/rollouts.<fmt>.

A shard file exists only complete (written atomically), so the files on disk are the resume state: the shards
still to do are those without a complete file (`prepare_out_dir`).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from jobs.rollout_plan import MANIFEST, Plan, RolloutJobError, Shard, check_manifest, shard_calls
from model.atomic_write import write_atomic

log = logging.getLogger("jobs.rollout")

SHARDS_DIR = "shards"
TEXT_DEFAULT_WEIGHTS = {"correctness": 2.0, "format": 0.5}  # rewards.config.default_tasks()["text"]


# ---------------------------------------------------------------------------------------------- workers
class ShardScheduler:
    """Runs shards on worker actors, one shard per worker at a time; a shard whose worker died goes to a
    fresh worker from `start_worker()` (at most `max_attempts` tries per shard)."""

    def __init__(self, workers: list[Any], start_worker: Callable[[], Any], *, max_attempts: int):
        self.workers, self.start_worker, self.max_attempts = list(workers), start_worker, max_attempts
        self.restarts = 0
        """Dead workers replaced so far."""

    def run(self, shards: Sequence[Shard], submit: Callable[[Any, Shard], list[Any]]) -> Iterator[tuple[Shard, list[Any]]]:
        """Yield (shard, results of its `submit(worker, shard)` refs) as shards finish, in finishing order."""
        import ray

        queue, attempts = deque(shards), Counter()
        idle, running = list(range(len(self.workers))), {}  # last ref of a shard -> (slot, shard, refs)
        while queue or running:
            while queue and idle:
                slot, shard = idle.pop(0), queue.popleft()
                attempts[shard.index] += 1
                refs = submit(self.workers[slot], shard)
                running[refs[-1]] = (slot, shard, refs)  # an actor runs its calls in order: the last ends last
            (done,), _ = ray.wait(list(running), num_returns=1)
            slot, shard, refs = running.pop(done)
            try:
                results = ray.get(refs)
            except ray.exceptions.RayActorError as exc:
                self.replace_worker(slot)
                idle.append(slot)
                if attempts[shard.index] >= self.max_attempts:
                    raise RolloutJobError(f"shard {shard.index}: its worker died {attempts[shard.index]} time(s) "
                                          f"(--max-attempts {self.max_attempts}); last error: "
                                          f"{str(exc).strip().splitlines()[0]}") from exc
                log.warning("the worker of shard %d died; it goes to a fresh worker", shard.index)
                queue.appendleft(shard)
                continue
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None) or exc
                raise RolloutJobError(f"shard {shard.index} failed: {type(cause).__name__}: {cause}") from exc
            idle.append(slot)
            yield shard, results

    def replace_worker(self, slot: int) -> None:
        """Kill the (dead) worker in `slot` and put a fresh one there."""
        import ray

        ray.kill(self.workers[slot])
        self.workers[slot] = self.start_worker()
        self.restarts += 1


def start_rollout_workers(args: argparse.Namespace, network_source: Any, count: int) -> list[Any]:
    from actors.config import RolloutConfig
    from actors.rollout import start_workers

    cfg = RolloutConfig(num_workers=count, cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker)
    return start_workers(cfg, network_source, dtype=args.dtype)


def start_one_worker(args: argparse.Namespace, network_source: Any) -> Any:
    """`start_worker` for ShardScheduler: one fresh rollout worker."""
    return start_rollout_workers(args, network_source, 1)[0]


def sampler_submit(args: argparse.Namespace) -> Callable[[Any, Shard], list[Any]]:
    """`submit` for ShardScheduler.run: a shard's sampler calls on a worker, with this run's sampler settings."""
    from actors.config import TextSamplerConfig
    from jobs.sampler_flags import sampler_knobs

    return functools.partial(submit_shard, args=args, text=TextSamplerConfig(**sampler_knobs(args)))


def submit_shard(worker: Any, shard: Shard, *, args: argparse.Namespace, text: Any) -> list[Any]:
    return [worker.sample.remote(requests, seed=seed, text=text) for seed, requests in shard_calls(shard, args)]


# ---------------------------------------------------------------------------------------------- rows
def shard_rows(shard: Shard, calls: list[tuple[int, list[Any]]], batches: list[Any], router: Any = None
               ) -> list[dict[str, Any]]:
    """One output row per request, in request order, from the columns of the shard's RolloutBatches (one per
    call); with a `router` (`--score`) the shard's batch is scored first, in one call, and every row gets
    reward (the weighted total), rewards and reward_reasons (per term)."""
    from rl.batch import RolloutBatch

    batch = RolloutBatch.concat(batches)  # the calls' rows in request order (left re-padding moves no span's width)
    if router is not None:
        batch, _ = router.score(batch)
    placed = [(seed, seed_row, request) for seed, requests in calls for seed_row, request in enumerate(requests)]
    rows = []
    for r, (seed, seed_row, request) in enumerate(placed):
        start, end = int(batch.response_start[r]), int(batch.response_end[r])
        row = {
            "uid": batch.uid[r], "sample_index": batch.sample_index[r], "task": batch.task[r],
            "prompt": batch.prompt[r], "answer": batch.answer[r], "prompt_ids": list(request.prompt_ids),
            "response": batch.response[r], "response_ids": batch.input_ids[r, start:end].tolist(),
            "reveal_step": batch.reveal_step[r, start:end].tolist(),
            "response_length": int(batch.scored_mask[r].sum()), "policy_version": batch.policy_version[r],
            "seed": seed, "seed_row": seed_row, "shard": shard.index,
        }
        if router is not None:
            row["reward"] = batch.total[r]
            row["rewards"] = {term: values[r] for term, values in batch.rewards.items()}
            row["reward_reasons"] = {term: reasons[r] for term, reasons in batch.reward_reasons.items()}
        rows.append(row)
    return rows


def rewards_config(terms: Sequence[str]) -> Any:
    """Task `text` scored by `terms`, weighted as in the default config (1.0 for terms it lacks)."""
    from rewards.config import RewardsConfig, RewardTermConfig

    return RewardsConfig(tasks={"text": [RewardTermConfig(t, TEXT_DEFAULT_WEIGHTS.get(t, 1.0)) for t in terms]})


def check_score_terms(terms: Sequence[str]) -> None:
    """Bad --score term names fail here, before anything starts."""
    from rewards import registry

    try:
        rewards_config(terms)
        for term in terms:
            registry.check(term)
    except ValueError as exc:
        raise RolloutJobError(f"--score: {exc}") from exc


# ---------------------------------------------------------------------------------------------- files
def shard_path(out: Path, index: int, fmt: str) -> Path:
    return out / SHARDS_DIR / f"shard-{index:05d}.{fmt}"


def parquet_schema(terms: Sequence[str]) -> Any:
    import pyarrow as pa

    ints = pa.list_(pa.int64())
    fields = [("uid", pa.string()), ("sample_index", pa.int64()), ("task", pa.string()), ("prompt", pa.string()),
              ("answer", pa.string()), ("prompt_ids", ints), ("response", pa.string()), ("response_ids", ints),
              ("reveal_step", ints), ("response_length", pa.int64()), ("policy_version", pa.int64()),
              ("seed", pa.int64()), ("seed_row", pa.int64()), ("shard", pa.int64())]
    if terms:
        fields += [("reward", pa.float64()), ("rewards", pa.struct([(t, pa.float64()) for t in sorted(terms)])),
                   ("reward_reasons", pa.struct([(t, pa.string()) for t in sorted(terms)]))]
    return pa.schema(fields)


def write_rows(path: Path, rows: list[dict[str, Any]], fmt: str, terms: Sequence[str]) -> None:
    if fmt == "jsonl":
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        write_atomic(path, text)
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


def prepare_out_dir(out: Path, manifest: dict[str, Any], plan: Plan, args: argparse.Namespace) -> list[Shard]:
    """Check or write the manifest, delete partial files, and return the shards still to do."""
    shards_dir = out / SHARDS_DIR
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        check_manifest(manifest_path, manifest)
    elif shards_dir.is_dir() and any(shards_dir.iterdir()):
        raise RolloutJobError(f"{shards_dir} has files but {manifest_path} is missing, so they cannot be trusted; "
                              "use an empty --out")
    shards_dir.mkdir(parents=True, exist_ok=True)
    if not manifest_path.exists():
        write_atomic(manifest_path, json.dumps(manifest, indent=2) + "\n")
    partial = sorted(shards_dir.glob(".shard-*.tmp-*"))
    for path in partial:
        path.unlink()
    if partial:
        log.warning("deleted %d partial shard file(s) left by an interrupted run", len(partial))
    return pending_shards(out, plan, args)


def pending_shards(out: Path, plan: Plan, args: argparse.Namespace) -> list[Shard]:
    """The shards without a complete file; a file with another row count is deleted (it is redone)."""
    pending = []
    for shard in plan.shards:
        path = shard_path(out, shard.index, args.format)
        if path.exists():
            rows = count_rows(path, args.format)
            if rows == len(shard.prompts) * args.samples_per_prompt:
                continue
            log.warning("%s has %d rows, expected %d; generating it again", path, rows,
                        len(shard.prompts) * args.samples_per_prompt)
            path.unlink()
        pending.append(shard)
    return pending
