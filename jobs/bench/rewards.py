"""`python -m jobs.bench rewards`: per-sample latency and throughput of each built-in reward.

For every bench case the reward is built, warmed up (worker processes started), then timed
- batched: `reward(samples)` on `--n` samples, `--repeat` times (throughput, ms per sample);
- one at a time: `reward([sample])` for `--single` samples (p50/p95 ms per call),
and the ratio one-at-a-time / batched per sample is reported. All cases run side by side in one process.

Text cases live here (`bench_cases()`). Vision cases (clip, image_reward) come from
`jobs/bench/rewards_vision.py:bench_cases() -> list[BenchCase]` when that module exists; it builds its own
tiny models. Options: `--n`, `--single`, `--repeat`, `--only SUBSTRING`, `--out FILE.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import rewards
from rewards import Sample


@dataclass
class BenchCase:
    """One row of the table."""

    name: str
    """Row label, e.g. `correctness/latex`."""
    make_samples: Callable[[int], list[Sample]]
    """n -> n samples to score."""
    build: Callable[[dict[str, Any]], Any]
    """context -> the reward (the context holds what `setup` yielded, e.g. a server URL)."""
    setup: Callable[[], contextlib.AbstractContextManager[dict[str, Any]]] = field(
        default=lambda: contextlib.nullcontext({}))
    """Context manager around the case (starts a server, writes a tiny model, ...), yielding a context dict."""
    note: str = ""


# ---------------------------------------------------------------------------------------------- text cases
def _latex_pair(i: int) -> tuple[str, str]:
    """A distinct (response answer, gold) pair per i, so no parse cache helps; every 4th pair is wrong."""
    k = i // 7 + 1
    pairs = [
        (f"\\frac{{{k}}}{{{k + 1}}}", f"\\frac{{{2 * k}}}{{{2 * k + 2}}}"),
        (f"{k}\\sqrt{{2}}", f"\\sqrt{{{2 * k * k}}}"),
        (f"({k},{k + 1}]", f"({k},{k + 1}]"),
        (f"x^2+{2 * k}x+{k * k}", f"(x+{k})^2"),
        (f"\\{{{k},{k + 1}\\}}", f"\\{{{k + 1},{k}\\}}"),
        (f"{k}+2i", f"{k}+2i"),
        (f"\\frac{{{k}\\pi}}{{2}}", f"{k}\\pi/2"),
    ]
    response, gold = pairs[i % 7]
    return (response + "+1" if i % 4 == 3 else response), gold


def _numeric_samples(n: int) -> list[Sample]:
    """GSM8K-like: boxed integer vs `#### n` gold; every second answer is off by one."""
    return [Sample("text", "q", f"<think>{i} + {i} = {2 * i}</think>The answer is \\boxed{{{2 * i + i % 2}}}",
                   f"Some steps.\n#### {2 * i}") for i in range(n)]


def _latex_samples(n: int) -> list[Sample]:
    """MATH-like: fractions, roots, intervals, polynomials, sets, complex numbers, pi; all distinct."""
    return [Sample("text", "q", f"<think>work {i}</think>\\boxed{{{response}}}", gold)
            for i, (response, gold) in ((i, _latex_pair(i)) for i in range(n))]


class _InlineMathVerify:
    """Reference: math-verify parse+verify in this process, one core, no deadline (what the pool replaces)."""

    def __init__(self) -> None:
        from rewards.correctness import SymbolicCompare
        from rewards.extract import extract_answer, extract_gold

        self._compare, self._answer, self._gold = SymbolicCompare(), extract_answer, extract_gold
        self._compare.prepare()

    def __call__(self, samples: list[Sample]) -> list[float | None]:
        return [self._compare((self._gold(s.answer), self._answer(s.response).text))[0] for s in samples]


class _BenchHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if "samples" in body:
            reply = {"scores": [min(1.0, len(s["response"]) / 100) for s in body["samples"]]}
        else:
            reply = {"choices": [{"message": {"content": "Looks fine.\nScore: 7"}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextlib.contextmanager
def _local_server() -> Iterator[dict[str, Any]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _BenchHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"url": f"http://127.0.0.1:{server.server_address[1]}"}
    finally:
        server.shutdown()
        server.server_close()


def bench_cases() -> list[BenchCase]:
    """The text rewards' cases; `main` appends `jobs.bench.rewards_vision.bench_cases()` when present."""
    return [
        BenchCase("format", _numeric_samples, lambda ctx: rewards.get("format")),
        BenchCase("correctness/plain-numbers", _numeric_samples, lambda ctx: rewards.get("correctness"),
                  note="fast path: exact Fraction compare, no worker"),
        BenchCase("correctness/latex", _latex_samples, lambda ctx: rewards.get("correctness"),
                  note="math-verify in worker processes, hard deadline"),
        BenchCase("correctness/latex-1-worker", _latex_samples, lambda ctx: rewards.get("correctness", num_workers=1),
                  note="same, one worker (compare with inline)"),
        BenchCase("math-verify-inline (reference)", _latex_samples, lambda ctx: _InlineMathVerify(),
                  note="no deadline, one core, in process"),
        BenchCase("remote/batch", _numeric_samples, lambda ctx: rewards.get("remote", url=ctx["url"] + "/score"),
                  setup=_local_server, note="local stdlib HTTP server"),
        BenchCase("remote/judge", _numeric_samples,
                  lambda ctx: rewards.get("remote", url=ctx["url"] + "/v1/chat/completions", mode="judge"),
                  setup=_local_server, note="one request per sample, 8 concurrent"),
    ]


