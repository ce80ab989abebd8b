"""Sample responses from a masked-diffusion checkpoint with the text sampler.

    python -m jobs.sample                  # the shipped demo policy on three held-out arithmetic problems
    python -m jobs.sample --model tiny     # a random-weight tiny twin (noise, but every code path runs)
    python -m jobs.sample --model /ckpt/LLaDA-8B-Instruct --prompt "What is 17*23?" --gen-length 256 \
        --steps 128 --block-length 32

Prints every response with the order in which its tokens were revealed (the diffusion trajectory)
and writes `samples.jsonl` plus the resolved arguments into the output directory. The default model is
the small policy shipped in `model/assets/demo_policy/` (masked-diffusion SFT on the synthetic
arithmetic task, docs/demo.md), loaded through the same loader as the published checkpoints.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from jobs.sampler_flags import DEMO_DEFAULTS, add_sampler_flags, sampler_knobs

REPO = Path(__file__).resolve().parent.parent
DEMO_PROBLEMS = REPO / "data" / "arithmetic" / "heldout.jsonl"
DEFAULT_PROMPTS = (
    "What is 12 + 7 * 3?",
    "Compute (8 - 3) * 4.",
    "If x = 5, what is 2x + 1?",
)


def default_prompts(model_arg: str) -> list[tuple[str, str | None]]:
    """(prompt, gold answer) pairs: three held-out problems for the demo policy, else generic questions."""
    if model_arg == "demo" and DEMO_PROBLEMS.is_file():
        rows = [json.loads(line) for line in DEMO_PROBLEMS.read_text().splitlines()[:3]]
        return [(row["prompt"], row["answer"]) for row in rows]
    return [(text, None) for text in DEFAULT_PROMPTS]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.sample", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo",
                        help="checkpoint directory, 'demo' (the shipped policy), 'tiny' or 'tiny-mmada' (random tiny twins)")
    parser.add_argument("--dtype", default=None, choices=["fp32", "bf16"], help="weight dtype (default: as stored)")
    parser.add_argument("--prompt", action="append", help="a user message (repeatable); default: three arithmetic questions")
    parser.add_argument("--thinking", action=argparse.BooleanOptionalAction, default=None,
                        help="prepend the <think> instruction (default: off for the demo policy, which was "
                             "trained without it; on otherwise)")
    add_sampler_flags(parser, DEMO_DEFAULTS)
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
    from model.resolve import ModelSpecError, load_model
    from model.templates import chat_prompt_ids, special_ids

    torch.manual_seed(args.seed)
    try:
        loaded = load_model(args.model, key="--model", seed=args.seed, dtype=args.dtype)
    except ModelSpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tokenizer, special = loaded.tokenizer, special_ids(loaded.tokenizer)
    pairs = [(text, None) for text in args.prompt] if args.prompt else default_prompts(args.model)
    thinking = args.thinking if args.thinking is not None else args.model != "demo"
    prompts_text = [text for text, _ in pairs]
    prompts = [chat_prompt_ids(tokenizer, text, thinking=thinking) for text in prompts_text]

    started = time.perf_counter()
    sequences, reveal_step, forwards = model.generate_text(
        loaded.network.eval(), prompts, **sampler_knobs(args), mask_id=special.mask, pad_id=special.pad,
        seed=args.seed,
    )  # [B, P+L], [B, L], [B]
    seconds = time.perf_counter() - started

    out_dir = Path(args.out or f"runs/sample-{time.strftime('%Y%m%d-%H%M%S')}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "args.json").write_text(json.dumps(vars(args), indent=2) + "\n")
    responses = sequences[:, -args.gen_length:]  # [B, L]
    with open(out_dir / "samples.jsonl", "w") as fh:
        for (text, gold), ids, steps in zip(pairs, responses.tolist(), reveal_step.tolist()):
            response = tokenizer.decode(ids, skip_special_tokens=True)
            fh.write(json.dumps({"prompt": text, "answer": gold, "response": response, "token_ids": ids,
                                 "reveal_step": steps}) + "\n")
            print(f"\n### {text}" + (f"   (gold answer: {gold})" if gold is not None else "") + f"\n{response}")
            print(f"  reveal order: {reveal_order(tokenizer.convert_ids_to_tokens(ids), steps)[:300]} ...")
    tokens = responses.numel()
    print(f"\n{len(prompts)} prompts x {args.gen_length} tokens in {seconds:.2f}s "
          f"({tokens / seconds:.0f} tokens/s, {forwards} forward passes); wrote {out_dir / 'samples.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
