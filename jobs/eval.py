"""Held-out evaluation of a checkpoint: pass@1, pass@k and format rate, as a JSON summary.

    python -m jobs.eval                                  # the shipped demo policy on data/arithmetic/heldout.jsonl
    python -m jobs.eval --model runs/demo/policy --data data/arithmetic/heldout.jsonl --samples 8 \
        --temperature 0.9 --out runs/demo/eval/summary.json
    python -m jobs.eval --config jobs/configs/demo.yaml   # sampler, thinking, model and data from a training config

Every problem gets K = `--samples` responses from the LLaDA text sampler (`model.generate_text`), scored with
the registered `correctness` and `format` rewards (the ones training uses). pass@k is the unbiased estimator of
Chen et al. 2021 (Codex), averaged over problems: with n = K samples of which c are correct,

    pass@k = 1 - C(n - c, k) / C(n, k)

reported for k = 1, 2, 4, ... up to K, plus K itself (or the `--k` list). A sample the correctness reward cannot
score (None, e.g. a row without a gold answer) counts as not correct and is counted in `unscorable`.

Settings are resolved flag > config (`rollout.sampler`, `data.thinking`, `model.path`, `data.eval`) > the demo
defaults (gen 40, steps 20, block 8, greedy; docs/demo.md). Thinking defaults off for `--model demo` (the
shipped policy was trained without the thinking instruction, as in jobs/sample.py) and on otherwise.

Seeds: sample k of the problems in the batch starting at problem s is drawn with seed
`stable_seed(seed, "eval", k, s)` and `generate_text` derives each row's generator from (that seed, row), so a
run is reproducible from (seed, batch size); a different `--batch-size` draws different (equally valid) samples.
Greedy low-confidence decoding draws nothing random: with K > 1 all K samples are identical (a warning says so).

Runs in one process, no Ray. With `--out FILE.json` the summary is written there and every sample to
`FILE.samples.jsonl` next to it. Exit code 2 for bad inputs (missing file, unknown model, bad settings).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

from jobs.sample import DEMO_POLICY, DEMO_PROBLEMS
from jobs.sampler_flags import DEMO_DEFAULTS, add_sampler_flags, sampler_knobs

log = logging.getLogger("jobs.eval")


class EvalInputError(ValueError):
    """A bad command line input (file, model, settings); main() prints it and exits with 2."""


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct."""
    if not 0 <= c <= n:
        raise ValueError(f"c: got {c} correct of n={n}; expected 0 <= c <= n")
    if not 1 <= k <= n:
        raise ValueError(f"k: got {k} with n={n} samples; expected 1 <= k <= n")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def default_ks(samples: int) -> list[int]:
    """1, 2, 4, ... up to `samples`, and `samples` itself."""
    ks = [2**i for i in range(samples.bit_length()) if 2**i <= samples]
    return ks + ([samples] if ks[-1] != samples else [])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None,
                        help="checkpoint directory, 'demo' (the shipped policy) or 'tiny' (a random tiny twin); "
                             "default: the config's model.path, else 'demo'")
    parser.add_argument("--data", default=None,
                        help="held-out .jsonl/.parquet; default: the config's data.eval, else " + str(DEMO_PROBLEMS))
    parser.add_argument("--config", default=None, help="training config YAML to take the sampler and thinking from")
    parser.add_argument("--samples", type=int, default=1, help="K: responses per problem (pass@k for k <= K)")
    parser.add_argument("--k", default=None, help="comma-separated k values (default: 1, 2, 4, ... up to K, and K)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N problems")
    parser.add_argument("--out", default=None, help="summary JSON path; samples go to <stem>.samples.jsonl beside it")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16"], help="weight dtype (default: as stored)")
    parser.add_argument("--thinking", action=argparse.BooleanOptionalAction, default=None,
                        help="prepend the <think> instruction (default: config data.thinking; else off for demo)")
    add_sampler_flags(parser, None)  # an unset flag falls back to the config, then to DEMO_DEFAULTS
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64, help="prompts per sampler call")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's, i.e. all cores; 1 is faster on a busy machine)")
    return parser.parse_args(argv)


