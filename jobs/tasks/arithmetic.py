"""Multi-step integer arithmetic with worked solutions: the embedded demo's reasoning task.

    python -m jobs.tasks.arithmetic --out data/arithmetic --train 6000 --heldout 256 --seed 0

(the defaults) writes `train.jsonl` and `heldout.jsonl` in the dataset format of `jobs.data`, each row with the
worked solution SFT imitates (`response`). A task small enough to learn on a CPU, whose problems mix easy and
hard so that an SFT policy stops part-way with room for RL above it; `--stop-early` and `--sign-slip` make a
teacher with a systematic fault that RL, not imitation, can remove. The files are a pure function of the
arguments, and the held-out file shares no problem with the training file. The row format, the shapes, the
teacher's faults and determinism: docs/demo.md §1; what the faults were for: docs/demo.md §4 and §6.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TASK = "text"


@dataclass(frozen=True)
class Problem:
    """One arithmetic problem and its worked solution."""

    expression: str  # "(12 + 7) * 3 - 5"
    lines: tuple[str, ...]  # ("12+7=19", "19*3=57", "57-5=52"), one per operation, in evaluation order
    answer: int

    @property
    def prompt(self) -> str:
        return f"Compute {self.expression}."

    @property
    def response(self) -> str:
        return "<think>" + "\n".join(self.lines) + f"</think>\\boxed{{{self.answer}}}"

    @property
    def sign_slip_response(self) -> str:
        """The sign-slipping teacher's solution: every line right, the answer boxed negated."""
        return "<think>" + "\n".join(self.lines) + f"</think>\\boxed{{-{self.answer}}}"

    @property
    def stopped_early_response(self) -> str:
        """The weak teacher's solution: the last operation left out, the line before it boxed."""
        lines = self.lines[:-1]
        return "<think>" + "\n".join(lines) + f"</think>\\boxed{{{lines[-1].rsplit('=', 1)[1]}}}"


@dataclass(frozen=True)
class Ranges:
    """Operand ranges: additive operands in [1, add_max], multipliers in [2, mul_max]."""

    add_max: int = 9
    mul_max: int = 9


def _add(x: int, y: int) -> tuple[int, str]:
    return x + y, f"{x}+{y}={x + y}"


def _sub(x: int, y: int) -> tuple[int, str]:
    return x - y, f"{x}-{y}={x - y}"


def _mul(x: int, y: int) -> tuple[int, str]:
    return x * y, f"{x}*{y}={x * y}"


def _a_plus_b_times_c(rng: random.Random, r: Ranges) -> Problem:
    a, b, c = rng.randint(1, r.add_max), rng.randint(2, r.mul_max), rng.randint(2, r.mul_max)
    x, line1 = _mul(b, c)
    y, line2 = _add(a, x)
    return Problem(f"{a} + {b} * {c}", (line1, line2), y)


def _sum_times_c(rng: random.Random, r: Ranges) -> Problem:
    a, b, c = rng.randint(1, r.add_max), rng.randint(1, r.add_max), rng.randint(2, r.mul_max)
    x, line1 = _add(a, b)
    y, line2 = _mul(x, c)
    return Problem(f"({a} + {b}) * {c}", (line1, line2), y)


def _product_minus_c(rng: random.Random, r: Ranges) -> Problem:
    a, b = rng.randint(2, r.add_max), rng.randint(2, r.mul_max)
    x, line1 = _mul(a, b)
    c = rng.randint(1, min(r.add_max, x))
    y, line2 = _sub(x, c)
    return Problem(f"{a} * {b} - {c}", (line1, line2), y)


def _difference_times_c(rng: random.Random, r: Ranges) -> Problem:
    a = rng.randint(2, r.add_max)
    b, c = rng.randint(1, a - 1), rng.randint(2, r.mul_max)
    x, line1 = _sub(a, b)
    y, line2 = _mul(x, c)
    return Problem(f"({a} - {b}) * {c}", (line1, line2), y)


def _sum_times_c_minus_d(rng: random.Random, r: Ranges) -> Problem:
    a, b, c = rng.randint(1, r.add_max), rng.randint(1, r.add_max), rng.randint(2, r.mul_max)
    x, line1 = _add(a, b)
    y, line2 = _mul(x, c)
    d = rng.randint(1, min(r.add_max, y))
    z, line3 = _sub(y, d)
    return Problem(f"({a} + {b}) * {c} - {d}", (line1, line2, line3), z)


def _two_products(rng: random.Random, r: Ranges) -> Problem:
    a, b = rng.randint(2, r.add_max), rng.randint(2, r.mul_max)
    c, d = rng.randint(2, r.mul_max), rng.randint(2, r.mul_max)
    x, line1 = _mul(a, b)
    y, line2 = _mul(c, d)
    z, line3 = _add(x, y)
    return Problem(f"{a} * {b} + {c} * {d}", (line1, line2, line3), z)


def _difference_times_c_plus_d(rng: random.Random, r: Ranges) -> Problem:
    a = rng.randint(2, r.add_max)
    b, c, d = rng.randint(1, a - 1), rng.randint(2, r.mul_max), rng.randint(1, r.add_max)
    x, line1 = _sub(a, b)
    y, line2 = _mul(x, c)
    z, line3 = _add(y, d)
    return Problem(f"({a} - {b}) * {c} + {d}", (line1, line2, line3), z)


