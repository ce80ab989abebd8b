"""The driver's parts that need no Ray: the policy named by model.path and the training data it can take."""

from __future__ import annotations

import json
import logging

import pytest

from jobs.config import load_config
from jobs.configtree import ConfigError
from jobs.train_parts import load_data, policy_parts


def test_training_prompts_the_policy_cannot_take_are_reported_and_skipped(tmp_path, caplog):
    rows = [{"uid": "short", "prompt": "Compute 1 + 2.", "answer": "3"},
            {"uid": "long", "prompt": "1 + " * 3000 + "1", "answer": "3001"},
            {"uid": "other", "prompt": "Compute 2 * 3.", "answer": "6"}]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    cfg = load_config(None, [f"data.train={path}", "model.path=tiny", "data.eval=null"])
    policy = policy_parts(cfg)
    prompt_room = policy.config.max_sequence_length - cfg.rollout.sampler.gen_length  # 4096 - 256 for the tiny twin
    long_ids = policy.tokenizer(rows[1]["prompt"])["input_ids"]
    assert len(long_ids) > prompt_room  # the row really is too long, counted without the chat template

    with caplog.at_level(logging.WARNING):
        stream, records = load_data(cfg, policy.config, policy.tokenizer)
    assert [r.uid for r in records] == ["short", "other"]
    assert sorted(r.uid for r in stream.next_batch(2)) == ["other", "short"]
    skipped = [m for m in caplog.messages if f"{path}:2" in m]
    assert len(skipped) == 1 and f"leaves {prompt_room}" in skipped[0]


def test_a_model_path_without_a_checkpoint_is_a_config_error_naming_the_key(tmp_path):
    cfg = load_config(None, [f"model.path={tmp_path}", "data.train=prompts.jsonl"])
    with pytest.raises(ConfigError, match=r"model\.path: .* has no config\.json; give a checkpoint directory"):
        policy_parts(cfg)


def test_a_missing_heldout_file_fails_before_the_actors_start(tmp_path, monkeypatch, capsys):
    """Tracker issue 18, finding 8: a missing data.eval failed only after Ray and the actors had started."""
    from pathlib import Path

    import jobs.train
    from jobs.train import main

    def tripwire(*args, **kwargs):
        raise AssertionError("the actors started before data.eval was read")

    monkeypatch.setattr(jobs.train, "start_actors", tripwire)
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(repo)  # the config's data paths are relative to the repository
    missing = tmp_path / "no_such_heldout.jsonl"
    code = main(["--config", "tests/jobs/configs/tiny_lengths.yaml", "--set", f"run.output_dir={tmp_path}",
                 "--set", f"data.eval={missing}"])
    assert code == 2
    assert str(missing) in capsys.readouterr().err