def resolve_settings(args: argparse.Namespace) -> dict:
    """model, data, thinking, sampler (dict), ks: flag > config > demo defaults. Raises EvalInputError."""
    sampler, thinking, model_arg, data_arg = dict(DEMO_DEFAULTS), None, "demo", str(DEMO_PROBLEMS)
    if args.config is not None:
        from dataclasses import asdict

        from jobs.config import load_config

        if not Path(args.config).is_file():
            raise EvalInputError(f"--config: file {args.config!r} does not exist")
        try:
            cfg = load_config(args.config)
        except ValueError as exc:
            raise EvalInputError(f"--config {args.config}: {exc}") from exc
        sampler, thinking, model_arg = asdict(cfg.rollout.sampler), cfg.data.thinking, cfg.model.path
        data_arg = cfg.data.eval or data_arg
    model_arg = args.model if args.model is not None else model_arg
    data_arg = args.data if args.data is not None else data_arg
    sampler.update(sampler_knobs(args))
    if args.thinking is not None:
        thinking = args.thinking
    elif thinking is None:
        thinking = model_arg != "demo"

    from model.sampling import TextSamplerConfig

    try:
        TextSamplerConfig(**sampler)
    except ValueError as exc:
        raise EvalInputError(f"sampler setting {exc}") from exc
    if args.samples < 1:
        raise EvalInputError(f"--samples: got {args.samples}; expected >= 1")
    if args.limit is not None and args.limit < 1:
        raise EvalInputError(f"--limit: got {args.limit}; expected >= 1")
    if args.torch_threads is not None and args.torch_threads < 1:
        raise EvalInputError(f"--torch-threads: got {args.torch_threads}; expected >= 1")
    if args.batch_size < 1:
        raise EvalInputError(f"--batch-size: got {args.batch_size}; expected >= 1")
    if args.k is None:
        ks = default_ks(args.samples)
    else:
        try:
            ks = sorted({int(part) for part in args.k.split(",") if part.strip()})
        except ValueError:
            raise EvalInputError(f"--k: {args.k!r} is not a comma-separated list of integers") from None
        if not ks or not all(1 <= k <= args.samples for k in ks):
            raise EvalInputError(f"--k: {args.k!r}; every k must be in [1, --samples={args.samples}] "
                                 "(pass@k needs at least k samples per problem)")
    if model_arg not in ("demo", "tiny") and not Path(model_arg).is_dir():
        raise EvalInputError(f"--model: {model_arg!r} is neither a checkpoint directory nor 'demo' / 'tiny'")
    return {"model": model_arg, "data": data_arg, "thinking": bool(thinking), "sampler": sampler, "ks": ks}


