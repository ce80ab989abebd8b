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
    """A complete solution: one true line per operation, the last line's value boxed and equal to the gold.
    A stopped-early one (the weak teacher's): the same minus the last line, the line before it boxed.
    A sign-slipped one: complete, the last line's value boxed with a minus sign."""
    assert row["task"] == "text"
    gold = evaluate_expression(expression_of(row["prompt"]))
    assert row["answer"] == str(gold) and gold >= 0
    think = re.fullmatch(r"<think>(.+)</think>\\boxed\{(-?)(\d+)\}", row["response"], flags=re.S)
    assert think, row["response"]
    lines = think.group(1).split("\n")
    assert row["num_steps"] in (2, 3)
    assert len(lines) == row["num_steps"] - (0 if row["response_complete"] else 1)
    for line in lines:  # every worked line is a true equation with non-negative numbers
        left, right = line.split("=")
        assert re.fullmatch(r"\d+[-+*]\d+", left) and int(right) == evaluate_expression(left) >= 0
    slipped = think.group(2) == "-"
    assert think.group(3) == lines[-1].split("=")[1]
    assert (think.group(3) == row["answer"]) == row["response_complete"]  # an early stop is never right
    assert row["response_correct"] == (row["response_complete"] and not slipped)
    assert not (slipped and not row["response_complete"])  # one fault per solution


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


def test_weak_teacher_stops_early_on_training_rows_only():
    """stop_early q: each training solution independently loses its last operation with probability q; the
    problems, the held-out file and the complete solutions do not change with q."""
    complete, weak, all_early = (generate(400, 40, seed=2, stop_early=q) for q in (0.0, 0.5, 1.0))
    assert weak["heldout"] == complete["heldout"] == all_early["heldout"]
    assert all(row["response_complete"] for row in complete["train"] + weak["heldout"])
    assert not any(row["response_complete"] for row in all_early["train"])
    early = [row for row in weak["train"] if not row["response_complete"]]
    assert 0.4 < len(early) / 400 < 0.6  # Binomial(400, 0.5): 4 standard deviations either side
    by_uid = {row["uid"]: row for row in complete["train"]}
    for row in weak["train"] + all_early["train"]:
        check_row(row)
        same = by_uid[row["uid"]]
        assert (row["prompt"], row["answer"], row["num_steps"]) == (same["prompt"], same["answer"], same["num_steps"])
        if not row["response_complete"]:  # the complete solution with its last line cut, the line before boxed
            kept = same["response"].split("</think>")[0].split("\n")[:-1]
            assert row["response"] == "\n".join(kept) + "</think>\\boxed{" + kept[-1].split("=")[1] + "}"


def test_sign_slip_negates_the_boxed_answer_of_training_rows_only():
    """sign_slip q: with stop_early s, a training row slips when the teacher's coin u lies in [s, s + q): the
    complete solution with `{-` for `{`; problems, held-out rows and early stops do not change with q."""
    plain, slipped, both = (generate(400, 40, seed=2, stop_early=s, sign_slip=q) for s, q in
                            ((0.3, 0.0), (0.0, 0.5), (0.3, 0.5)))
    assert plain["heldout"] == slipped["heldout"] == both["heldout"] == generate(400, 40, seed=2)["heldout"]
    assert all(row["response_correct"] for row in both["heldout"])
    rate = sum(not row["response_correct"] for row in slipped["train"]) / 400
    assert 0.4 < rate < 0.6  # Binomial(400, 0.5): 4 standard deviations either side
    reference = {row["uid"]: row for row in generate(400, 40, seed=2)["train"]}
    for with_slips, without in ((slipped, generate(400, 40, seed=2)), (both, plain)):
        for row, same in zip(with_slips["train"], without["train"]):
            check_row(row)
            assert (row["uid"], row["prompt"], row["answer"]) == (same["uid"], same["prompt"], same["answer"])
            assert row["response_complete"] == same["response_complete"]  # the coin's first s: early stops
            if row["response"] != same["response"]:  # a slip: the reference solution, boxed negated
                assert same["response_correct"] and not row["response_correct"]
                assert row["response"] == reference[row["uid"]]["response"].replace("\\boxed{", "\\boxed{-")
    early = sum(not row["response_complete"] for row in both["train"])
    slips = sum(row["response_complete"] and not row["response_correct"] for row in both["train"])
    assert 0.22 < early / 400 < 0.38 and 0.4 < slips / 400 < 0.6  # coin in [0, 0.3) and [0.3, 0.8)


