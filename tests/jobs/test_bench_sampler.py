"""`python -m jobs.bench sampler` runs and reports what it claims (a smoke test; timings are never asserted)."""

from __future__ import annotations

import json

from jobs.bench.__main__ import main as bench_main


def test_sampler_bench_smoke(tmp_path):
    out = tmp_path / "sampler.json"
    assert bench_main(["sampler", "--sizes", "tiny", "--temperatures", "0", "--batch", "2", "--gen-length", "16",
                       "--steps", "8", "--block-length", "8", "--repeats", "1", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["results"]
    assert row["n_forwards"] == 8  # one forward per denoising step, nothing revealed without one
    assert abs(row["tokens_per_s"] * row["sampler_s"] - 2 * 16) < 1e-6  # batch x gen_length tokens
    assert row["overhead_ratio"] > 0 and row["inner_ratio"] > 0


def test_unknown_benchmark_lists_the_valid_ones(capsys):
    assert bench_main(["nope"]) == 2
    assert "available: sampler, rewards, pipeline" in capsys.readouterr().err
