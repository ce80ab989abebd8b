"""A local copy of GSM8K or MATH, as published, turned into prompt files of `jobs.data`'s format.

    python -m jobs.tasks.prepare gsm8k --src ~/datasets/gsm8k --out data/gsm8k
    python -m jobs.tasks.prepare math --src ~/datasets/MATH --out data/math

Each writes `train.jsonl` and `test.jsonl` under `--out`, one row per problem:
`{"uid", "prompt", "answer", "task": "text"}` (MATH rows also keep `level` and `type`, which reach rewards as
`Sample.meta`). The task is `text`, whose default reward terms are `correctness` and `format`
(rewards/config.py); `answer` is the gold final answer, extracted here once:

- GSM8K (`question`, `answer` ending in `#### 42`): the rest of the last `####` line, commas removed.
- MATH (`problem`, `solution`, `level`, `type`): the content of the solution's last `\\boxed{...}` (nested
  braces balanced, `rewards.extract.last_boxed`, the extraction the correctness reward uses).

`--src` is the directory of the download, in any of the published layouts: GSM8K's
`train.jsonl` / `test.jsonl` (OpenAI's grade-school-math release) or the Hugging Face parquet layout
(`main/train-00000-of-00001.parquet`; `socratic/` is not read); MATH's per-problem JSON files in
`train/<subject>/` and `test/<subject>/` (the original release), or JSON lines / parquet files whose names
start with `train` / `test`. A row that cannot be used (no question, no `####` line, no `\\boxed{}`, not
JSON) is reported by file and row and left out; a split with no usable row is an error (exit 2), and nothing
is written then. The formats and fields: docs/data.md §5.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

SPLITS = ("train", "test")
TASK = "text"  # the default reward terms of rewards/config.py: correctness and format


class PrepareError(ValueError):
    """The source cannot be turned into a split (no files found, or no usable row)."""


def _question_and_solution(row: dict[str, Any], question: str, solution: str) -> tuple[str, str]:
    """The record's question (non-empty) and worked solution texts, from the columns so named; ValueError."""
    texts = row.get(question), row.get(solution)
    if not isinstance(texts[0], str) or not texts[0].strip():
        raise ValueError(f"no '{question}' text (got {texts[0]!r:.60})")
    if not isinstance(texts[1], str):
        raise ValueError(f"no '{solution}' text (got {texts[1]!r:.60})")
    return texts[0].strip(), texts[1]


def gsm8k_row(row: dict[str, Any]) -> dict[str, Any]:
    """Our row of a GSM8K record; ValueError saying what is missing."""
    from rewards.extract import last_hash_answer

    question, solution = _question_and_solution(row, "question", "answer")
    final = last_hash_answer(solution)
    answer = "" if final is None else final.strip().replace(",", "")
    if not answer:
        raise ValueError(f"the 'answer' has no final answer after '####' ({solution[-60:]!r})")
    return {"prompt": question, "answer": answer, "task": TASK}


def math_row(row: dict[str, Any]) -> dict[str, Any]:
    """Our row of a MATH record; ValueError saying what is missing."""
    from rewards.extract import last_boxed

    problem, solution = _question_and_solution(row, "problem", "solution")
    boxed = last_boxed(solution)
    if boxed is None or not boxed.strip():
        raise ValueError(f"the 'solution' has no \\boxed{{...}} answer ({solution[-60:]!r})")
    return {"prompt": problem, "answer": boxed.strip(), "task": TASK,
            **{key: row[key] for key in ("level", "type") if row.get(key) is not None}}


def split_files(src: Path, split: str) -> list[Path]:
    """The files of `split` under `src`, in sorted order: `<split>*.jsonl` / `<split>*.parquet` anywhere below
    it (below `main/` when there is one: GSM8K's Hugging Face copy also holds the `socratic/` variant of the
    same problems), else the per-problem `*.json` files of a `<split>/` directory (MATH's original layout)."""
    if (src / "main").is_dir():
        src = src / "main"
    tables = sorted(p for suffix in (".jsonl", ".parquet") for p in src.rglob(f"{split}*{suffix}"))
    if tables:
        return tables
    per_problem = [directory for directory in (src / split, src / "MATH" / split) if directory.is_dir()]
    return sorted(per_problem[0].rglob("*.json")) if per_problem else []


def source_rows(files: list[Path], problems: list[str]) -> Iterator[tuple[str, str, dict]]:
    """(uid suffix, `file:row`, record) of every readable record; unreadable ones go to `problems`. The suffix
    is `<subject>-<problem>` for a per-problem file, else the record's number in the split (from 0, over the
    files in order)."""
    from jobs.data import raw_rows

    number = 0
    for path in files:
        if path.suffix == ".json":
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                problems.append(f"{path}:1: not a JSON problem file ({exc})")
                continue
            if not isinstance(record, dict):
                problems.append(f"{path}:1: expected a JSON object, got {type(record).__name__}")
                continue
            yield f"{path.parent.name}-{path.stem}", f"{path}:1", record
            continue
        for row_no, record in raw_rows(path, path.suffix.lstrip("."), problems):
            yield f"{number:05d}", f"{path}:{row_no}", record
            number += 1


def prepare_split(name: str, to_row: Callable[[dict], dict], files: list[Path], split: str,
                  problems: list[str]) -> list[dict[str, Any]]:
    """Our rows of one split; the records `to_row` refuses go to `problems` as `file:row: reason`."""
    rows = []
    for stem, where, record in source_rows(files, problems):
        try:
            row = to_row(record)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        rows.append({"uid": f"{name}-{split}-{stem}", **row})
    return rows


DATASETS: dict[str, Callable[[dict], dict]] = {"gsm8k": gsm8k_row, "math": math_row}


def prepare(name: str, src: Path, out: Path) -> tuple[dict[str, int], list[str]]:
    """Write `<out>/<split>.jsonl` for both splits; (rows written per split, bad rows as `file:row: reason`).
    PrepareError when a split has no files or no usable row (nothing is written then)."""
    if not src.is_dir():
        raise PrepareError(f"--src {src}: not a directory; give the folder of the {name} download")
    problems: list[str] = []
    splits = {}
    for split in SPLITS:
        files = split_files(src, split)
        if not files:
            raise PrepareError(f"{src}: no {split} files of {name} found; expected {split}*.jsonl or {split}*.parquet "
                               f"below it{' or per-problem JSON files in ' + split + '/' if name == 'math' else ''}")
        splits[split] = prepare_split(name, DATASETS[name], files, split, problems)
        if not splits[split]:
            raise PrepareError(f"{src}: no usable {split} row of {name} in {len(files)} file(s):\n  "
                               + "\n  ".join(problems[:20]))
    from model.atomic_write import write_atomic

    out.mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        write_atomic(out / f"{split}.jsonl", "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return {split: len(rows) for split, rows in splits.items()}, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.tasks.prepare", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=sorted(DATASETS), help="which dataset --src holds")
    parser.add_argument("--src", required=True, type=Path, help="the local copy, as published (module docstring)")
    parser.add_argument("--out", required=True, type=Path, help="output directory (train.jsonl, test.jsonl)")
    args = parser.parse_args(argv)
    try:
        counts, problems = prepare(args.dataset, args.src, args.out)
    except PrepareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(f"skipped {problem}", file=sys.stderr)
    print(f"wrote {', '.join(f'{args.out / split}.jsonl ({n} rows)' for split, n in counts.items())}; "
          f"{len(problems)} bad row(s) skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
