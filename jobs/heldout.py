"""Held-out evaluation: pass@1 and format rate of a policy on `data.eval`, with the settings of the `eval` section.

The training driver calls `HeldoutEvaluator.evaluate(step, decode)` before the first step, every `eval.every`
steps and after the last one; `python -m jobs.eval` calls `evaluate_heldout` on a checkpoint. Both read the same
problems (`heldout_records`), sampler (`eval_sampler`: `rollout.sampler` with `eval.temperature`), dtype, thinking,
seed, batch size and number of samples from the same config tree, and decode + judge with jobs/evaluate.py, so
`jobs.eval --config <the run's config.yaml> --model <its export>` repeats the run's last evaluation, and the
curve's first point is the starting policy's `jobs.eval` score.

Where it decodes in training (`eval.where`): on the rollout workers by default, which hold the step's weights
already (the sync came first, and in sync mode the next step's sampling waits for the evaluation), the sampler
calls spread over them (`RolloutPool.decode`); or, with `eval.where: driver`, on a copy of learner rank 0's weights
(`state_dict_for_sync`) in the driver, in `eval.dtype` on `eval.device` (`eval_device`). Judging runs in the
driver either way. jobs.sft has no rollout workers: its evaluator keeps the driver's copy, which is also what it
saves. docs/sampling.md §Where evaluation runs.

With `eval.samples` = K every problem is answered K times and `eval/pass@1` is the mean over the K x N responses.

Only text problems can be evaluated this way (a file with image tasks is a DataError naming them).

Outputs in training: `eval/pass@1`, `eval/format_rate`, `eval/unscorable`, `eval/response_tokens_mean` and
`eval/seconds` in metrics.jsonl (and TensorBoard) at that step, and every sample of the evaluation in
`<run dir>/eval/step_<N>.jsonl` for inspection.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("unigrpo.eval")


def eval_sampler(cfg) -> dict[str, Any]:
    """The text sampler of every evaluation of `cfg` (a TrainConfig): `rollout.sampler` at `eval.temperature`."""
    return {**dataclasses.asdict(cfg.rollout.sampler), "temperature": cfg.eval.temperature}


def heldout_records(cfg) -> tuple[list, list[str]]:
    """The first `eval.limit` problems of `data.eval` (all when None) and the bad rows skipped at load; a
    DataError when the file is unreadable or holds problems that are not text."""
    from jobs.data import DataError, PromptDataset

    try:
        dataset = PromptDataset(cfg.data.eval, default_task=cfg.data.default_task, fields=cfg.data.fields)
    except DataError as exc:  # a missing file, or no usable row: say which key names it
        raise DataError(f"data.eval: {exc}") from exc
    records = dataset.records[:cfg.eval.limit] if cfg.eval.limit else dataset.records
    other = sorted({r.task for r in records if cfg.data.kind_of(r.task, r.image is not None) != "text"})
    if other:
        raise DataError(f"data.eval {cfg.data.eval}: held-out evaluation scores text answers (correctness and "
                        f"format of the text sampler's output); rows of task(s) {other} are not text. Give a "
                        "file of text problems, or no data.eval")
    return records, dataset.problems


def eval_device(cfg) -> torch.device:
    """`eval.device` of `cfg` resolved ("auto": the first CUDA device when torch sees one, else the CPU); a
    ConfigError naming `eval.device` when it asks for a CUDA device torch does not see (not a CUDA traceback later)."""
    from jobs.config import ConfigError

    if cfg.eval.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(cfg.eval.device)
    visible = torch.cuda.device_count()  # 0 without CUDA (a CPU build of torch, or no driver / GPU)
    if device.type == "cuda" and (device.index or 0) >= visible:
        raise ConfigError([f"eval.device: {cfg.eval.device!r}, but torch sees {visible} CUDA device(s) here; use "
                           "'cpu', 'auto' (cuda when torch sees one, else cpu) or 'cuda:N' with N below that count"])
    return device


def check_placement(cfg) -> None:
    """jobs.train's check of `eval.where`: on the rollout workers the policy runs in learner.dtype, so eval.dtype
    must say the same (`jobs.eval --config <the run's config.yaml>` then repeats the run's evaluations); a
    ConfigError naming both keys otherwise."""
    from jobs.config import ConfigError

    if cfg.data.eval and cfg.eval.where == "rollout_workers" and cfg.eval.dtype != cfg.learner.dtype:
        raise ConfigError([f"eval.dtype: {cfg.eval.dtype}, but eval.where: rollout_workers evaluates on the rollout "
                           f"workers, which hold the policy in learner.dtype {cfg.learner.dtype}; set eval.dtype to "
                           f"{cfg.learner.dtype}, or eval.where: driver to evaluate a {cfg.eval.dtype} copy in the "
                           "driver"])


def load_eval_policy(cfg):
    """`model.path` loaded in this process as the evaluation runs it (`eval.dtype` on `eval.device`; a tiny twin
    drawn from `run.seed` at `model.tiny_size`, as training draws it); a ModelSpecError naming `model.path`."""
    from model.resolve import load_model

    return load_model(cfg.model.path, key="model.path", seed=cfg.run.seed, size=cfg.model.tiny_size,
                      dtype=cfg.eval.dtype, device=eval_device(cfg))


def evaluate_heldout(cfg, tokenizer, config, records, *, decode, ks: list[int] | tuple[int, ...] = (1,)
                     ) -> tuple[list[dict], dict]:
    """jobs/evaluate.py's `evaluate_policy` on `records` with the settings of `cfg`'s `eval` section, the sampler
    calls run by `decode` (in this process under `eval.torch_threads` threads): (scored rows, summary with pass@k
    for `ks`). `tokenizer`, `config`: the policy's tokenizer and BackboneConfig."""
    from jobs.evaluate import evaluate_policy

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.eval.torch_threads)
    try:
        return evaluate_policy(tokenizer, config, records, decode=decode, samples=cfg.eval.samples,
                               sampler=eval_sampler(cfg), thinking=cfg.data.thinking, seed=cfg.run.seed,
                               batch_size=cfg.eval.batch_size, ks=ks)
    finally:
        torch.set_num_threads(previous_threads)


