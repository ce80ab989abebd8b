"""Generation at cluster scale: sample N responses per prompt of a file on K Ray rollout workers.

    python -m jobs.rollout --model PATH|demo|tiny --prompts FILE.jsonl|.parquet --out DIR --workers K \\
        --samples-per-prompt N [--gen-length L --steps S --block-length B --temperature T ...] \\
        [--format jsonl|parquet] [--shard-size S] [--seed SEED] [--score TERM ...] [--address auto]

1. The prompt file is read with `jobs.data.PromptDataset` (task `text` for rows without one). Bad rows are
   reported with file and row and skipped; so are rows this job cannot sample: a task other than `text`,
   an image, a prompt that does not fit the model with `--gen-length` tokens after it.
2. Prompts (chat template, thinking instruction unless `--no-thinking`) are cut, in file order, into
   shards of `--shard-size` prompts: shard k holds prompts [kS, (k+1)S), a pure function of the file and S.
3. Shards go to K `RolloutWorker` actors (at most one shard each at a time). Rows of a shard are
   (prompt, sample_index) in order, sampled in calls of at most `--batch-size` rows; call j of shard k is
   seeded with `shard_seed(seed, k, j)`, and the sampler seeds row r of a call from (that seed, r)
   (`model.sampling.row_seed`), so rerunning a shard reproduces it exactly. A shard whose worker died goes
   to a fresh worker (`--max-attempts` tries in all); any other error in a shard stops the run.
4. A finished shard (scored first with `--score`, through `actors.rewards.RewardRouter`) is written to
   `DIR/shards/shard-00042.jsonl|.parquet` atomically: into a hidden temporary file, then renamed. A shard
   file exists only complete; temporary files left by a killed run are deleted on the next start.
5. `DIR/manifest.json` records the arguments that shape the output and a fingerprint of the prompts; a
   rerun with the same ones does only the missing shards, a rerun with others refuses (naming them).
6. At the end the shards are concatenated in shard order into `DIR/rollouts.jsonl|.parquet`, and
   throughput (prompts/s, tokens/s) goes to stdout and `DIR/summary.json`. It is measured from the first
   shard sent to the last one written (scoring and writing included, actor start-up excluded); tokens/s
   counts all `--gen-length` positions of a row (the sampler reveals every one), response_tokens_per_s
   only those through the first EOS.

One output row per (uid, sample_index): uid, sample_index, task, prompt (the user text), answer, prompt_ids
(chat prompt), response (decoded up to the first EOS / end-of-turn), response_ids and reveal_step (all
`--gen-length` positions), response_length (tokens through the first EOS, inclusive), policy_version,
seed and seed_row (the sampler call's seed and the row's index in that call), shard; with `--score` also
reward (weighted total, null when unscorable), rewards and reward_reasons (per term). Other dataset
columns are not copied: join on uid.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from model.atomic_write import write_atomic

log = logging.getLogger("jobs.rollout")

MANIFEST = "manifest.json"
SUMMARY = "summary.json"
SHARDS_DIR = "shards"
MANIFEST_VERSION = 1
IDENTITY_ARGS = ("model", "dtype", "samples_per_prompt", "shard_size", "batch_size", "thinking", "gen_length",
                 "steps", "block_length", "temperature", "remasking", "cfg_scale", "cache", "threshold", "seed",
                 "format", "score")
"""Arguments that shape the output files; a rerun into the same --out must repeat them."""
TEXT_DEFAULT_WEIGHTS = {"correctness": 2.0, "format": 0.5}  # rewards.config.default_tasks()["text"]


class RolloutJobError(RuntimeError):
    """The run must not start (or cannot finish); the message says what is wrong and what would be right."""


# ---------------------------------------------------------------------------------------------- arguments
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    from jobs.sampler_flags import ROLLOUT_DEFAULTS, add_sampler_flags, sampler_knobs
    from model.sampling import check_schedule

    parser = argparse.ArgumentParser(prog="python -m jobs.rollout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint directory, 'demo' (the shipped policy), or 'tiny' / 'tiny-mmada' (a random tiny twin)")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16"], help="weight dtype (default: as stored)")
    parser.add_argument("--prompts", required=True, help="prompt file (.jsonl or .parquet)")
    parser.add_argument("--out", required=True, help="output directory (rerun into it to resume)")
    parser.add_argument("--workers", type=int, default=1, help="rollout worker actors")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, help="Ray CPUs per worker")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs per worker (0: CPU)")
    parser.add_argument("--address", default=None, help="Ray cluster to join ('auto' or host:port); default: "
                                                        "start a local Ray")
    parser.add_argument("--samples-per-prompt", type=int, default=1, help="responses per prompt (N)")
    parser.add_argument("--shard-size", type=int, default=64, help="prompts per shard (S)")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per sampler call within a shard")
    parser.add_argument("--max-attempts", type=int, default=3, help="tries per shard when its worker dies")
    parser.add_argument("--no-thinking", dest="thinking", action="store_false",
                        help="leave out the <think> instruction from the chat prompt")
    add_sampler_flags(parser, ROLLOUT_DEFAULTS)
    parser.add_argument("--seed", type=int, default=0, help="run seed; shard seeds derive from (seed, shard)")
    parser.add_argument("--format", default="jsonl", choices=["jsonl", "parquet"], help="output file format")
    parser.add_argument("--score", nargs="+", default=[], metavar="TERM",
                        help="reward terms to score each response with (correctness, format, a plugin ...)")
    parser.add_argument("--reward-cpus", type=float, default=1.0, help="Ray CPUs per reward actor")
    args = parser.parse_args(list(argv))
    for flag in ("workers", "samples_per_prompt", "shard_size", "batch_size", "max_attempts"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')}: {getattr(args, flag)}; need at least 1")
    if args.cpus_per_worker <= 0 and args.gpus_per_worker <= 0:
        parser.error("--cpus-per-worker and --gpus-per-worker are both 0; a worker must reserve something")
    try:
        check_schedule(**sampler_knobs(args))
    except ValueError as exc:
        parser.error(f"sampler settings: {exc}")
    return args


def identity(args: argparse.Namespace) -> dict[str, Any]:
    """The arguments recorded in the manifest (a path model as an absolute path)."""
    from model.resolve import NAMES

    values = {name: getattr(args, name) for name in IDENTITY_ARGS}
    if values["model"] not in NAMES:
        values["model"] = os.path.abspath(values["model"])
    return values


# ---------------------------------------------------------------------------------------------- prompts
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


def make_plan(args: argparse.Namespace) -> Plan:
    """Read and check the prompts, build the chat prompts and cut them into shards."""
    from jobs.data import DataError, PromptDataset
    from model.resolve import ModelSpecError, model_parts
    from model.templates import chat_prompt_ids

    try:
        dataset = PromptDataset(args.prompts, default_task="text", read_images=False)  # image rows are refused
    except DataError as exc:
        raise RolloutJobError(str(exc)) from exc
    try:
        parts = model_parts(args.model, key="--model")
    except ModelSpecError as exc:
        raise RolloutJobError(str(exc)) from exc
    # a checkpoint as an absolute path: a worker's working directory may not be ours
    network_source = os.path.abspath(parts.source) if isinstance(parts.source, str) else parts.source
    tokenizer, config = parts.tokenizer, parts.config
    bad_rows: list[str] = []
    prompts: list[Prompt] = []
    digest = hashlib.blake2b(digest_size=16)
    for record in dataset.records:
        digest.update(json.dumps([record.uid, record.task, record.prompt, record.answer, record.image]).encode())
        if record.task != "text":
            bad_rows.append(f"{record.source}: task {record.task!r}; jobs.rollout samples text only (task 'text')")
            continue
        if record.image is not None:
            bad_rows.append(f"{record.source}: has an image; jobs.rollout samples text only (no image column)")
            continue
        ids = chat_prompt_ids(tokenizer, record.prompt, thinking=args.thinking)
        if len(ids) + args.gen_length > config.max_sequence_length:
            bad_rows.append(f"{record.source}: the chat prompt has {len(ids)} tokens; with --gen-length "
                            f"{args.gen_length} that exceeds the model's max_sequence_length {config.max_sequence_length}")
            continue
        if config.mask_token_id in ids:
            bad_rows.append(f"{record.source}: the prompt contains the mask token; remove it")
            continue
        prompts.append(Prompt(record.uid, record.task, record.prompt, record.answer, tuple(ids)))
    if bad_rows:  # (PromptDataset has logged the rows it skipped itself)
        log.warning("skipped %d row(s) this job cannot sample:\n  %s", len(bad_rows), "\n  ".join(bad_rows))
    bad_rows = list(dataset.problems) + bad_rows
    if not prompts:
        raise RolloutJobError(f"no usable rows in {args.prompts}:\n  " + "\n  ".join(bad_rows))
    size = args.shard_size
    shards = [Shard(k, tuple(prompts[k * size:(k + 1) * size])) for k in range(-(-len(prompts) // size))]
    return Plan(prompts, shards, bad_rows, digest.hexdigest(), network_source)


def shard_seed(seed: int, shard: int, call: int) -> int:
    """Seed of sampler call `call` of shard `shard`: a pure function of (run seed, shard, call), 63 bits."""
    from rl.masking import stable_seed

    return stable_seed("jobs.rollout", seed, shard, call)


def shard_calls(shard: Shard, args: argparse.Namespace) -> list[tuple[int, list[Any]]]:
    """The sampler calls of a shard: (seed, PromptRequests) with at most --batch-size rows each."""
    from actors.rollout import PromptRequest

    requests = [PromptRequest(p.prompt_ids, p.uid, i, task="text") for p in shard.prompts
                for i in range(args.samples_per_prompt)]
    size = args.batch_size
    return [(shard_seed(args.seed, shard.index, j), requests[j * size:(j + 1) * size])
            for j in range(-(-len(requests) // size))]


def shard_rows(shard: Shard, calls: list[tuple[int, list[Any]]], batches: list[Any]) -> list[dict[str, Any]]:
    """One output row per request, in request order, from the RolloutBatches of the shard's calls."""
    by_uid = {p.uid: p for p in shard.prompts}
    rows = []
    for (seed, requests), batch in zip(calls, batches):
        for r, request in enumerate(requests):
            start, end = int(batch.response_start[r]), int(batch.response_end[r])
            prompt = by_uid[request.uid]
            rows.append({
                "uid": request.uid, "sample_index": request.sample_index, "task": prompt.task,
                "prompt": prompt.text, "answer": prompt.answer, "prompt_ids": list(request.prompt_ids),
                "response": batch.metadata[r]["response"], "response_ids": batch.input_ids[r, start:end].tolist(),
                "reveal_step": batch.reveal_step[r, start:end].tolist(),
                "response_length": int(batch.scored_mask[r].sum()), "policy_version": batch.policy_version[r],
                "seed": seed, "seed_row": r, "shard": shard.index,
            })
    return rows