def _a_times_sum_minus_d(rng: random.Random, r: Ranges) -> Problem:
    a, b, c = rng.randint(2, r.mul_max), rng.randint(1, r.add_max), rng.randint(1, r.add_max)
    x, line1 = _add(b, c)
    y, line2 = _mul(a, x)
    d = rng.randint(1, min(r.add_max, y))
    z, line3 = _sub(y, d)
    return Problem(f"{a} * ({b} + {c}) - {d}", (line1, line2, line3), z)


Shape = Callable[[random.Random, Ranges], Problem]
SHAPES: dict[int, tuple[Shape, ...]] = {
    2: (_a_plus_b_times_c, _sum_times_c, _product_minus_c, _difference_times_c),
    3: (_sum_times_c_minus_d, _two_products, _difference_times_c_plus_d, _a_times_sum_minus_d),
}


def draw_problem(rng: random.Random, *, three_step_fraction: float, ranges: Ranges) -> Problem:
    """One problem: 3 operations with probability `three_step_fraction`, else 2; shape uniform."""
    num_steps = 3 if rng.random() < three_step_fraction else 2
    return rng.choice(SHAPES[num_steps])(rng, ranges)


def generate(num_train: int, num_heldout: int, *, seed: int = 0, three_step_fraction: float = 0.5,
             ranges: Ranges = Ranges(), stop_early: float = 0.0, sign_slip: float = 0.0) -> dict[str, list[dict]]:
    """{"train": rows, "heldout": rows}; held-out drawn first, no expression in both (module docstring)."""
    if num_train < 0 or num_heldout < 0:
        raise ValueError(f"sizes must be >= 0; got train={num_train}, heldout={num_heldout}")
    if not 0.0 <= three_step_fraction <= 1.0:
        raise ValueError(f"three_step_fraction: {three_step_fraction} must lie in [0, 1]")
    if not 0.0 <= stop_early <= 1.0:
        raise ValueError(f"stop_early: {stop_early} must lie in [0, 1] (the fraction of training solutions "
                         "that leave out their last operation)")
    if not 0.0 <= sign_slip <= 1.0 - stop_early:
        raise ValueError(f"sign_slip: {sign_slip} must lie in [0, 1 - stop_early] = [0, {1.0 - stop_early:g}] (the "
                         "fraction of training solutions boxed with a minus sign; early stops take the first "
                         "stop_early of the teacher's coin)")
    if ranges.add_max < 2 or ranges.mul_max < 2:
        raise ValueError(f"ranges: add_max={ranges.add_max}, mul_max={ranges.mul_max}; both must be >= 2")
    rng = random.Random(seed)
    teacher = random.Random(f"teacher-{seed}")  # its own stream: the problems drawn do not depend on stop_early
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for split, size in (("heldout", num_heldout), ("train", num_train)):
        rows: list[dict] = []
        misses = 0
        while len(rows) < size:
            problem = draw_problem(rng, three_step_fraction=three_step_fraction, ranges=ranges)
            if problem.expression in seen:
                misses += 1
                if misses > 100 * (size + 100):
                    raise ValueError(f"{split}: only {len(rows)} distinct problems found for {size} asked; "
                                     "raise the operand ranges or ask for fewer")
                continue
            seen.add(problem.expression)
            coin = 1.0 if split == "heldout" else teacher.random()  # held-out rows: the reference solution
            complete, slipped = coin >= stop_early, stop_early <= coin < stop_early + sign_slip
            response = (problem.stopped_early_response if not complete
                        else problem.sign_slip_response if slipped else problem.response)
            rows.append({"uid": f"arith-{split}-{len(rows):05d}", "task": TASK, "prompt": problem.prompt,
                         "answer": str(problem.answer), "response": response, "num_steps": len(problem.lines),
                         "response_complete": complete, "response_correct": complete and not slipped})
        splits[split] = rows
    return splits


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.tasks.arithmetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory (train.jsonl, heldout.jsonl)")
    parser.add_argument("--train", type=int, default=6000, help="training problems")
    parser.add_argument("--heldout", type=int, default=256, help="held-out problems")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--three-step-fraction", type=float, default=0.5)
    parser.add_argument("--add-max", type=int, default=Ranges.add_max, help="largest additive operand")
    parser.add_argument("--mul-max", type=int, default=Ranges.mul_max, help="largest multiplier")
    parser.add_argument("--stop-early", type=float, default=0.0,
                        help="fraction of training solutions the weak teacher ends one operation early")
    parser.add_argument("--sign-slip", type=float, default=0.0,
                        help="fraction of training solutions the weak teacher boxes with a minus sign")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    splits = generate(args.train, args.heldout, seed=args.seed, three_step_fraction=args.three_step_fraction,
                      ranges=Ranges(args.add_max, args.mul_max), stop_early=args.stop_early, sign_slip=args.sign_slip)
    out = Path(args.out)
    for split, rows in splits.items():
        write_jsonl(rows, out / f"{split}.jsonl")
        print(f"wrote {len(rows)} problems to {out / f'{split}.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
