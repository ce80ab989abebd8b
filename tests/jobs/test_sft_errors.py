"""`python -m jobs.sft` turns every input error into one `error: ...` message on stderr and exit status 2, as the
other jobs of the tree do (jobs/config.py `job_main`), never a traceback, and finds the model, data and row errors
before Ray starts (tracker issue 18, finding 8)."""

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
            "--set", f"data.eval={tmp_path / 'heldout.jsonl'}"]


GOOD_ROWS = [{"prompt": f"{i} + 1 =", "answer": str(i + 1), "response": f"<answer>{i + 1}</answer>"} for i in range(4)]


def test_a_config_error_is_one_message_and_status_2(capsys):
    assert main(["--config", DEMO, "--set", "sft.bogus=1"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: invalid config ({DEMO}):\n") and "sft.bogus: unknown key" in error
    assert "Traceback" not in error


def test_a_truncated_checkpoint_is_refused_before_ray_naming_the_file(tmp_path, no_ray, capsys):
    checkpoint = model.save(tiny_model(seed=0), tmp_path / "ckpt", max_shard_bytes=None)
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    code = main(["--config", DEMO, *small_data(tmp_path, GOOD_ROWS), "--set", f"model.path={checkpoint}",
                 "--set", "model.tiny_size={}"])
    error = capsys.readouterr().err
    assert code == 2, error
    assert error.startswith(f"error: model.path: cannot read the checkpoint in '{checkpoint}': {weights} is "
                            "truncated: tensor ")


def test_a_missing_data_file_is_refused_before_ray_naming_it(tmp_path, no_ray, capsys):
    missing = tmp_path / "nowhere.jsonl"
    code = main(["--config", DEMO, *small_data(tmp_path, GOOD_ROWS), "--set", f"data.train={missing}"])
    error = capsys.readouterr().err
    assert code == 2 and error.startswith("error: ") and str(missing) in error


@pytest.mark.parametrize("column", ["response", "solution"])
def test_a_row_without_a_response_is_refused_before_ray_naming_file_and_row(tmp_path, no_ray, capsys, column):
    """The reference response is read from the column `data.fields.response` names (default `response`)."""
    rows = [{"prompt": r["prompt"], "answer": r["answer"], column: r["response"]} for r in GOOD_ROWS]
    third = {"prompt": "5 + 1 =", "answer": "6", "notes": "<answer>6</answer>"}
    renamed = [] if column == "response" else ["--set", f"data.fields={{response: {column}}}"]
    code = main(["--config", DEMO, *small_data(tmp_path, [*rows[:2], third, *rows[2:]]), *renamed])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith(f"error: {tmp_path / 'train.jsonl'}:3: no reference response in column {column!r}"), error


def test_resources_the_cluster_cannot_give_are_refused_before_ray_starts(tmp_path):
    """A process of its own: in this one the tests' Ray may be running, which jobs.sft would join unchecked."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_JOB_ID")}
    command = [sys.executable, "-m", "jobs.sft", "--config", DEMO, *small_data(tmp_path, GOOD_ROWS),
               "--set", "cluster.num_cpus=1", "--set", "learner.cpus_per_rank=2"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: learner.cpus_per_rank=2: each learner actor needs 2 CPU but the largest "
                           "node has 1")
    assert "Traceback" not in result.stderr