def score_rows(rows: list[dict[str, Any]], router: Any) -> None:
    """Add reward, rewards and reward_reasons to every row (in place)."""
    from rewards import Sample

    samples = [Sample(task=row["task"], prompt=row["prompt"], response=row["response"], answer=row["answer"],
                      meta={"uid": row["uid"], "sample_index": row["sample_index"]}) for row in rows]
    scored = router.score(samples)
    for i, row in enumerate(rows):
        row["reward"] = scored.total[i]
        row["rewards"] = {term: values[i] for term, values in scored.terms.items()}
        row["reward_reasons"] = {term: reasons[i] for term, reasons in scored.reasons.items()}


def rewards_config(terms: Sequence[str]) -> Any:
    """Task `text` scored by `terms`, weighted as in the default config (1.0 for terms it lacks)."""
    from rewards.config import RewardsConfig, RewardTermConfig

    return RewardsConfig(tasks={"text": [RewardTermConfig(t, TEXT_DEFAULT_WEIGHTS.get(t, 1.0)) for t in terms]})


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
        write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def count_rows(path: Path, fmt: str) -> int:
    if fmt == "jsonl":
        with open(path, "rb") as handle:
            return sum(1 for _ in handle)
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def merge(out: Path, shards: list[Shard], fmt: str, terms: Sequence[str]) -> Path:
    """Concatenate the shard files in shard order into DIR/rollouts.<fmt> (atomically)."""
    target = out / f"rollouts.{fmt}"
    paths = [shard_path(out, s.index, fmt) for s in shards]
    if fmt == "jsonl":
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as merged:
                for path in paths:
                    merged.write(path.read_bytes())
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        def write(tmp: Path) -> None:
            pq.write_table(pa.concat_tables([pq.read_table(p, schema=parquet_schema(terms)) for p in paths]), tmp)
    write_atomic(target, write)
    return target


