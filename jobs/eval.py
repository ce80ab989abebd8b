"""Held-out evaluation of a checkpoint: pass@1, pass@k and format rate, as a JSON summary.

    python -m jobs.eval                                  # the shipped demo policy on data/arithmetic/heldout.jsonl
    python -m jobs.eval --model runs/demo/policy --data data/arithmetic/heldout.jsonl --samples 8 \
        --temperature 0.9 --out runs/demo/eval/summary.json
    python -m jobs.eval --config jobs/configs/demo.yaml   # sampler, thinking, model and data from a training config

Every problem gets K = `--samples` responses from the LLaDA text sampler, judged by the registered `correctness`
and `format` rewards: the decode + judge of jobs/evaluate.py (shared with in-training and SFT evaluation). pass@k
is reported for k = 1, 2, 4, ... up to K, plus K itself (or the `--k` list).

Settings are resolved flag > config (`rollout.sampler`, `data.thinking`, `model.path`, `data.eval`) > the demo
defaults (gen 40, steps 20, block 8, greedy; docs/demo.md). Thinking defaults off for `--model demo` (the
shipped policy was trained without the thinking instruction, as in jobs/sample.py) and on otherwise.

Seeds (jobs/evaluate.py): a run is reproducible from (`--seed`, `--batch-size`). Greedy low-confidence decoding
draws nothing random: with K > 1 all K samples are identical (a warning says so).

Runs in one process, no Ray. With `--out FILE.json` the summary is written there and every sample to
`FILE.samples.jsonl` next to it. Exit code 2 for bad inputs (missing file, unknown model, bad settings).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from jobs.evaluate import default_ks, evaluate_policy
from jobs.sample import DEMO_PROBLEMS
from jobs.sampler_flags import DEMO_DEFAULTS, add_sampler_flags, sampler_knobs
from model.resolve import DEMO_POLICY

log = logging.getLogger("jobs.eval")


class EvalInputError(ValueError):
    """A bad command line input (file, model, settings); main() prints it and exits with 2."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.eval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None,
                        help="checkpoint directory, 'demo' (the shipped policy), 'tiny' or 'tiny-mmada' (random "
                             "tiny twins); "
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
    from model.resolve import ModelSpecError, checkpoint_dir

    try:
        checkpoint_dir(model_arg, key="--model")
    except ModelSpecError as exc:
        raise EvalInputError(str(exc)) from None
    return {"model": model_arg, "data": data_arg, "thinking": bool(thinking), "sampler": sampler, "ks": ks}


def evaluate(args: argparse.Namespace) -> dict:
    """The whole evaluation; returns the summary (and writes the files when `args.out` is set)."""
    from jobs.data import DataError, PromptDataset
    from model.resolve import ModelSpecError, load_model

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
    try:
        loaded = load_model(settings["model"], key="--model", dtype=args.dtype, seed=args.seed)
    except ModelSpecError as exc:
        raise EvalInputError(str(exc)) from exc

    started = time.perf_counter()
    rows, scores = evaluate_policy(loaded, records, samples=args.samples, sampler=sampler,
                                   thinking=settings["thinking"], seed=args.seed, batch_size=args.batch_size,
                                   ks=settings["ks"])
    summary = {
        "model": str(DEMO_POLICY) if settings["model"] == "demo" else settings["model"],
        "data": str(settings["data"]), "skipped_rows": len(dataset.problems),
        "samples_per_problem": args.samples, "sampler": sampler, "thinking": settings["thinking"],
        "seed": args.seed, "batch_size": args.batch_size,
        **scores,
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