def _vision_cases() -> list[BenchCase]:
    try:
        module = importlib.import_module("jobs.bench.rewards_vision")
    except ModuleNotFoundError as exc:
        if exc.name != "jobs.bench.rewards_vision":
            raise
        return []
    return list(module.bench_cases())


# ---------------------------------------------------------------------------------------------- measuring
def measure(case: BenchCase, *, n: int, single: int, repeat: int) -> dict[str, Any]:
    with case.setup() as context:
        started = time.perf_counter()
        reward = case.build(context)
        build_s = time.perf_counter() - started
        try:
            # distinct samples for warm-up, every repetition and the single calls: no cache hit across them
            samples = case.make_samples(8 + n * repeat + single)
            started = time.perf_counter()
            reward(samples[:8])  # warm-up: worker processes, model load
            warmup_s = time.perf_counter() - started
            batched = []
            for r in range(repeat):
                chunk = samples[8 + r * n: 8 + (r + 1) * n]
                started = time.perf_counter()
                values = reward(chunk)
                batched.append(time.perf_counter() - started)
            per_call = []
            for sample in samples[8 + n * repeat:]:
                started = time.perf_counter()
                reward([sample])
                per_call.append(time.perf_counter() - started)
        finally:
            close = getattr(reward, "close", None)
            if callable(close):
                close()
    best = min(batched)
    batched_ms = 1000 * best / n
    p50 = 1000 * statistics.median(per_call)
    return {
        "case": case.name, "n": n, "build_s": build_s, "warmup_s": warmup_s,
        "batched_samples_per_s": n / best, "batched_ms_per_sample": batched_ms,
        "single_p50_ms": p50, "single_p95_ms": 1000 * sorted(per_call)[max(0, int(0.95 * len(per_call)) - 1)],
        "single_over_batched": p50 / batched_ms if batched_ms > 0 else float("inf"),
        "none_fraction": sum(v is None for v in values) / len(values), "note": case.note,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.bench rewards", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=256, help="batch size for the batched measurement")
    parser.add_argument("--single", type=int, default=32, help="one-sample calls for the latency measurement")
    parser.add_argument("--repeat", type=int, default=3, help="batched repetitions (best is reported)")
    parser.add_argument("--only", default="", help="run only cases whose name contains this")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if min(args.n, args.single, args.repeat) < 1:
        parser.error("--n, --single and --repeat must be >= 1")
    cases = [c for c in bench_cases() + _vision_cases() if args.only in c.name]
    if not cases:
        print(f"no bench case matches --only {args.only!r}", file=sys.stderr)
        return 2
    rows = []
    header = f"{'case':34} {'samples/s':>10} {'ms/sample':>10} {'1-call p50':>11} {'p95':>8} {'1-call/batch':>12}  note"
    print(header)
    print("-" * len(header))
    for case in cases:
        row = measure(case, n=args.n, single=args.single, repeat=args.repeat)
        rows.append(row)
        print(f"{row['case']:34} {row['batched_samples_per_s']:10.1f} {row['batched_ms_per_sample']:10.3f} "
              f"{row['single_p50_ms']:11.3f} {row['single_p95_ms']:8.3f} {row['single_over_batched']:11.1f}x  "
              f"{row['note']}", flush=True)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"n": args.n, "single": args.single, "repeat": args.repeat, "rows": rows}, handle, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
