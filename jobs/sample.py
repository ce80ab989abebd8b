"""Sample responses from a masked-diffusion checkpoint with the text sampler, and show how they were revealed.

    python -m jobs.sample                                  # the demo config's policy on three held-out problems
    python -m jobs.sample --model demo                     # the shipped gold-SFT policy (docs/demo.md)
    python -m jobs.sample --model tiny                     # a random-weight tiny twin (noise, but every path runs)
    python -m jobs.sample --model /ckpt/LLaDA-8B-Instruct --prompt "What is 17*23?" --set data.thinking=true \
        --set rollout.sampler.gen_length=256 --set rollout.sampler.steps=128 --set rollout.sampler.block_length=32

It reads the config tree of `python -m jobs.train` (`--config`, default jobs/configs/demo.yaml, `--set KEY=VALUE`,
`--print-config`) and answers the prompts the way the held-out evaluation would (jobs/heldout.py): the policy
`model.path` loaded at `eval.dtype` on `eval.device`, the sampler `rollout.sampler` at `eval.temperature`,
`data.thinking`, seed `run.seed`. The prompts are `sample.prompts`, else the first three problems of `data.eval`
with their gold answers. It prints every response with the order in which its tokens were revealed (the diffusion
trajectory) and writes `samples.jsonl` and the resolved `config.yaml` into `sample.out`. Short flags, each the
same as one `--set`: `--model` (model.path), `--prompt` (one item of sample.prompts, repeatable), `--out`
(sample.out), `--device` (eval.device, as for `jobs.eval`).

Deviations from the evaluation: all prompts go to the sampler in one batch, under torch's own thread count
(`eval.batch_size` and `eval.torch_threads` are not read), and nothing is judged.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from jobs.config import ConfigError, TrainConfig, add_alias, job_main, job_parser, write_resolved
from jobs.data import DataError
from model.resolve import ModelSpecError

SHOWN_PROBLEMS = 3
"""How many problems of `data.eval` are answered when `sample.prompts` is empty."""


def parser():
    """The tree's --config / --set / --print-config, and the short flags of the docstring."""
    result = job_parser("python -m jobs.sample", __doc__)
    add_alias(result, "--model", "model.path", text=True)
    add_alias(result, "--prompt", "sample.prompts", text=True, repeat=True)
    add_alias(result, "--out", "sample.out", text=True)
    add_alias(result, "--device", "eval.device", text=True)
    return result


def prompts_of(cfg: TrainConfig) -> list[tuple[str, str | None]]:
    """(prompt, gold answer) pairs: `sample.prompts` without answers, else the first problems of `data.eval` (read
    as the evaluation reads them)."""
    from jobs.heldout import heldout_records

    if cfg.sample.prompts:
        return [(text, None) for text in cfg.sample.prompts]
    if not cfg.data.eval:
        raise ConfigError(["sample.prompts: empty and data.eval is null, so there is nothing to ask; give "
                           "--prompt TEXT (repeatable) or a held-out file in data.eval"])
    records, _ = heldout_records(cfg)
    return [(record.prompt, record.answer) for record in records[:SHOWN_PROBLEMS]]


def reveal_order(tokens: list[str], reveal_step: list[int]) -> str:
    """'step:token' pairs in the order the sampler revealed them, to show the diffusion trajectory."""
    order = sorted(range(len(tokens)), key=lambda i: (reveal_step[i], i))
    return " ".join(f"{reveal_step[i]}:{tokens[i]!r}" for i in order)


def run(cfg: TrainConfig) -> int:
    import torch

    import model
    from jobs.heldout import eval_sampler, load_eval_policy
    from model.templates import chat_prompt_ids, special_ids

    pairs = prompts_of(cfg)
    torch.manual_seed(cfg.run.seed)
    loaded = load_eval_policy(cfg)
    tokenizer, special = loaded.tokenizer, special_ids(loaded.tokenizer)
    prompts = [chat_prompt_ids(tokenizer, text, thinking=cfg.data.thinking) for text, _ in pairs]
    sampler = eval_sampler(cfg)

    started = time.perf_counter()
    sequences, reveal_step, forwards = model.generate_text(
        loaded.network.eval(), prompts, **sampler, mask_id=special.mask, pad_id=special.pad, seed=cfg.run.seed,
    )  # [B, P+L], [B, L], forward passes
    seconds = time.perf_counter() - started

    out_dir = Path(cfg.sample.out or f"runs/sample-{time.strftime('%Y%m%d-%H%M%S')}")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_resolved(cfg, out_dir)
    gen_length = sampler["gen_length"]
    responses = sequences[:, -gen_length:]  # [B, L]
    with open(out_dir / "samples.jsonl", "w") as fh:
        for (text, gold), ids, steps in zip(pairs, responses.tolist(), reveal_step.tolist()):
            response = tokenizer.decode(ids, skip_special_tokens=True)
            fh.write(json.dumps({"prompt": text, "answer": gold, "response": response, "token_ids": ids,
                                 "reveal_step": steps}) + "\n")
            print(f"\n### {text}" + (f"   (gold answer: {gold})" if gold is not None else "") + f"\n{response}")
            print(f"  reveal order: {reveal_order(tokenizer.convert_ids_to_tokens(ids), steps)[:300]} ...")
    tokens = responses.numel()
    print(f"\n{len(prompts)} prompts x {gen_length} tokens in {seconds:.2f}s "
          f"({tokens / seconds:.0f} tokens/s, {forwards} forward passes); wrote {out_dir / 'samples.jsonl'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return job_main(parser(), argv, run, errors=(DataError, ModelSpecError))


if __name__ == "__main__":
    sys.exit(main())