def prepare_out_dir(out: Path, manifest: dict[str, Any], plan: Plan, args: argparse.Namespace) -> list[Shard]:
    """Check or write the manifest, delete partial files, and return the shards still to do."""
    shards_dir = out / SHARDS_DIR
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        saved = json.loads(manifest_path.read_text())
        differences = [f"--{k.replace('_', '-')}: {saved['args'].get(k)!r} there, {v!r} now"
                       for k, v in manifest["args"].items() if saved["args"].get(k) != v]
        if saved["data"]["fingerprint"] != manifest["data"]["fingerprint"]:
            differences.append(f"--prompts: the prompt data differs from the data of that run "
                               f"({saved['data']['path']}, fingerprint {saved['data']['fingerprint']} there, "
                               f"{manifest['data']['fingerprint']} now)")
        if differences:
            raise RolloutJobError(f"{manifest_path} was written by a run with other arguments or data:\n  "
                                  + "\n  ".join(differences)
                                  + "\nrerun with that run's arguments to resume it, or use a new --out")
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
                ray.kill(self.workers[slot])
                self.workers[slot] = self.start_worker()
                self.restarts += 1
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


def start_rollout_workers(args: argparse.Namespace, network_source: Any, count: int) -> list[Any]:
    from actors.config import RolloutConfig
    from actors.rollout import start_workers

    cfg = RolloutConfig(num_workers=count, cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker)
    return start_workers(cfg, network_source, dtype=args.dtype)