def load_model(model_arg: str, *, dtype: str | None, seed: int):
    import model
    from model.tiny import tiny_model

    if model_arg == "tiny":
        return tiny_model(seed=seed)
    path = DEMO_POLICY if model_arg == "demo" else Path(model_arg)
    try:
        return model.load(path, dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise EvalInputError(f"--model: cannot load a checkpoint from {str(path)!r}: {exc}") from exc


def response_length(ids: list[int], stop_ids: set[int]) -> int:
    """Tokens before the first end-of-text / pad token (the whole response if there is none)."""
    return next((i for i, token in enumerate(ids) if token in stop_ids), len(ids))


def generate_all(loaded, records, *, samples: int, sampler: dict, thinking: bool, seed: int, batch_size: int):
    """One row per (problem, sample index): dicts with the response text, its token ids and length."""
    import torch

    import model
    from model.templates import chat_prompt_ids, special_ids
    from rl.masking import stable_seed

    special = special_ids(loaded.tokenizer)
    stop_ids = {i for i in (special.eos, special.pad, special.eot) if i is not None}
    prompts = [chat_prompt_ids(loaded.tokenizer, r.prompt, thinking=thinking) for r in records]
    network = loaded.network.eval()
    rows: list[dict] = [None] * (len(records) * samples)  # type: ignore[list-item]
    for sample_index in range(samples):
        for start in range(0, len(records), batch_size):
            batch_seed = stable_seed(seed, "eval", sample_index, start)
            with torch.no_grad():
                sequences, _, forwards = model.generate_text(
                    network, prompts[start:start + batch_size], **sampler, mask_id=special.mask,
                    pad_id=special.pad, seed=batch_seed,
                )  # [b, P+L], forward passes of this batch
            responses = sequences[:, -sampler["gen_length"]:].tolist()  # [b, L]
            for offset, ids in enumerate(responses):
                problem = start + offset
                record = records[problem]
                rows[problem * samples + sample_index] = {
                    "uid": record.uid, "task": record.task, "sample_index": sample_index, "prompt": record.prompt,
                    "answer": record.answer,
                    "response": loaded.tokenizer.decode(ids, skip_special_tokens=True),
                    "response_tokens": response_length(ids, stop_ids), "sampler_forwards": forwards,
                }
    return rows


def score_rows(rows: list[dict]) -> None:
    """Add `correct` (1.0 / 0.0 / None) and `format` to every row, one batch per reward."""
    import rewards

    samples = [rewards.Sample(task=r["task"], prompt=r["prompt"], response=r["response"], answer=r["answer"])
               for r in rows]
    for name in ("correctness", "format"):
        reward = rewards.get(name)
        try:
            values = reward(samples)
        finally:
            if hasattr(reward, "close"):
                reward.close()
        for row, value in zip(rows, values):
            row["correct" if name == "correctness" else "format"] = value


def summarise(rows: list[dict], *, samples: int, ks: list[int]) -> dict:
    """pass@k, format rate, unscorable count and mean response tokens over `rows`, and per task."""

    def metrics(group: list[dict]) -> dict:
        correct_by_uid: dict[str, int] = defaultdict(int)
        for row in group:
            correct_by_uid[row["uid"]] += row["correct"] == 1.0
        problems = len(correct_by_uid)
        return {
            "n_problems": problems,
            "pass_at_k": {str(k): sum(pass_at_k(samples, c, k) for c in correct_by_uid.values()) / problems
                          for k in ks},
            "format_rate": sum(row["format"] or 0.0 for row in group) / len(group),
            "unscorable": sum(row["correct"] is None for row in group),
            "mean_response_tokens": sum(row["response_tokens"] for row in group) / len(group),
            "mean_sampler_forwards": sum(row["sampler_forwards"] for row in group) / len(group),
        }

    by_task: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_task[row["task"]].append(row)
    return {**metrics(rows), "per_task": {task: metrics(group) for task, group in sorted(by_task.items())}}


def evaluate(args: argparse.Namespace) -> dict:
    """The whole evaluation; returns the summary (and writes the files when `args.out` is set)."""
    from jobs.data import DataError, PromptDataset

    settings = resolve_settings(args)
    try:
        dataset = PromptDataset(settings["data"], default_task="text")
    except DataError as exc:
        raise EvalInputError(f"--data: {exc}") from exc
    records = dataset.records[:args.limit] if args.limit else dataset.records
    sampler = settings["sampler"]
    if args.samples > 1 and sampler["temperature"] == 0 and sampler["remasking"] == "low_confidence":
        log.warning("--samples %d with greedy low-confidence decoding (temperature 0): all samples of a problem "
                    "are identical, so pass@k == pass@1; set --temperature > 0 for pass@k", args.samples)
    if args.torch_threads is not None:
        import torch

        torch.set_num_threads(args.torch_threads)
    loaded = load_model(settings["model"], dtype=args.dtype, seed=args.seed)

    started = time.perf_counter()
    rows = generate_all(loaded, records, samples=args.samples, sampler=sampler, thinking=settings["thinking"],
                        seed=args.seed, batch_size=args.batch_size)
    score_rows(rows)
    summary = {
        "model": str(DEMO_POLICY) if settings["model"] == "demo" else settings["model"],
        "data": str(settings["data"]), "skipped_rows": len(dataset.problems),
        "samples_per_problem": args.samples, "sampler": sampler, "thinking": settings["thinking"],
        "seed": args.seed, "batch_size": args.batch_size,
        **summarise(rows, samples=args.samples, ks=settings["ks"]),
        "wall_seconds": round(time.perf_counter() - started, 3),
    }
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        samples_path = out.with_name(out.stem + ".samples.jsonl")
        summary["samples_file"] = str(samples_path)
        with samples_path.open("w") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
        out.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = evaluate(args)
    except EvalInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    if args.out:
        print(f"wrote {args.out} and {summary['samples_file']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
