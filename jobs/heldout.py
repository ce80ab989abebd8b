"""Held-out evaluation during training: pass@1 and format rate of the current policy on `data.eval`.

The driver calls `HeldoutEvaluator.evaluate(step, state_dict)` before the first step, every `eval.every`
steps and after the last one. It uses exactly the code of `python -m jobs.eval` (jobs/evaluate.py:
`evaluate_policy`): the same sampler settings give the same numbers as evaluating an exported
checkpoint with that command, so the curve's first point is the starting policy's `jobs.eval` score.

Where it runs: in the driver process, on the weights learner rank 0 returns (`state_dict_for_sync`). In
sync mode the learner and the rollout workers are idle while it runs, so it competes with nothing;
`eval.torch_threads` bounds its threads. Sampling settings are `rollout.sampler` with the temperature
replaced by `eval.temperature` (default 0: greedy); with `eval.samples` = K every problem is answered K
times and `eval/pass@1` is the mean over the K x N responses (the demo: K = 2 at the rollout temperature).

Only text problems can be evaluated this way (a file with image tasks is a DataError naming them).

Outputs: `eval/pass@1`, `eval/format_rate`, `eval/unscorable`, `eval/response_tokens_mean` and
`eval/seconds` in metrics.jsonl (and TensorBoard) at that step, and every sample of the evaluation in
`<run dir>/eval/step_<N>.jsonl` for inspection.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch


class HeldoutEvaluator:
    """Greedy (by default) pass@1 of a policy's weights on a held-out prompt file."""

    def __init__(self, cfg, backbone, tokenizer, run_dir: Path):
        """`cfg`: the TrainConfig; `backbone`: the policy's BackboneConfig; `tokenizer`: its tokenizer."""
        from jobs.data import DataError, PromptDataset
        from model.network import MaskedDiffusionLM

        dataset = PromptDataset(cfg.data.eval, default_task=cfg.data.default_task)
        self.records = dataset.records[:cfg.eval.limit] if cfg.eval.limit else dataset.records
        other = sorted({r.task for r in self.records if cfg.data.kind_of(r.task, r.image is not None) != "text"})
        if other:
            raise DataError(f"data.eval {cfg.data.eval}: held-out evaluation scores text answers (correctness and "
                            f"format of the text sampler's output); rows of task(s) {other} are not text. Give a "
                            "file of text problems, or no data.eval")
        self.skipped = dataset.problems
        self.cfg = cfg
        self.sampler = {**dataclasses.asdict(cfg.rollout.sampler), "temperature": cfg.eval.temperature}
        self.tokenizer = tokenizer
        with torch.device("meta"):
            network = MaskedDiffusionLM(backbone)
        self.network = network.to_empty(device="cpu").eval().requires_grad_(False)
        self.out_dir = run_dir / "eval"
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def evaluate(self, step: int, state_dict: dict[str, torch.Tensor]) -> dict[str, float]:
        """Load `state_dict` into the evaluation copy and score it; returns the `eval/*` metrics."""
        from jobs.evaluate import evaluate_policy
        from model.checkpoint import LoadedModel

        started = time.perf_counter()
        missing, unexpected = self.network.load_state_dict(state_dict, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"held-out evaluation at step {step}: the learner's weights do not match the policy "
                               f"config (missing {missing[:4]}, unexpected {unexpected[:4]})")
        loaded = LoadedModel(network=self.network, tokenizer=self.tokenizer, config=self.network.config, path=None)
        samples = self.cfg.eval.samples
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(self.cfg.eval.torch_threads)
        try:
            rows, summary = evaluate_policy(loaded, self.records, samples=samples, sampler=self.sampler,
                                            thinking=self.cfg.data.thinking, seed=self.cfg.run.seed,
                                            batch_size=self.cfg.eval.batch_size)
        finally:
            torch.set_num_threads(previous_threads)
        with (self.out_dir / f"step_{step}.jsonl").open("w") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
        return {
            "eval/pass@1": summary["pass_at_k"]["1"],
            "eval/format_rate": summary["format_rate"],
            "eval/unscorable": float(summary["unscorable"]),
            "eval/response_tokens_mean": summary["mean_response_tokens"],
            "eval/problems": float(summary["n_problems"]),
            "eval/seconds": time.perf_counter() - started,
        }


def should_evaluate(step: int, *, every: int, last_step: int) -> bool:
    """Evaluate at step 0 (the starting policy), every `every` steps (0: never in between), and at the end."""
    return step == 0 or step == last_step or (every > 0 and step % every == 0)


def eval_history(metrics_path: Path) -> list[dict[str, Any]]:
    """`[{"step": s, "eval/pass@1": ..., ...}]` for every logged evaluation, in step order."""
    history = []
    if metrics_path.exists():
        for line in metrics_path.read_text().splitlines():
            record = json.loads(line)
            if "eval/pass@1" in record:
                history.append({k: v for k, v in record.items() if k == "step" or k.startswith("eval/")})
    return history
