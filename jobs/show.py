"""Print what the policy wrote in one training step, group by group, from the run directory's rollouts.jsonl.

    python -m jobs.show runs/demo                        # the last step logged
    python -m jobs.show runs/demo --step 3 --uid arith-train-04424

Per prompt group: the prompt (and gold answer), then each sample's response, its rewards by term (a None
with its reason), the weighted total, the advantage the update used, the policy version that sampled it and
the reveal order (the sampler step that revealed each scored response token); a t2i step lists its image
grid files. The rows are written by `jobs.train` (jobs/train_parts.py `rollout_rows`, `logging.rollout_text`);
a run logged without text shows uid, sample, version and total only. The file format: docs/cluster.md §3.

Only the standard library is imported (no torch, no Ray), and only the chosen step's line is parsed, so it
answers at once on a long run's file. Exit code 2 for a missing run directory or file, or a step or uid the
file does not hold (the message lists those it does).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ROLLOUTS = "rollouts.jsonl"
_STEP = re.compile(rb'^\{"step": (-?\d+)[,}]')  # how MetricsLogger.log_rollouts starts every line


class ShowError(Exception):
    """Bad input to jobs.show: the message says what is missing and what is there."""


def step_offsets(path: Path) -> dict[int, tuple[int, int]]:
    """step -> (byte offset, length) of its line in `path`; a line that does not start like a step's (a
    torn or foreign line) is left out. The last line of a step written twice wins."""
    offsets: dict[int, tuple[int, int]] = {}
    position = 0
    with path.open("rb") as handle:
        for line in handle:
            match = _STEP.match(line)
            if match:
                offsets[int(match.group(1))] = (position, len(line))
            position += len(line)
    return offsets


def step_ranges(steps: list[int]) -> str:
    """Sorted steps as compact ranges: [1, 2, 3, 7] -> '1-3, 7'."""
    runs: list[list[int]] = []  # [first, last] of each run of consecutive steps
    for step in sorted(steps):
        if runs and step == runs[-1][1] + 1:
            runs[-1][1] = step
        else:
            runs.append([step, step])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def read_step(run_dir: Path, step: int | None) -> dict[str, Any]:
    """The rollouts.jsonl entry of `step` (None: the last step whose line is whole) of the run in `run_dir`."""
    if not run_dir.is_dir():
        raise ShowError(f"{run_dir}: no such run directory (a run writes <run.output_dir>/<run.name>/, "
                        "e.g. runs/demo)")
    path = run_dir / ROLLOUTS
    if not path.is_file():
        raise ShowError(f"{run_dir} has no {ROLLOUTS}: no step has been logged there yet (is it a jobs.train "
                        "run directory?)")
    offsets = step_offsets(path)
    if not offsets:
        raise ShowError(f"{path} holds no step (empty, or no line in the format jobs.train writes)")
    if step is not None and step not in offsets:
        raise ShowError(f"step {step} is not in {path}; steps there: {step_ranges(list(offsets))}")
    candidates = [step] if step is not None else sorted(offsets, reverse=True)
    with path.open("rb") as handle:
        for candidate in candidates:  # the last step's line may be torn by a kill: then the one before
            start, length = offsets[candidate]
            handle.seek(start)
            try:
                return json.loads(handle.read(length))
            except json.JSONDecodeError:
                continue
    raise ShowError(f"the line of step {candidates[0]} in {path} is torn (a run killed while writing it; a resumed "
                    "run drops it)" + ("" if step is not None else ", and so is every line before it"))


def _number(value: Any, signed: bool = False) -> str:
    if value is None:
        return "None"
    if isinstance(value, float):
        return f"{value:+.4f}" if signed else f"{value:.4g}"
    return str(value)


def _indented(label: str, text: str | None) -> list[str]:
    lines = (text or "").splitlines() or ["(empty)"]
    return [f"    {label}: {lines[0]}"] + [" " * (len(label) + 6) + line for line in lines[1:]]


def format_step(entry: dict[str, Any], run_dir: Path, uid: str | None = None) -> str:
    """The text `python -m jobs.show` prints for one rollouts.jsonl entry (only group `uid` if given)."""
    rows = entry["rows"]
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["uid"], []).append(row)
    if uid is not None:
        if uid not in groups:
            raise ShowError(f"uid {uid!r} is not in step {entry['step']}; its uids: {', '.join(groups)}")
        groups = {uid: groups[uid]}
    versions = sorted({row["version"] for row in rows})
    text = "prompt" in rows[0] if rows else False
    out = [f"{run_dir} step {entry['step']}: {len(rows)} samples of {len(dict.fromkeys(r['uid'] for r in rows))} "
           f"prompts, policy version {', '.join(map(str, versions))}"]
    if not text:
        out.append("(logged with logging.rollout_text: false: no prompt, response or rewards by term)")
    for path in entry.get("images", []):
        out.append(f"image grid: {run_dir / path}")
        captions = (run_dir / path).with_suffix(".json")
        if captions.is_file():
            out += [f"  row {i}: {caption}" for i, caption in enumerate(json.loads(captions.read_text())["rows"])]
    if text and "images" not in entry and any(row["kind"] == "t2i" for row in rows):
        out.append("(no image grid at this step: grids are written every logging.sample_table_every steps)")
    for number, (key, members) in enumerate(groups.items(), 1):
        first = members[0]
        out += ["", f"== {key}  (group {number}/{len(groups)}, task {first['task']}"
                + (f", kind {first['kind']})" if text else ")")]
        if text:
            out += [line[2:] for line in _indented("prompt", first["prompt"])]
            if first["answer"] is not None:
                out.append(f"  answer: {first['answer']}")
        for row in sorted(members, key=lambda r: r["sample"]):
            head = f"  [{row['sample']}] total {_number(row['reward'])}"
            if text:
                reason = f" ({row['total_reason']})" if row["total_reason"] else ""
                terms = " ".join(f"{term}={_number(value)}" + (f" ({row['reasons'][term]})" if term in row["reasons"]
                                                              else "") for term, value in row["rewards"].items())
                advantage = "none (group dropped)" if row["advantage"] is None else _number(row["advantage"], signed=True)
                head += f"{reason}  advantage {advantage}  v{row['version']}  {terms}"
                out.append(head)
                if row["kind"] != "t2i":
                    out += _indented("response", row["response"])
                if row["reveal"] is not None:
                    out.append(f"    reveal: {' '.join(map(str, row['reveal']))}")
            else:
                out.append(f"{head}  v{row['version']}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.show", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="the run directory (<run.output_dir>/<run.name>)")
    parser.add_argument("--step", type=int, help="the step to print (default: the last one logged)")
    parser.add_argument("--uid", help="print only this prompt's group")
    args = parser.parse_args(argv)
    try:
        print(format_step(read_step(args.run, args.step), args.run, args.uid))
    except ShowError as exc:
        print(f"jobs.show: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
