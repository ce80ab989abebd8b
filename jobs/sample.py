"""Sample responses from a masked-diffusion checkpoint with the text sampler.

    python -m jobs.sample                                  # tiny random-weight twin, built in memory
    python -m jobs.sample --model /ckpt/LLaDA-8B-Instruct --prompt "What is 17*23?" --gen-length 256 \
        --steps 128 --block-length 32

Prints every response with the order in which its tokens were revealed (the diffusion trajectory)
and writes `samples.jsonl` plus the resolved arguments into the output directory. The default model
is a random tiny twin, so its text is noise: the command shows the loader, the chat template and the
sampler working end to end, offline.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DEFAULT_PROMPTS = (
    "What is 12 + 7 * 3?",
    "Compute (8 - 3) * 4.",
    "If x = 5, what is 2x + 1?",
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.sample", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="checkpoint directory, or 'tiny' for a random tiny twin")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16"], help="weight dtype (default: as stored)")
    parser.add_argument("--prompt", action="append", help="a user message (repeatable); default: three arithmetic questions")
    parser.add_argument("--no-thinking", action="store_true", help="leave out the <think> instruction")
    parser.add_argument("--gen-length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--block-length", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--remasking", default="low_confidence", choices=["low_confidence", "random"])
    parser.add_argument("--cfg-scale", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="output directory (default: runs/sample-<time>)")
    return parser.parse_args(argv)


def reveal_order(tokens: list[str], reveal_step: list[int]) -> str:
    """'step:token' pairs in the order the sampler revealed them, to show the diffusion trajectory."""
    order = sorted(range(len(tokens)), key=lambda i: (reveal_step[i], i))
    return " ".join(f"{reveal_step[i]}:{tokens[i]!r}" for i in order)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import torch

    import model
    from model.templates import chat_prompt_ids, special_ids
    from model.tiny import tiny_model

    torch.manual_seed(args.seed)
    loaded = tiny_model(seed=args.seed) if args.model == "tiny" else model.load(args.model, dtype=args.dtype)
    tokenizer, special = loaded.tokenizer, special_ids(loaded.tokenizer)
    prompts_text = args.prompt or list(DEFAULT_PROMPTS)
    prompts = [chat_prompt_ids(tokenizer, text, thinking=not args.no_thinking) for text in prompts_text]

    started = time.perf_counter()
    sequences, reveal_step = model.generate_text(
        loaded.network.eval(), prompts, gen_length=args.gen_length, steps=args.steps,
        block_length=args.block_length, temperature=args.temperature, remasking=args.remasking,
        cfg_scale=args.cfg_scale, mask_id=special.mask, pad_id=special.pad, seed=args.seed,
    )  # [B, P+L], [B, L]
    seconds = time.perf_counter() - started

    out_dir = Path(args.out or f"runs/sample-{time.strftime('%Y%m%d-%H%M%S')}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "args.json").write_text(json.dumps(vars(args), indent=2) + "\n")
    responses = sequences[:, -args.gen_length:]  # [B, L]
    with open(out_dir / "samples.jsonl", "w") as fh:
        for text, ids, steps in zip(prompts_text, responses.tolist(), reveal_step.tolist()):
            response = tokenizer.decode(ids, skip_special_tokens=False)
            fh.write(json.dumps({"prompt": text, "response": response, "token_ids": ids, "reveal_step": steps}) + "\n")
            print(f"\n### {text}\n{response}")
            print(f"  reveal order: {reveal_order(tokenizer.convert_ids_to_tokens(ids), steps)[:300]} ...")
    tokens = responses.numel()
    print(f"\n{len(prompts)} prompts x {args.gen_length} tokens in {seconds:.2f}s "
          f"({tokens / seconds:.0f} tokens/s); wrote {out_dir / 'samples.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
