"""Benchmarks: `python -m jobs.bench <name> [options]`.

Each benchmark lives in `jobs/bench/<name>.py` and exposes `main(argv) -> int`. Benchmarks measure the
things they compare side by side in one run and report ratios; tests never assert on timings.
"""

BENCHMARKS = ("sampler", "rewards", "pipeline", "ablation", "toy_t2i", "gpu", "memory")
