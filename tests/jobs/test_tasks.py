"""jobs/tasks/arithmetic.py: determinism, disjoint splits, correct golds and worked lines, reference
responses that the `format` and `correctness` rewards score 1.0, the checked-in files, error branches.

Golds are recomputed by `evaluate_expression`, a tiny recursive-descent evaluator written here from the
grammar (integers, + - *, parentheses), independent of the generator's code.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from jobs.tasks.arithmetic import Ranges, generate, main

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data" / "arithmetic"


def evaluate_expression(text: str) -> int:
    """expr := term (('+'|'-') term)*; term := factor ('*' factor)*; factor := INT | '(' expr ')'."""
    tokens = re.findall(r"\d+|[-+*()]", text)
    assert "".join(tokens) == text.replace(" ", ""), f"unexpected characters in {text!r}"
    position = 0

    def peek():
        return tokens[position] if position < len(tokens) else None

    def take():
        nonlocal position
        position += 1
        return tokens[position - 1]

    def factor():
        token = take()
        if token == "(":
            value = expr()
            assert take() == ")"
            return value
        return int(token)

    def term():
        value = factor()
        while peek() == "*":
            take()
            value *= factor()
        return value

    def expr():
        value = term()
        while peek() in ("+", "-"):
            value = value + term() if take() == "+" else value - term()
        return value

    result = expr()
    assert position == len(tokens), f"trailing tokens in {text!r}"
    return result


def test_evaluator_itself():
    assert evaluate_expression("(12 + 7) * 3 - 5") == 52  # 19 * 3 = 57, 57 - 5 = 52
    assert evaluate_expression("2 + 3 * 4") == 14  # precedence: 3 * 4 first
    assert evaluate_expression("10 - 2 - 3") == 5  # left associative


def expression_of(prompt: str) -> str:
    match = re.fullmatch(r"Compute (.+)\.", prompt)
    assert match, prompt
    return match.group(1)


def check_row(row: dict) -> None:
    assert row["task"] == "text"
    gold = evaluate_expression(expression_of(row["prompt"]))
    assert row["answer"] == str(gold) and gold >= 0
    think = re.fullmatch(r"<think>(.+)</think>\\boxed\{(\d+)\}", row["response"], flags=re.S)
    assert think, row["response"]
    assert think.group(2) == row["answer"]
    lines = think.group(1).split("\n")
    assert len(lines) == row["num_steps"] in (2, 3)
    for line in lines:  # every worked line is a true equation with non-negative numbers
        left, right = line.split("=")
        assert re.fullmatch(r"\d+[-+*]\d+", left) and int(right) == evaluate_expression(left) >= 0
    assert lines[-1].split("=")[1] == row["answer"]


def test_rows_are_correct_and_deterministic():
    splits = generate(300, 60, seed=3)
    assert splits == generate(300, 60, seed=3)
    assert splits != generate(300, 60, seed=4)
    for row in splits["train"] + splits["heldout"]:
        check_row(row)
    assert {row["num_steps"] for row in splits["train"]} == {2, 3}


def test_splits_are_disjoint_and_heldout_does_not_depend_on_train_size():
    small, large = generate(50, 40, seed=0), generate(500, 40, seed=0)
    assert small["heldout"] == large["heldout"]
    heldout = {row["prompt"] for row in large["heldout"]}
    train = [row["prompt"] for row in large["train"]]
    assert len(set(train)) == len(train) and not heldout & set(train)
    uids = [row["uid"] for row in large["train"] + large["heldout"]]
    assert len(set(uids)) == len(uids)


def test_three_step_fraction_extremes():
    assert {r["num_steps"] for r in generate(40, 0, three_step_fraction=0.0)["train"]} == {2}
    assert {r["num_steps"] for r in generate(40, 0, three_step_fraction=1.0)["train"]} == {3}


def test_reference_responses_score_full_marks():
    import rewards
    from rewards.base import Sample

    rows = generate(64, 0, seed=5)["train"]
    samples = [Sample(task="text", prompt=r["prompt"], response=r["response"], answer=r["answer"]) for r in rows]
    assert rewards.get("format")(samples) == [1.0] * len(rows)
    correctness = rewards.get("correctness")
    assert correctness(samples) == [1.0] * len(rows)
    assert correctness.path_counts["fast_number"] == len(rows)  # decided without math-verify


def test_checked_in_files_are_what_the_documented_command_writes():
    """docs/demo.md: python -m jobs.tasks.arithmetic --out data/arithmetic --train 6000 --heldout 256 --seed 0"""
    splits = generate(6000, 256, seed=0)
    for split, rows in splits.items():
        lines = (DATA / f"{split}.jsonl").read_text().splitlines()
        assert [json.loads(line) for line in lines] == rows


def test_responses_fit_the_demo_generation_length():
    from model.tokenizer import load_tiny_tokenizer

    tokenizer = load_tiny_tokenizer()
    rows = [json.loads(line) for line in (DATA / "heldout.jsonl").read_text().splitlines()]
    lengths = [len(ids) for ids in tokenizer([r["response"] for r in rows], add_special_tokens=False)["input_ids"]]
    assert max(lengths) < 40  # sampler.gen_length of jobs/configs/sft_demo.yaml, one EOS at least


def test_cli_writes_both_files(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--train", "7", "--heldout", "3", "--seed", "1"]) == 0
    written = {split: [json.loads(x) for x in (tmp_path / f"{split}.jsonl").read_text().splitlines()]
               for split in ("train", "heldout")}
    assert written == generate(7, 3, seed=1)
    assert "wrote 7 problems" in capsys.readouterr().out


@pytest.mark.parametrize("kwargs, message", [
    ({"num_train": -1, "num_heldout": 1}, "sizes must be >= 0"),
    ({"num_train": 1, "num_heldout": 1, "three_step_fraction": 1.5}, "three_step_fraction"),
    ({"num_train": 1, "num_heldout": 1, "ranges": Ranges(add_max=1)}, "both must be >= 2"),
    ({"num_train": 5000, "num_heldout": 0, "ranges": Ranges(add_max=2, mul_max=2)}, "distinct problems"),
])
def test_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(**kwargs)
