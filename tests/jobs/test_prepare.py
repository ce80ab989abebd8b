"""`python -m jobs.tasks.prepare`: GSM8K and MATH in their published layouts (a handful of rows written here) become
prompt files that `jobs.data` loads, with the gold answers extracted and every bad row named by file and row."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.data import PromptDataset
from jobs.tasks.prepare import main, prepare

GSM8K_TRAIN = [
    {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
    {"question": "A car costs $12,500 and a bike $1,250. Total?", "answer": "12500+1250=13750\n#### 13,750"},
    {"question": "Lost 5 of 2 coins?", "answer": "2-5=-3\n#### -3"},
    {"question": "No final answer here.", "answer": "It is 4."},  # bad: no '####'
    {"question": "  ", "answer": "#### 1"},  # bad: empty question
    {"question": "Where is the answer?"},  # bad: no answer
]
GSM8K_TEST = [{"question": "What is 6 times 7?", "answer": "6*7=42\n#### 42"}]
GSM8K_GOLD = ["7", "13750", "-3"]  # '####' line, commas removed, by hand


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def write_parquet(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("layout", ["jsonl", "parquet"])
def test_gsm8k_in_both_published_layouts(tmp_path, layout, capsys):
    src = tmp_path / "src"
    if layout == "jsonl":  # github.com/openai/grade-school-math: data/train.jsonl, data/test.jsonl
        write_jsonl(src / "train.jsonl", GSM8K_TRAIN), write_jsonl(src / "test.jsonl", GSM8K_TEST)
        train_file = src / "train.jsonl"
    else:  # the Hugging Face datasets layout
        train_file = src / "main" / "train-00000-of-00001.parquet"
        write_parquet(train_file, GSM8K_TRAIN), write_parquet(src / "main" / "test-00000-of-00001.parquet", GSM8K_TEST)
        write_parquet(src / "socratic" / "train-00000-of-00001.parquet", GSM8K_TRAIN)  # the same problems again
    out = tmp_path / "data" / "gsm8k"
    assert main(["gsm8k", "--src", str(src), "--out", str(out)]) == 0
    train = read(out / "train.jsonl")
    assert [r["answer"] for r in train] == GSM8K_GOLD
    assert train[0] == {"uid": "gsm8k-train-00000", "prompt": GSM8K_TRAIN[0]["question"], "answer": "7", "task": "text"}
    assert read(out / "test.jsonl") == [{"uid": "gsm8k-test-00000", "prompt": "What is 6 times 7?", "answer": "42",
                                         "task": "text"}]
    err = capsys.readouterr().err.splitlines()
    assert err == [f"skipped {train_file}:4: the 'answer' has no final answer after '####' ('It is 4.')",
                   f"skipped {train_file}:5: no 'question' text (got '  ')",
                   f"skipped {train_file}:6: no 'answer' text (got None)"]
    data = PromptDataset(out / "train.jsonl")  # our loader takes it as it is
    assert [r.answer for r in data.records] == GSM8K_GOLD and data.problems == []


MATH_PROBLEMS = {  # (split, subject, id): (problem, solution, gold by hand)
    ("train", "algebra", "1"): ("Solve $x+1=3$.", "So $x = \\boxed{2}$.", "2"),
    ("train", "prealgebra", "7"): ("Half of 1?", "First \\boxed{0}, no: it is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("train", "geometry", "3"): ("Set?", "The set is $\\boxed{\\{1, \\{2\\}\\}}$.", "\\{1, \\{2\\}\\}"),
    ("test", "algebra", "9"): ("Root of 9?", "$\\sqrt{9} = \\boxed{3}$", "3"),
}


def test_math_as_per_problem_json_files(tmp_path):
    src = tmp_path / "MATH"
    for (split, subject, uid), (problem, solution, _) in MATH_PROBLEMS.items():
        (src / split / subject).mkdir(parents=True, exist_ok=True)
        (src / split / subject / f"{uid}.json").write_text(json.dumps(
            {"problem": problem, "level": "Level 2", "type": subject.title(), "solution": solution}))
    (src / "train" / "algebra" / "2.json").write_text(json.dumps({"problem": "No box?", "solution": "It is 4."}))
    (src / "train" / "algebra" / "5.json").write_text("{broken")
    (src / "train" / "algebra" / "6.json").write_text("[1, 2]")
    counts, problems = prepare("math", src, tmp_path / "out")
    assert counts == {"train": 3, "test": 1}
    train = {r["uid"]: r for r in read(tmp_path / "out" / "train.jsonl")}
    assert {uid: r["answer"] for uid, r in train.items()} == {
        f"math-train-{subject}-{uid}": gold for (split, subject, uid), (_, _, gold) in MATH_PROBLEMS.items()
        if split == "train"}
    assert train["math-train-algebra-1"] == {"uid": "math-train-algebra-1", "prompt": "Solve $x+1=3$.", "answer": "2",
                                             "task": "text", "level": "Level 2", "type": "Algebra"}
    assert problems[0] == f"{src}/train/algebra/2.json:1: the 'solution' has no \\boxed{{...}} answer ('It is 4.')"
    assert problems[1].startswith(f"{src}/train/algebra/5.json:1: not a JSON problem file (")
    assert problems[2] == f"{src}/train/algebra/6.json:1: expected a JSON object, got list"
    assert len(problems) == 3
    records = PromptDataset(tmp_path / "out" / "train.jsonl").records
    assert records[0].meta == {"level": "Level 2", "type": "Algebra"}  # kept for rewards (Sample.meta)


def test_math_as_jsonl_and_a_source_without_usable_rows(tmp_path, capsys):
    rows = [{"problem": p, "solution": s, "level": "Level 5", "type": subject}
            for (split, subject, _), (p, s, _) in MATH_PROBLEMS.items() if split == "train"]
    write_jsonl(tmp_path / "hf" / "train.jsonl", [*rows, "not json"])
    write_jsonl(tmp_path / "hf" / "test.jsonl", [{"problem": "Q", "solution": "\\boxed{}"}])
    assert main(["math", "--src", str(tmp_path / "hf"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"no usable test row of math in 1 file(s):\n  {tmp_path}/hf/train.jsonl:4: not valid JSON" in err
    assert f"{tmp_path}/hf/test.jsonl:1: the 'solution' has no \\boxed{{...}} answer ('\\\\boxed{{}}')" in err
    assert not (tmp_path / "out").exists()  # nothing written
    write_jsonl(tmp_path / "hf" / "test.jsonl", [{"problem": "Q", "solution": "\\boxed{5}"}])
    assert main(["math", "--src", str(tmp_path / "hf"), "--out", str(tmp_path / "out")]) == 0
    assert [r["answer"] for r in read(tmp_path / "out" / "train.jsonl")] == ["2", "\\frac{1}{2}", "\\{1, \\{2\\}\\}"]
    assert main(["gsm8k", "--src", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    assert f"--src {tmp_path / 'nothing'}: not a directory; give the folder of the gsm8k download" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["gsm8k", "--src", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no train files of gsm8k found; expected train*.jsonl or train*.parquet below it" in capsys.readouterr().err