def test_a_sign_slip_is_one_token_and_scores_format_but_not_correctness():
    import rewards
    from model.tokenizer import load_tiny_tokenizer
    from rewards.base import Sample

    rows = generate(64, 0, seed=5, sign_slip=1.0)["train"]
    samples = [Sample(task="text", prompt=r["prompt"], response=r["response"], answer=r["answer"]) for r in rows]
    assert rewards.get("format")(samples) == [1.0] * len(rows)
    assert rewards.get("correctness")(samples) == [0.0] * len(rows)
    tokenizer = load_tiny_tokenizer()
    reference = generate(64, 0, seed=5)["train"]
    for row, gold in zip(rows, reference):
        ids, gold_ids = (tokenizer(r["response"], add_special_tokens=False)["input_ids"] for r in (row, gold))
        differ = [i for i, (a, b) in enumerate(zip(ids, gold_ids)) if a != b]
        assert len(ids) == len(gold_ids) and len(differ) == 1
        assert tokenizer.decode([ids[differ[0]]]) == "{-" and tokenizer.decode([gold_ids[differ[0]]]) == "{"


def test_stopped_early_solutions_score_format_but_not_correctness():
    import rewards
    from rewards.base import Sample

    rows = generate(64, 0, seed=5, stop_early=1.0)["train"]
    samples = [Sample(task="text", prompt=r["prompt"], response=r["response"], answer=r["answer"]) for r in rows]
    assert rewards.get("format")(samples) == [1.0] * len(rows)
    assert rewards.get("correctness")(samples) == [0.0] * len(rows)


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


def test_checked_in_sign_slip_files_are_what_the_documented_command_writes():
    """jobs/configs/sft_sign_slip.yaml: python -m jobs.tasks.arithmetic --out data/arithmetic_slip --sign-slip 0.7"""
    splits = generate(6000, 256, seed=0, sign_slip=0.7)
    for split, rows in splits.items():
        lines = (REPO / "data" / "arithmetic_slip" / f"{split}.jsonl").read_text().splitlines()
        assert [json.loads(line) for line in lines] == rows
    assert (REPO / "data/arithmetic_slip/heldout.jsonl").read_bytes() == (DATA / "heldout.jsonl").read_bytes()
    assert [r["prompt"] for r in splits["train"]] == [r["prompt"] for r in generate(6000, 256, seed=0)["train"]]


def test_responses_fit_the_demo_generation_length():
    from model.tokenizer import load_tiny_tokenizer

    tokenizer = load_tiny_tokenizer()
    rows = [json.loads(line) for line in (DATA / "heldout.jsonl").read_text().splitlines()]
    lengths = [len(ids) for ids in tokenizer([r["response"] for r in rows], add_special_tokens=False)["input_ids"]]
    assert max(lengths) < 40  # rollout.sampler.gen_length of jobs/configs/sft_demo.yaml, one EOS at least


def test_cli_writes_both_files(tmp_path, capsys):
    def written(out):
        return {split: [json.loads(x) for x in (out / f"{split}.jsonl").read_text().splitlines()]
                for split in ("train", "heldout")}

    assert main(["--out", str(tmp_path / "a"), "--train", "7", "--heldout", "3", "--seed", "1"]) == 0
    assert written(tmp_path / "a") == generate(7, 3, seed=1)
    assert "wrote 7 problems" in capsys.readouterr().out
    assert main(["--out", str(tmp_path / "b"), "--train", "7", "--heldout", "3", "--seed", "1",
                 "--stop-early", "0.5"]) == 0
    assert written(tmp_path / "b") == generate(7, 3, seed=1, stop_early=0.5)
    assert main(["--out", str(tmp_path / "c"), "--train", "7", "--heldout", "3", "--seed", "1",
                 "--sign-slip", "0.5"]) == 0
    assert written(tmp_path / "c") == generate(7, 3, seed=1, sign_slip=0.5)


@pytest.mark.parametrize("kwargs, message", [
    ({"num_train": -1, "num_heldout": 1}, "sizes must be >= 0"),
    ({"num_train": 1, "num_heldout": 1, "three_step_fraction": 1.5}, "three_step_fraction"),
    ({"num_train": 1, "num_heldout": 1, "stop_early": -0.1}, r"stop_early: -0.1 must lie in \[0, 1\]"),
    ({"num_train": 1, "num_heldout": 1, "sign_slip": -0.1}, r"sign_slip: -0.1 must lie in \[0, 1 - stop_early\]"),
    ({"num_train": 1, "num_heldout": 1, "stop_early": 0.6, "sign_slip": 0.5}, r"sign_slip: 0.5 .* = \[0, 0.4\]"),
    ({"num_train": 1, "num_heldout": 1, "ranges": Ranges(add_max=1)}, "both must be >= 2"),
    ({"num_train": 5000, "num_heldout": 0, "ranges": Ranges(add_max=2, mul_max=2)}, "distinct problems"),
])
def test_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(**kwargs)
