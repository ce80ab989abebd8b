"""Smoke test of `python -m jobs.bench pipeline` (no timing assertions: benches report, tests don't judge)."""

from __future__ import annotations

import json

import pytest

from jobs.bench import pipeline as bench


def test_summarize_shares_by_hand():
    # Two measured steps after a warm-up; step 2: 1 + 0 + 2 + 0.5 + 0.5 other = 4 s, step 3: 2 + 1 + 2 + 1 = 6 s.
    metrics = [
        {"step": 1, "wall_time": 100.0, "perf/step_s": 30.0, "perf/rollout_collect_s": 29.0, "perf/weight_sync_s": 1.0},
        {"step": 2, "wall_time": 105.0, "perf/step_s": 4.0, "perf/rollout_collect_s": 1.0, "perf/reward_s": 0.0,
         "perf/update_s": 2.0, "perf/weight_sync_s": 0.5, "perf/weight_sync_wait_s": 0.0},
        {"step": 3, "wall_time": 112.0, "perf/step_s": 6.0, "perf/rollout_collect_s": 1.5, "perf/reward_s": 1.0,
         "perf/update_s": 2.0, "perf/weight_sync_s": 1.0, "perf/weight_sync_wait_s": 0.5},
    ]
    row = bench.summarize(metrics)
    assert row["steps"] == 2 and row["step_s"] == 5.0
    assert row["phase_s"] == pytest.approx({"rollout": 1.5, "reward": 0.5, "update": 2.0, "weight_sync": 0.75,
                                            "other": 0.25})
    assert row["phase_share"]["update"] == pytest.approx(0.4)
    assert row["weight_sync_frac"] == pytest.approx((0.5 / 4 + 1.0 / 6) / 2)
    assert row["steps_per_s"] == pytest.approx(2 / 12)  # 12 s of wall clock from step 1 to step 3
    with pytest.raises(ValueError, match="warm-up"):
        bench.summarize(metrics[:1])


def test_one_sync_run_writes_json(tmp_path, ray_session, capsys):
    out = tmp_path / "pipeline.json"
    argv = ["--steps", "1", "--modes", "sync", "--workers", "1", "--size", "tiny", "--output-dir", str(tmp_path),
            "--out", str(out)]
    assert bench.main(argv) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [(r["mode"], r["workers"], r["steps"]) for r in runs] == [("sync", 1, 1)]
    assert set(runs[0]["phase_share"]) == {"rollout", "reward", "update", "weight_sync", "other"}
    assert "sync/step" in capsys.readouterr().out
