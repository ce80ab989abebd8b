"""A `model.path` whose checkpoint is damaged is refused before Ray or any actor starts, with exit status 2 and a
message naming the file (tracker issue 18, finding 8): the resolver (model/resolve.py) checks config.json, the
index and every shard's safetensors header, so jobs.train and jobs.rollout (and jobs.sft: test_sft_errors.py)
get the check without one of their own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import model
from model.checkpoint import INDEX_NAME
from model.tiny import tiny_model

REPO = Path(__file__).resolve().parents[2]
CONFIG = "tests/jobs/configs/tiny_lengths.yaml"


def damage(checkpoint: Path, kind: str) -> str:
    """Damage a sharded checkpoint; returns what the error must name."""
    weight_map = json.loads((checkpoint / INDEX_NAME).read_text())["weight_map"]
    shards = sorted(set(weight_map.values()))
    if kind == "truncated shard":
        shard = checkpoint / shards[-1]
        shard.write_bytes(shard.read_bytes()[:-1])
        return f"{shard} is truncated: tensor "
    if kind == "missing shard":
        (checkpoint / shards[0]).unlink()
        return f"shard {shards[0]} referenced by {checkpoint / INDEX_NAME} does not exist"
    if kind == "shard missing a tensor":  # the index names a tensor in a shard that does not hold it
        other = next(k for k, shard in weight_map.items() if shard != shards[0])
        (checkpoint / INDEX_NAME).write_text(json.dumps({"weight_map": {**weight_map, other: shards[0]}}))
        return f"{INDEX_NAME} puts weight {other} in {shards[0]}, but {checkpoint / shards[0]} does not contain it"
    raw = json.loads((checkpoint / "config.json").read_text())  # "hidden size disagrees"
    (checkpoint / "config.json").write_text(json.dumps({**raw, "d_model": 2 * raw["d_model"]}))
    return (f"weight model.transformer.wte.weight in {weight_map['model.transformer.wte.weight']} has shape "
            f"[600, 64], expected [600, 128] from the config")


KINDS = ["truncated shard", "missing shard", "shard missing a tensor", "hidden size disagrees"]


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    return model.save(tiny_model(seed=0), tmp_path / "ckpt", max_shard_bytes=100_000)


@pytest.mark.parametrize("kind", KINDS)
def test_jobs_train_refuses_a_damaged_checkpoint_before_ray_naming_the_file(checkpoint, tmp_path, kind,
                                                                           monkeypatch, capsys):
    import jobs.train

    def tripwire(*args, **kwargs):
        raise AssertionError("the actors started before model.path was checked")

    monkeypatch.setattr(jobs.train, "start_actors", tripwire)
    monkeypatch.chdir(REPO)  # the config's data paths are relative to the repository
    named = damage(checkpoint, kind)
    code = jobs.train.main(["--config", CONFIG, "--set", f"run.output_dir={tmp_path}", "--set",
                            f"model.path={checkpoint}"])
    error = capsys.readouterr().err
    assert code == 2, error
    assert error.startswith(f"ConfigError: invalid config:\n  model.path: cannot read the checkpoint in "
                            f"'{checkpoint}': ")
    assert named in error and "Traceback" not in error


def test_jobs_rollout_refuses_a_damaged_checkpoint_before_ray_naming_the_file(checkpoint, tmp_path, monkeypatch,
                                                                              capsys):
    import actors.cluster
    from jobs.rollout import main

    def tripwire(*args, **kwargs):
        raise AssertionError("Ray was started before --model was checked")

    monkeypatch.setattr(actors.cluster, "init_ray", tripwire)
    named = damage(checkpoint, "truncated shard")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "1 + 1 ="}) + "\n")
    code = main(["--model", str(checkpoint), "--prompts", str(prompts), "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err
    assert code == 2  # --model is an alias of --set model.path
    assert error.startswith(f"error: invalid config:\n  model.path: cannot read the checkpoint in '{checkpoint}': ")
    assert named in error and "Traceback" not in error