class HeldoutEvaluator:
    """Greedy (by default) pass@1 of the policy on a held-out prompt file, during training: the sampler calls
    run on the rollout workers (`RolloutPool.decode`) or, given `driver_copy`, on a copy of the policy here."""

    def __init__(self, cfg, backbone, tokenizer, run_dir: Path, *, driver_copy: bool | None = None):
        """`cfg`: the TrainConfig; `backbone`: the policy's BackboneConfig; `tokenizer`: its tokenizer;
        `driver_copy`: build the copy of the policy (eval.dtype on eval.device) that `driver_decoder` loads (None:
        as `eval.where` says; jobs.sft, which has no rollout workers, always does)."""
        from model.checkpoint import resolve_dtype
        from model.network import MaskedDiffusionLM

        self.records, _ = heldout_records(cfg)
        self.cfg, self.backbone, self.tokenizer = cfg, backbone, tokenizer
        if driver_copy is None:
            driver_copy = cfg.eval.where == "driver"
        self.network = None
        if driver_copy:
            with torch.device("meta"):
                network = MaskedDiffusionLM(backbone)
            dtype = resolve_dtype(cfg.eval.dtype, torch.float32)
            self.network = network.to_empty(device=eval_device(cfg)).to(dtype).eval().requires_grad_(False)
        self.out_dir = run_dir / "eval"
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def driver_decoder(self, step: int, state_dict: dict[str, torch.Tensor]):
        """A jobs/evaluate.py `Decode` on the driver's copy of the policy, loaded with `state_dict` (the learner's
        weights at `step`)."""
        from jobs.evaluate import local_decoder

        if self.network is None:
            raise RuntimeError("driver_decoder: this evaluator was built without driver_copy")
        missing, unexpected = self.network.load_state_dict(state_dict, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"held-out evaluation at step {step}: the learner's weights do not match the policy "
                               f"config (missing {missing[:4]}, unexpected {unexpected[:4]})")
        return local_decoder(self.network)

    def training_decoder(self, step: int, pool, learners):
        """Where training's evaluation at `step` decodes (eval.where): the driver's copy loaded with learner rank 0's
        weights when this evaluator has one, else the rollout workers (`RolloutPool.decode`), which hold those
        weights since the step's sync and sample nothing meanwhile (async mode's next shards were waited for by
        the sync; sync mode dispatches the next step after the evaluation)."""
        return pool.decode if self.network is None else self.driver_decoder(step, learners.state_dict_for_sync())

    def evaluate(self, step: int, decode) -> dict[str, float]:
        """Score the policy at `step`, its sampler calls run by `decode`; returns the `eval/*` metrics."""
        started = time.perf_counter()
        log.info("held-out evaluation of the policy at step %d (data.eval: %s)", step, self.cfg.data.eval)
        rows, summary = evaluate_heldout(self.cfg, self.tokenizer, self.backbone, self.records, decode=decode)
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
