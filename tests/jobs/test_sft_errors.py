"""`python -m jobs.sft` turns every input error into one line on stderr and exit status 2, never a traceback, and
finds the model, data and row errors before Ray starts (tracker issue 18, finding 8)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import model
from jobs.sft import main
from model.tiny import tiny_model

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "jobs/configs/sft_demo.yaml")


@pytest.fixture
def no_ray(monkeypatch):
    """Fails the test if jobs.sft gets as far as starting Ray."""
    import actors.cluster

    def tripwire(*args, **kwargs):
        raise AssertionError("Ray was started before the input error was found")

    monkeypatch.setattr(actors.cluster, "init_ray", tripwire)


def small_data(tmp_path: Path, rows: list[dict]) -> list[str]:
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "heldout.jsonl").write_text(json.dumps({"prompt": "1 + 1 =", "answer": "2"}) + "\n")
    return ["--set", f"run.output_dir={tmp_path}", "--set", f"data.train={tmp_path / 'train.jsonl'}",
            "--set", f"data.heldout={tmp_path / 'heldout.jsonl'}"]


GOOD_ROWS = [{"prompt": f"{i} + 1 =", "answer": str(i + 1), "response": f"<answer>{i + 1}</answer>"} for i in range(4)]


def test_a_config_error_is_one_message_and_status_2(capsys):
    assert main(["--config", DEMO, "--set", "sft.bogus=1"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"ConfigError: invalid config ({DEMO}):\n") and "sft.bogus: unknown key" in error
    assert "Traceback" not in error


def test_a_truncated_checkpoint_is_refused_before_ray_naming_the_file(tmp_path, no_ray, capsys):
    checkpoint = model.save(tiny_model(seed=0), tmp_path / "ckpt", max_shard_bytes=None)
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    code = main(["--config", DEMO, *small_data(tmp_path, GOOD_ROWS), "--set", f"model.path={checkpoint}"])
    error = capsys.readouterr().err
    assert code == 2, error
    assert error.startswith(f"ModelSpecError: model.path: cannot read the checkpoint in '{checkpoint}': {weights} is "
                            "truncated: tensor ")


def test_a_missing_data_file_is_refused_before_ray_naming_it(tmp_path, no_ray, capsys):
    missing = tmp_path / "nowhere.jsonl"
    code = main(["--config", DEMO, *small_data(tmp_path, GOOD_ROWS), "--set", f"data.train={missing}"])
    error = capsys.readouterr().err
    assert code == 2 and error.startswith("DataError: ") and str(missing) in error


def test_a_row_without_a_response_is_refused_before_ray_naming_file_and_row(tmp_path, no_ray, capsys):
    rows = [*GOOD_ROWS[:2], {"prompt": "5 + 1 =", "answer": "6"}, *GOOD_ROWS[2:]]
    code = main(["--config", DEMO, *small_data(tmp_path, rows)])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith(f"DataError: {tmp_path / 'train.jsonl'}:3: no reference response in column 'response'")


def test_resources_the_cluster_cannot_give_are_refused_before_ray_starts(tmp_path):
    """A process of its own: in this one the tests' Ray may be running, which jobs.sft would join unchecked."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_JOB_ID")}
    command = [sys.executable, "-m", "jobs.sft", "--config", DEMO, *small_data(tmp_path, GOOD_ROWS),
               "--set", "cluster.num_cpus=1", "--set", "learner.cpus_per_rank=2"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ResourceError: learner.cpus_per_rank=2: each learner actor needs 2 CPU but the largest "
                           "node has 1")
    assert "Traceback" not in result.stderr
