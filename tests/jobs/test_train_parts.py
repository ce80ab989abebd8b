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


def test_sampler_metrics_pool_forwards_and_tokens_over_text_rows():
    import torch

    from jobs.train_parts import sampler_metrics
    from rl.batch import RolloutBatch

    text = RolloutBatch.from_sampler(  # 4 text rows of gen_length 16: 3 from a call of 8 forwards, 1 of 2
        torch.full((4, 20), 5), torch.zeros(4, 16, dtype=torch.long), [4] * 4, eos_ids=(), kind="text",
        uid=["a", "a", "a", "b"], sample_index=[0, 1, 2, 0], policy_version=0, forwards=[8, 8, 8, 2])
    image = RolloutBatch.from_sampler(  # a t2i row (4 image slots): no forward count of its own
        torch.full((1, 7), 5), torch.zeros(1, 4, dtype=torch.long), [2], eos_ids=(), kind="t2i", uid=["c"],
        sample_index=[0], policy_version=0, prompt_width=2)
    both = RolloutBatch.concat([text, image])  # re-padded: the spans keep their widths
    assert sampler_metrics(both) == {"rollout/forwards_per_token": 26 / 64, "rollout/tokens_per_forward": 64 / 26}
    assert sampler_metrics(image) == {}


class RecordingLearners:
    """Stands in for the LearnerGroup at the Ray boundary: keeps each rank's shard as the rank would receive it
    (pickled and unpickled, as Ray sends task arguments) and checks it the way a learner rank does."""

    def __init__(self):
        self.received: list[dict] = []

    def train_step(self, step_fn, shards, **common):
        import pickle

        self.received = [pickle.loads(pickle.dumps(shard)) for shard in shards]
        for shard in self.received:
            shard["batch"].validate()
        return [{"sequence_count": float(len(shard["batch"]))} for shard in self.received]


def sent_leaves(value, path: str):
    """(path, leaf) of everything in a shard: batch fields by name, dict values by key, list items by index."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for field in dataclasses.fields(value):
            yield from sent_leaves(getattr(value, field.name), f"{path}.{field.name}")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from sent_leaves(item, f"{path}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from sent_leaves(item, f"{path}[{index}]")
    else:
        yield path, value


def test_the_learner_ranks_receive_tensors_only_no_text_and_no_images(tmp_path):
    """What `update` sends to each rank holds no prompt, response, answer, reason or meta text and no image:
    the only strings are the uid, kind and task columns (mask seeds, layout, per-task logs)."""
    import dataclasses
    import re

    import numpy as np
    import torch

    from jobs.config import load_config
    from jobs.train_parts import update
    from rewards import Sample
    from tests.rewards.batches import batch_of

    picture = np.full((4, 4, 3), 200, np.uint8)
    batch = batch_of([Sample("t2i", "a red circle", "", image=picture, meta={"shape": "circle"}),
                      Sample("t2i", "a red circle", "", image=picture + 1, meta={"shape": "circle"}),
                      Sample("captioning", "Describe the image.", "a grey square", image=picture, meta={"kw": "grey"}),
                      Sample("text", "Compute 2+2.", "<think>2+2</think>4", "4", meta={"source": "gsm8k"})])
    batch = dataclasses.replace(batch, rewards={"clip": [0.3, None, 0.2, None]},
                                reward_reasons={"clip": [None, "timeout: exceeded 1 s", None, "absent"]},
                                total=[0.3, None, 0.2, 1.0], total_reason=[None, "unscored: term 'clip'", None, None])
    assert batch.validate() is batch
    cfg = load_config(None, [f"data.train={tmp_path / 'unused.jsonl'}", "learner.num_ranks=2", "algo.group_size=2"])
    learners = RecordingLearners()
    update(learners, batch, torch.tensor([1.0, -1.0, 0.5, -0.5]), cfg, step=1)

    assert [len(shard["batch"]) for shard in learners.received] == [2, 2]
    allowed = re.compile(r"shards\[\d\]\['batch'\]\.(uid|kind|task)\[\d+\]$")
    strings, arrays = [], []
    for rank, shard in enumerate(learners.received):
        for path, leaf in sent_leaves(shard, f"shards[{rank}]"):
            if isinstance(leaf, str) and not allowed.match(path):
                strings.append((path, leaf))
            if isinstance(leaf, np.ndarray) or hasattr(leaf, "__array_interface__"):  # numpy arrays, PIL images
                arrays.append(path)
    assert strings == [] and arrays == []
    sent = learners.received[0]["batch"]  # and what the learner reads is all there
    assert sent.total == [0.3, None] and sent.scorable().tolist() == [True, False] and sent.kind == ["t2i", "t2i"]
    assert torch.equal(sent.input_ids, batch.input_ids[:2]) and sent.uid == ["row0", "row1"]
    # the walk can fail: the batch itself, as the driver holds it, is full of both
    walked = list(sent_leaves(batch, "shards[0]['batch']"))
    assert any(isinstance(leaf, str) and not allowed.match(path) for path, leaf in walked)
    assert any(isinstance(leaf, np.ndarray) for _, leaf in walked)
