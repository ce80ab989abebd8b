"""Builds the tiny tokenizer checked in at model/assets/tiny_tokenizer/ (deterministic).

    python -m model.assets.build_tiny_tokenizer [--out DIR]

A byte-level BPE (so any text encodes) trained with `tokenizers` on a few hundred generated strings
of the text the demo sees: multi-step integer arithmetic reasoned inside <think> </think> with
\\boxed{} answers, English instructions, LaTeX-ish math and the pieces of the chat template. Like
the LLaDA tokenizer it splits text with a Llama-3-style regex, except that digits are split one by
one (Llama 3 groups up to three), which makes arithmetic easier for a tiny model. The special
tokens carry the upstream strings and are appended after the BPE vocabulary, as upstream's added
tokens are; `<think>`/`</think>` are added but not "special", so decoding with
skip_special_tokens=True keeps them for the format reward.

The tokenizer_config.json is written by hand (not by save_pretrained) so that the files load the
same way in transformers 4.x and 5.x.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

from model import templates as T

OUT_DIR = Path(__file__).resolve().parent / "tiny_tokenizer"
VOCAB_SIZE = 600  # including the special tokens
# Llama 3's split regex with `\p{N}` instead of `\p{N}{1,3}`: every digit is its own pre-token.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# (string, special) in id order after the BPE vocabulary.
ADDED_TOKENS = [
    (T.BOS_TOKEN, True),
    (T.EOS_TOKEN, True),
    (T.MASK_TOKEN, True),
    (T.START_HEADER_TOKEN, True),
    (T.END_HEADER_TOKEN, True),
    (T.EOT_TOKEN, True),
    (T.SOI_TOKEN, True),
    (T.EOI_TOKEN, True),
    (T.T2I_TOKEN, True),
    (T.MMU_TOKEN, True),
    (T.IPAD_TOKEN, True),
    (T.R2I_TOKEN, True),
    (T.THINK_OPEN, False),
    (T.THINK_CLOSE, False),
]

INSTRUCTIONS = [
    "Solve the following problem step by step.",
    "Compute the value of the expression below.",
    "Answer the question and put the final answer in a box.",
    "Show your work, then write the result.",
    "What is the result of the following calculation?",
    "Evaluate the expression. Give only the final number.",
    "Please explain your reasoning before answering.",
    "You are a helpful assistant that is good at math.",
    "Read the question carefully and think before you answer.",
    "Write a short answer to the user's question.",
    "The user asks a question about numbers and you answer it.",
    "Describe the image in one sentence.",
    "Generate an image of a red apple on a wooden table.",
    "A photo of a cat sitting on a window, looking at the rain.",
    "Summarize the text in a few words.",
    "Translate the sentence into simple English.",
    "Let's think about this one step at a time.",
    "First add the numbers, then multiply the sum by the last number.",
    "The answer is the number you get at the end of the calculation.",
    "If the result is negative, write the minus sign in front of it.",
    "Tom has some apples and gives a few of them to his friend. How many are left?",
    "A train travels at a constant speed for a number of hours. How far does it go?",
    "There are several boxes with the same number of pens in each box.",
    "Check the answer by doing the calculation again in a different order.",
    "This is correct, so the final answer is given below.",
    "That is not right; let me recompute the product.",
    "Therefore the answer is",
    "So we have",
    "Hence the total is",
    "Now we subtract the second number from the first one.",
]

LATEX = [
    "\\frac{{{a}}}{{{b}}}",
    "\\sqrt{{{a}}}",
    "{a} \\times {b} = {c}",
    "{a} \\cdot {b} = {c}",
    "x^2 + {a}x + {b} = 0",
    "$x = {a}$ and $y = {b}$",
    "\\left( {a} + {b} \\right) \\times {c}",
    "\\boxed{{{c}}}",
    "$$\\sum_{{i=1}}^{{{a}}} i = {c}$$",
    "{a} \\div {b} = {c}",
    "\\text{{the answer is }} {c}",
    "f(x) = {a}x - {b}",
]


def arithmetic_sample(rng: random.Random) -> tuple[str, str]:
    """A multi-step integer problem and its <think> reasoning with a boxed answer."""
    operands = [rng.randint(0, 999 if rng.random() < 0.7 else 99) for _ in range(rng.randint(2, 4))]
    ops = [rng.choice("+-*") for _ in operands[1:]]
    expression, value, steps = str(operands[0]), operands[0], []
    for op, operand in zip(ops, operands[1:]):
        new_value = {"+": value + operand, "-": value - operand, "*": value * operand}[op]
        steps.append(f"{value} {op} {operand} = {new_value}")
        expression = f"({expression} {op} {operand})" if len(steps) < len(ops) else f"{expression} {op} {operand}"
        value = new_value
    question = f"{rng.choice(INSTRUCTIONS)} What is {expression}?"
    reasoning = " ".join(f"Step {i + 1}: {step}." for i, step in enumerate(steps))
    answer = f"{T.THINK_OPEN}{reasoning}{T.THINK_CLOSE} The answer is {T.BOXED_PREFIX}{value}}}."
    return question, answer


def training_corpus(seed: int = 0) -> list[str]:
    """A few hundred strings; special-token strings are cut out (they are added tokens, not learned)."""
    rng = random.Random(seed)
    texts = list(INSTRUCTIONS) + [T.THINKING_INSTRUCTION]
    for _ in range(300):
        question, answer = arithmetic_sample(rng)
        texts.append(T.chat_prompt_text(question, thinking=rng.random() < 0.5) + answer + T.EOS_TOKEN)
    for _ in range(100):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        texts.append(rng.choice(LATEX).format(a=a, b=b, c=a * b))
    special = re.compile("|".join(re.escape(text) for text, _ in ADDED_TOKENS))
    return [piece for text in texts for piece in special.split(text) if piece]


def tokenizer_config() -> dict:
    """tokenizer_config.json readable by transformers 4.x and 5.x (PreTrainedTokenizerFast)."""
    first_added = VOCAB_SIZE - len(ADDED_TOKENS)
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": T.BOS_TOKEN,
        "eos_token": T.EOS_TOKEN,
        "pad_token": T.EOS_TOKEN,
        "mask_token": T.MASK_TOKEN,
        "additional_special_tokens": [text for text, special in ADDED_TOKENS[3:] if special],
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
        "added_tokens_decoder": {
            str(first_added + i): {
                "content": text,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": special,
            }
            for i, (text, special) in enumerate(ADDED_TOKENS)
        },
    }


def build(out_dir: Path = OUT_DIR) -> Path:
    """Train the tokenizer and write tokenizer.json, tokenizer_config.json, special_tokens_map.json."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(ADDED_TOKENS),
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_corpus(), trainer=trainer)
    if tokenizer.get_vocab_size() != VOCAB_SIZE - len(ADDED_TOKENS):
        raise RuntimeError(
            f"the corpus gave {tokenizer.get_vocab_size()} BPE tokens, expected {VOCAB_SIZE - len(ADDED_TOKENS)}"
        )
    tokenizer.add_tokens(
        [
            AddedToken(text, special=special, normalized=False, lstrip=False, rstrip=False, single_word=False)
            for text, special in ADDED_TOKENS
        ]
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    config = tokenizer_config()
    special_map = {key: config[key] for key in ("bos_token", "eos_token", "pad_token", "mask_token")}
    special_map["additional_special_tokens"] = config["additional_special_tokens"]
    for name, content in (("tokenizer_config.json", config), ("special_tokens_map.json", special_map)):
        (out_dir / name).write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output directory")
    args = parser.parse_args(argv)
    print(f"wrote {build(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
