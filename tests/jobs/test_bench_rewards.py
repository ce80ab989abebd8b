"""Smoke test of `python -m jobs.bench rewards` (no timing assertions: benches report, tests don't judge speed)."""

from __future__ import annotations

import json

from jobs.bench import rewards as bench


def test_every_text_case_measures(tmp_path):
    for case in bench.bench_cases():
        row = bench.measure(case, n=4, single=2, repeat=1)
        assert row["case"] == case.name and row["batched_samples_per_s"] > 0 and row["single_p50_ms"] > 0
        assert 0.0 <= row["none_fraction"] <= 1.0


def test_main_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--n", "4", "--single", "2", "--repeat", "1", "--only", "format", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [row["case"] for row in rows] == ["format"]
    assert "samples/s" in capsys.readouterr().out
    assert bench.main(["--only", "no-such-case"]) == 2
