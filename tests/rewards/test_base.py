"""The contract types: Sample validation, the samples of a rollout batch, Scored reasons, picklability, the
Protocols."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import rewards
from rewards import DetailedReward, Reward, Sample, Scored, samples_of
from rewards.base import unscorable


def test_sample_fields_and_defaults():
    image = np.zeros((4, 5, 3), dtype=np.uint8)
    sample = Sample("t2i", "a red square", "", image=image, meta={"row": 3})
    assert (sample.answer, sample.meta["row"], sample.image.shape) == (None, 3, (4, 5, 3))
    assert Sample("text", "q", "r") != Sample("text", "q", "r")  # identity equality (arrays have no truth value)


def test_the_samples_of_a_batch_are_its_rows():
    import torch

    from rl.batch import RolloutBatch

    picture, generated = np.full((4, 6, 3), 200, np.uint8), np.zeros((2, 2, 3), np.uint8)
    meta = {"kw": 1}
    batch = RolloutBatch.from_sampler(
        torch.full((3, 3), 7), torch.zeros(3, 1, dtype=torch.long), [2] * 3, eos_ids=(), kind=["text", "mmu", "t2i"],
        uid=["q", "c", "s"], sample_index=[0] * 3, policy_version=0, task=["text", "captioning", "shapes"],
        prompt=["Compute 2+2.", "Describe the image.", "a red circle"], answer=["4", None, None],
        response=["4", "grey", ""], image=[None, picture, generated], meta=[None, meta, {"rgb": [255, 0, 0]}])
    samples = samples_of(batch)
    assert [(s.task, s.prompt, s.response, s.answer) for s in samples] == [
        ("text", "Compute 2+2.", "4", "4"), ("captioning", "Describe the image.", "grey", None),
        ("shapes", "a red circle", "", None)]
    assert samples[0].image is None and samples[1].image is picture and samples[2].image is generated  # not copies
    assert samples[0].meta is None and samples[1].meta is meta and samples[2].meta == {"rgb": [255, 0, 0]}
    assert samples_of(batch.select([])) == []


def test_samples_pickle_with_images_and_surrogate_escaped_text():
    text = b"bad \xff bytes".decode("utf-8", "surrogateescape")
    sample = Sample("mmu", "q", text, "4", image=np.full((2, 2, 3), 7, np.uint8), meta={"k": [1]})
    copy = pickle.loads(pickle.dumps(sample))
    assert copy.response == text and copy.image.sum() == 7 * 12 and copy.meta == {"k": [1]}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": ""}, "Sample.task: got ''"),
        ({"prompt": b"bytes"}, "Sample.prompt: got bytes; expected str"),
        ({"response": None}, "Sample.response: got NoneType"),
        ({"answer": 4}, "Sample.answer: got int; expected str or None"),
        ({"image": np.zeros((4, 4), np.uint8)}, r"Sample.image: got ndarray shape=\(4, 4\) dtype=uint8"),
        ({"image": np.zeros((4, 4, 3), np.float32)}, "dtype=float32; expected an HxWx3 uint8"),
        ({"image": [[0, 0, 0]]}, "Sample.image: got list shape=None dtype=None"),
        ({"meta": ["a"]}, "Sample.meta: got list; expected a dict or None"),
    ],
)
def test_sample_validation(kwargs, message):
    fields = {"task": "text", "prompt": "q", "response": "r"} | kwargs
    with pytest.raises(ValueError, match=message):
        Sample(**fields)


def test_scored_categories():
    assert Scored(1.0).category is None
    assert Scored(None, "timeout: exceeded 3 s").category == "timeout"
    assert Scored(None, "no_gold").category == "no_gold"
    assert unscorable(2, "error: x") == [Scored(None, "error: x"), Scored(None, "error: x")]


def test_builtins_satisfy_the_protocols():
    for name in ("format", "correctness"):
        reward = rewards.get(name)
        assert isinstance(reward, Reward) and isinstance(reward, DetailedReward)
    assert isinstance(lambda samples: [], Reward)
