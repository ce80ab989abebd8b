"""The learning-curve PNG and the pieces it is drawn from (jobs/plots.py)."""

from __future__ import annotations

import json

import pytest

from jobs.plots import eval_series, learning_curve, main, moving_average, reward_series


def write_metrics(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


RECORDS = [
    {"step": 0, "eval/pass@1": 0.10, "eval/format_rate": 0.99},
    {"step": 1, "reward/text/total/mean": 0.5, "reward/text/correctness/mean": 0.1, "reward/t2i/total/mean": 0.2},
    {"step": 2, "reward/text/total/mean": 1.0, "reward/t2i/total/mean": None},
    {"step": 3, "reward/text/total/mean": 1.5, "eval/pass@1": 0.25, "eval/format_rate": 1.0},
]


def test_series_read_per_task_totals_and_evaluations():
    # only `reward/<task>/total/mean` counts as a reward point; null (no scorable sample) is skipped
    assert reward_series(RECORDS) == {"text": ([1, 2, 3], [0.5, 1.0, 1.5]), "t2i": ([1], [0.2])}
    assert eval_series(RECORDS, "eval/pass@1") == ([0, 3], [0.10, 0.25])


def test_moving_average_matches_a_loop():
    values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0]
    for window in (1, 2, 3, 10):
        expected = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
                    for i in range(len(values))]
        assert moving_average(values, window) == pytest.approx(expected)


def test_learning_curve_writes_a_png(tmp_path, capsys):
    write_metrics(tmp_path / "metrics.jsonl", RECORDS)
    path = learning_curve(tmp_path)
    assert path == tmp_path / "learning_curve.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    assert main([str(tmp_path)]) == 0
    assert f"learning curve: {path}" in capsys.readouterr().out


def test_a_run_without_evaluation_still_plots(tmp_path):
    write_metrics(tmp_path / "metrics.jsonl", RECORDS[1:3])
    assert learning_curve(tmp_path).is_file()


def test_missing_metrics_name_the_file(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl: no metrics file"):
        learning_curve(tmp_path)
    assert main([str(tmp_path)]) == 2
    assert "no metrics file" in capsys.readouterr().err