def sampler_submit(args: argparse.Namespace) -> Callable[[Any, Shard], list[Any]]:
    from actors.config import TextSamplerConfig
    from jobs.sampler_flags import sampler_knobs

    text = TextSamplerConfig(**sampler_knobs(args))

    def submit(worker: Any, shard: Shard) -> list[Any]:
        return [worker.sample.remote(requests, seed=seed, text=text) for seed, requests in shard_calls(shard, args)]

    return submit


# ---------------------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from actors.cluster import ResourceError

    try:
        return run(args)
    except (RolloutJobError, ResourceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    plan = make_plan(args)
    manifest = {"version": MANIFEST_VERSION, "args": identity(args),
                "data": {"path": os.path.abspath(args.prompts), "fingerprint": plan.fingerprint,
                         "prompts": len(plan.prompts), "bad_rows": len(plan.bad_rows)},
                "shards": len(plan.shards)}
    if args.score:  # bad term names fail here, before anything starts
        from rewards import registry

        try:
            rewards_config(args.score)
            for term in args.score:
                registry.check(term)
        except ValueError as exc:
            raise RolloutJobError(f"--score: {exc}") from exc
    pending = prepare_out_dir(out, manifest, plan, args)
    stats = {"shards": len(plan.shards), "shards_complete_before": len(plan.shards) - len(pending),
             "shards_generated": [], "rows_generated": 0, "worker_restarts": 0, "bad_rows": plan.bad_rows}
    if pending:
        stats.update(generate(args, plan, pending, out))
    target = merge(out, plan.shards, args.format, args.score)
    summary = json.dumps(stats, indent=2) + "\n"
    write_atomic(out / SUMMARY, summary)
    print(f"{len(plan.shards)} shard(s), {len(pending)} generated now; "
          f"{stats.get('prompts_per_s', 0.0):.2f} prompts/s, {stats.get('tokens_per_s', 0.0):.1f} tokens/s; "
          f"wrote {target}")
    return 0


def generate(args: argparse.Namespace, plan: Plan, pending: list[Shard], out: Path) -> dict[str, Any]:
    """Start Ray and the actors, run the pending shards, write each as it finishes; returns throughput stats."""
    import ray
    from tqdm import tqdm

    from actors.cluster import RoleResources, init_ray
    from actors.config import ClusterConfig
    from actors.rewards import RewardActorsConfig, RewardRouter, reward_roles

    workers_needed = min(args.workers, len(pending))
    roles = [RoleResources("rollout worker", workers_needed, args.cpus_per_worker, args.gpus_per_worker,
                           "--workers", "--cpus-per-worker", "--gpus-per-worker")]
    reward_cfg = rewards_config(args.score) if args.score else None
    actors_cfg = RewardActorsConfig(cpus_per_actor=args.reward_cpus)
    if reward_cfg is not None:
        roles += [replace(role, count_key="--score", cpus_key="--reward-cpus", gpus_key="--reward-cpus")
                  for role in reward_roles(reward_cfg, actors_cfg, has_gpus=False)]
    started_ray = not ray.is_initialized()
    init_ray(ClusterConfig(address=args.address, num_gpus=0 if args.gpus_per_worker == 0 else None), roles)
    router, scheduler = None, None
    try:
        scheduler = ShardScheduler(start_rollout_workers(args, plan.network_source, workers_needed),
                                   lambda: start_rollout_workers(args, plan.network_source, 1)[0],
                                   max_attempts=args.max_attempts)
        try:
            ray.get([w.version.remote() for w in scheduler.workers])  # a model that cannot load fails here, once
        except ray.exceptions.RayError as exc:
            raise RolloutJobError(f"--model {args.model}: the rollout workers could not build it: "
                                  f"{str(exc).strip().splitlines()[-1]}") from exc
        router = RewardRouter(reward_cfg, actors_cfg) if reward_cfg is not None else None
        generated, rows_done, response_tokens = [], 0, 0
        started = time.perf_counter()
        with tqdm(total=len(plan.shards), initial=len(plan.shards) - len(pending), unit="shard",
                  desc="rollout") as progress:
            for shard, batches in scheduler.run(pending, sampler_submit(args)):
                rows = shard_rows(shard, shard_calls(shard, args), batches)
                if router is not None:
                    score_rows(rows, router)
                write_rows(shard_path(out, shard.index, args.format), rows, args.format, args.score)
                generated.append(shard.index)
                rows_done += len(rows)
                response_tokens += sum(row["response_length"] for row in rows)
                progress.update(1)
                progress.set_postfix(rows_per_s=f"{rows_done / (time.perf_counter() - started):.1f}")
        seconds = time.perf_counter() - started
        prompts_done = sum(len(plan.shards[i].prompts) for i in generated)
        stats = {"shards_generated": sorted(generated), "rows_generated": rows_done, "seconds": seconds,
                 "prompts_per_s": prompts_done / seconds, "tokens_per_s": rows_done * args.gen_length / seconds,
                 "response_tokens_per_s": response_tokens / seconds, "worker_restarts": scheduler.restarts}
        if router is not None:
            stats.update(router.health_metrics())
        return stats
    finally:
        if router is not None:
            router.close()
        for worker in scheduler.workers if scheduler is not None else []:
            ray.kill(worker)
        if started_ray:
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
