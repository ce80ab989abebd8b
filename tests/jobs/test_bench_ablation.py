"""The estimator ablation runner (jobs/bench/ablation.py)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from jobs.bench import ablation

REPO = Path(__file__).resolve().parents[2]


def fake_summary(run_dir: Path, start: float, final: float) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"heldout": [
        {"step": 0, "eval/pass@1": start, "eval/problems": 256.0},
        {"step": 50, "eval/pass@1": final, "eval/problems": 256.0}]}))


def test_summary_of_finished_runs_is_mean_and_sample_std(tmp_path, capsys):
    """Runs whose summary.json exists are read, not run again (an interrupted ablation continues)."""
    finals = {"stratified": [0.5, 0.6, 0.7], "random": [0.4, 0.4, 0.5], "diffu_grpo": [0.3, 0.2, 0.1]}
    for variant, values in finals.items():
        for seed, value in enumerate(values):
            fake_summary(tmp_path / f"{variant}-seed{seed}", 0.25, value)
    assert ablation.main(["--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "ablation.json").read_text())
    for variant, values in finals.items():
        stats = report["summary"][variant]
        assert stats["mean"] == pytest.approx(sum(values) / 3)
        assert stats["std"] == pytest.approx((sum((v - sum(values) / 3) ** 2 for v in values) / 2) ** 0.5)
        assert stats["std"] == pytest.approx(statistics.stdev(values))
    assert "| stratified | 60.0 ± 10.0 | 50.0, 60.0, 70.0 | 25.0 |" in capsys.readouterr().out
    assert (tmp_path / "ablation.md").read_text().startswith("| variant |")


def test_a_summary_without_evaluation_is_an_error(tmp_path):
    (tmp_path / "random-seed0").mkdir()
    (tmp_path / "random-seed0" / "summary.json").write_text(json.dumps({"heldout": []}))
    with pytest.raises(RuntimeError, match="no held-out evaluation; the base config needs data.eval"):
        ablation.main(["--out", str(tmp_path), "--variants", "random", "--seeds", "0"])


@pytest.mark.slow
def test_one_real_run_per_variant_flag(tmp_path):
    """A real (tiny, one-step) diffu_grpo run: the variant's override reaches the resolved config. It evaluates on
    the driver's copy of the policy (eval.where: driver; the demo test covers the rollout workers')."""
    from jobs.config import load_config

    assert ablation.main([
        "--config", str(REPO / "tests/jobs/configs/tiny_lengths.yaml"), "--out", str(tmp_path),
        "--variants", "diffu_grpo", "--seeds", "3",
        "--set", "run.steps=1", "--set", "data.eval=tests/jobs/data/arith_small.jsonl", "--set", "eval.limit=4",
        "--set", "checkpoint.every=0", "--set", "eval.where=driver"]) == 0
    cfg = load_config(tmp_path / "diffu_grpo-seed3" / "config.yaml")
    assert cfg.algo.estimator == "diffu_grpo" and cfg.run.seed == 3 and cfg.eval.where == "driver"
    row = json.loads((tmp_path / "ablation.json").read_text())["runs"][0]
    assert row["final_step"] == 1 and row["problems"] == 4 and row["wall_s"] > 0


def test_a_failed_run_names_its_directory(tmp_path):
    with pytest.raises(RuntimeError, match="run random-seed0 failed with exit code 2"):
        ablation.main(["--config", str(REPO / "jobs/configs/demo.yaml"), "--out", str(tmp_path),
                       "--variants", "random", "--seeds", "0", "--set", "no_such.key=1"])
