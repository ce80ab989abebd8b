"""The README's main command, shortened: `python -m jobs.train` with no config runs the embedded demo.

Two steps of UniGRPO on the shipped cold-start policy (jobs/configs/demo.yaml, the default), held-out evaluation
on the first 16 problems, then every output a newcomer is pointed at: the resolved config, the metrics with
the starting and final held-out pass@1, the learning-curve PNG whose path is printed, the rollout and
sample logs, TensorBoard events, the exported policy (which loads and differs from the SFT policy, since
two updates happened) and summary.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_embedded_demo_runs_end_to_end(tmp_path):
    from jobs.config import load_config
    from model import load

    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_JOB_ID")}  # a Ray of its own
    command = [sys.executable, "-m", "jobs.train", "--set", f"run.output_dir={tmp_path}", "--set", "run.steps=2",
               "--set", "eval.limit=16", "--set", "logging.sample_table_every=1"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    run_dir = tmp_path / "demo"
    curve = run_dir / "learning_curve.png"
    assert f"learning curve: {curve}" in result.stdout
    assert curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_config(run_dir / "config.yaml") == load_config(REPO / "jobs/configs/demo.yaml",
                                                               [f"run.output_dir={tmp_path}", "run.steps=2",
                                                                "eval.limit=16", "logging.sample_table_every=1"])

    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1, 2]
    assert [m["step"] for m in metrics if "eval/pass@1" in m] == [0, 2]  # the starting policy and the final one
    assert all(m["eval/problems"] == 16 for m in metrics if "eval/pass@1" in m)
    for m in metrics[1:]:
        assert m["reward/text/total/count"] == 64 and m["reward/text/correctness/count"] == 64
        assert 0.0 <= m["reward/text/total/mean"] <= 2.5
    start, final = metrics[0]["eval/pass@1"], metrics[-1]["eval/pass@1"]
    assert f"held-out pass@1: {100 * start:.1f}% at step 0 -> {100 * final:.1f}% at step 2 (16 problems)" in result.stdout

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["policy_version"] == 2 and summary["learning_curve"] == str(curve)
    assert [h["step"] for h in summary["heldout"]] == [0, 2]
    rollouts = [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) == 2 and all(len(r["rows"]) == 64 for r in rollouts)
    assert [json.loads(line)["step"] for line in (run_dir / "samples.jsonl").read_text().splitlines()] == [1, 2]
    assert len(list((run_dir / "eval").glob("step_*.jsonl"))) == 2
    # evaluated on the rollout worker (eval.where's default); jobs.eval of the export repeats it here, row for row
    from jobs.eval import main as eval_main

    again = tmp_path / "again.json"
    assert eval_main(["--config", str(run_dir / "config.yaml"), "--model", summary["export"], "--out", str(again)]) == 0
    assert ([json.loads(line) for line in again.with_name("again.samples.jsonl").read_text().splitlines()]
            == [json.loads(line) for line in (run_dir / "eval" / "step_2.jsonl").read_text().splitlines()])
    assert any((run_dir / "tensorboard").iterdir())

    start_policy = REPO / load_config(REPO / "jobs/configs/demo.yaml").model.path  # the shipped cold start
    exported, shipped = load(summary["export"]), load(start_policy)
    moved = [name for name, tensor in exported.network.state_dict().items()
             if not torch.equal(tensor, shipped.network.state_dict()[name])]
    assert moved, "two UniGRPO steps left every tensor of the shipped policy unchanged"
