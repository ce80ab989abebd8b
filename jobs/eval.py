"""Held-out evaluation of a checkpoint: pass@1, pass@k and format rate, as a JSON summary.

    python -m jobs.eval                                   # the demo config: its cold-start policy, 256 problems
    python -m jobs.eval --model demo --limit 32           # the shipped gold-SFT policy on the first 32
    python -m jobs.eval --config runs/demo/config.yaml --model runs/demo/export   # a run's last evaluation again
    python -m jobs.eval --model DIR --data FILE.jsonl --samples 8 --set eval.temperature=0.9 --out eval.json

The evaluation of the training run's held-out curve, on a checkpoint: it reads the same config tree as
`python -m jobs.train` (`--config`, default jobs/configs/demo.yaml, and `--set KEY=VALUE`; `--print-config` shows
it) and evaluates `model.path` on `data.eval` with the settings of the `eval` section through jobs/heldout.py,
the code the driver's evaluation runs: `eval.samples` responses per problem from the text sampler
(`rollout.sampler` at `eval.temperature`), `data.thinking`, seed `run.seed`, `eval.batch_size`, `eval.limit`,
`eval.dtype`, `eval.torch_threads`; judged by the `correctness` and `format` rewards (jobs/evaluate.py). So the
config and export of a run give the numbers its last evaluation logged. pass@k is reported for `eval.pass_at_k`
(default 1, 2, 4, ... up to K, and K). Short flags, each the same as one `--set`: `--model` (model.path),
`--data` (data.eval), `--limit` (eval.limit), `--samples` (eval.samples), `--out` (eval.out), `--device`
(eval.device: cpu, the default, cuda, cuda:N or auto; docs/sampling.md §Where evaluation runs).

Deviations from the training run's evaluation: none in what is sampled and judged. It runs in one process without
Ray, on a checkpoint loaded from disk instead of the learner's weights, and reports pass@k (training logs pass@1).
With `eval.out` the summary is written there and every sample to `<stem>.samples.jsonl` beside it. Exit code 2 for
bad inputs (a bad config key or value, a missing or bad file, an unusable model), naming the key or file.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

from jobs.config import ConfigError, TrainConfig, add_alias, job_main, job_parser
from jobs.data import DataError
from model.resolve import DEMO_POLICY, ModelSpecError


def parser():
    """The tree's --config / --set / --print-config, and the short flags of the docstring."""
    result = job_parser("python -m jobs.eval", __doc__)
    add_alias(result, "--model", "model.path", text=True)
    add_alias(result, "--data", "data.eval", text=True)
    add_alias(result, "--limit", "eval.limit")
    add_alias(result, "--samples", "eval.samples")
    add_alias(result, "--out", "eval.out", text=True)
    add_alias(result, "--device", "eval.device", text=True)
    return result


def evaluate(cfg: TrainConfig) -> dict:
    """The whole evaluation; returns the summary (and writes the files when `eval.out` is set)."""
    from jobs.evaluate import default_ks, local_decoder
    from jobs.heldout import eval_sampler, evaluate_heldout, heldout_records, load_eval_policy

    if not cfg.data.eval:
        raise ConfigError(["data.eval: no held-out file to evaluate on; set it (--data FILE.jsonl)"])
    records, skipped = heldout_records(cfg)  # bad rows are logged by PromptDataset
    loaded = load_eval_policy(cfg)
    ks = sorted(set(cfg.eval.pass_at_k)) or default_ks(cfg.eval.samples)
    started = time.perf_counter()
    rows, scores = evaluate_heldout(cfg, loaded.tokenizer, loaded.config, records,
                                    decode=local_decoder(loaded.network), ks=ks)
    summary = {
        "model": str(DEMO_POLICY) if cfg.model.path == "demo" else cfg.model.path,
        "data": cfg.data.eval, "skipped_rows": len(skipped),
        "samples_per_problem": cfg.eval.samples, "sampler": eval_sampler(cfg), "thinking": cfg.data.thinking,
        "seed": cfg.run.seed, "batch_size": cfg.eval.batch_size,
        **scores,
        "wall_seconds": round(time.perf_counter() - started, 3),
    }
    if cfg.eval.out:
        out = Path(cfg.eval.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        samples_path = out.with_name(out.stem + ".samples.jsonl")
        summary["samples_file"] = str(samples_path)
        with samples_path.open("w") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
        out.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run(cfg: TrainConfig) -> int:
    summary = evaluate(cfg)
    print(json.dumps(summary, indent=2))
    if cfg.eval.out:
        print(f"wrote {cfg.eval.out} and {summary['samples_file']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return job_main(parser(), argv, run, errors=(DataError, ModelSpecError))


if __name__ == "__main__":
    sys.exit(main())
