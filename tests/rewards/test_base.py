"""The contract types: Sample validation, Scored reasons, picklability, the Protocols."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import rewards
from rewards import DetailedReward, Reward, Sample, Scored
from rewards.base import unscorable


def test_sample_fields_and_defaults():
    image = np.zeros((4, 5, 3), dtype=np.uint8)
    sample = Sample("t2i", "a red square", "", image=image, meta={"row": 3})
    assert (sample.answer, sample.meta["row"], sample.image.shape) == (None, 3, (4, 5, 3))
    assert Sample("text", "q", "r") != Sample("text", "q", "r")  # identity equality (arrays have no truth value)


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
