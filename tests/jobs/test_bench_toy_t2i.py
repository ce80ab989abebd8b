"""The statistics of `python -m jobs.bench toy_t2i` worked out by hand, and its reading of metrics.jsonl.
(The runs themselves take minutes per seed; docs/multimodal.md reports them.)"""

from __future__ import annotations

import json
import math

import pytest

from jobs.bench.toy_t2i import learning_stats, reward_series, window_stats


def test_window_stats_by_hand():
    series = [0.1, 0.2, 0.1, 0.2, 0.1, 0.3, 0.5, 0.5, 0.5, 0.5, 0.5]
    s = window_stats(series, 5)
    # first window mean 0.14, sample variance (3·0.04² + 2·0.06²)/4 = 0.003; last window constant 0.5
    assert s["first"] == pytest.approx(0.14) and s["last"] == pytest.approx(0.5)
    assert s["diff"] == pytest.approx(0.36) and s["se"] == pytest.approx(math.sqrt(0.003 / 5))
    assert s["margin"] == pytest.approx(0.36 / math.sqrt(0.0006))
    with pytest.raises(ValueError, match="need at least 2 x window = 10 steps"):
        window_stats(series[:9], 5)
    with pytest.raises(ValueError, match="window >= 2"):
        window_stats(series, 1)


def test_verdict_needs_every_seed_and_the_seed_spread():
    up = [0.1, 0.2, 0.1, 0.2, 0.1, 0.5, 0.6, 0.5, 0.6, 0.5]  # d = 0.4, SE = sqrt(2·0.003/5)
    up2 = [0.1, 0.2, 0.1, 0.2, 0.1, 0.45, 0.55, 0.45, 0.55, 0.45]  # d = 0.35, same SE
    flat = [0.1, 0.2, 0.1, 0.2, 0.1, 0.1, 0.2, 0.1, 0.2, 0.1]  # d = 0
    stats = learning_stats({0: up, 1: up2}, window=5)
    assert stats["passed"] and stats["per_seed"][0]["diff"] == pytest.approx(0.4)
    # across seeds: mean 0.375, sd of (0.4, 0.35) = 0.0353553, SE = sd / sqrt(2) = 0.025
    assert stats["across_seeds"]["mean_diff"] == pytest.approx(0.375)
    assert stats["across_seeds"]["se_seeds"] == pytest.approx(0.025)
    assert stats["across_seeds"]["margin"] == pytest.approx(15.0)
    assert not learning_stats({0: up, 1: flat}, window=5)["passed"]  # one seed did not learn
    noisy = [0.1, 0.2, 0.1, 0.2, 0.1, 0.15, 0.25, 0.15, 0.25, 0.15]  # d = 0.05 < 3 · SE (0.0346 · 3)
    assert not learning_stats({0: up, 1: noisy}, window=5)["passed"]


def test_reward_series_reads_training_steps_in_order(tmp_path):
    path = tmp_path / "metrics.jsonl"
    key = "reward/t2i/shape_match/mean"
    rows = [{"step": 0, "eval/pass@1": 0.0}, {"step": 2, key: 0.5, "perf/step_s": 1.0},
            {"step": 1, key: 0.25, "perf/step_s": 1.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert reward_series(path, key) == [0.25, 0.5]  # the held-out line of step 0 is not a training step
    path.write_text(json.dumps({"step": 1, "perf/step_s": 1.0}) + "\n")
    with pytest.raises(ValueError, match=r"no reward/t2i/shape_match/mean at steps \[1\]"):
        reward_series(path, key)
