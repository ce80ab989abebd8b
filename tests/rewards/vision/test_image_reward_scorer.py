"""The `image_reward` built-in: registry, options, batching, `None` reasons, time budget, pickling."""

from __future__ import annotations

import pickle

import pytest
import torch

import rewards
from rewards.base import Sample
from rewards.blip.inputs import check_image, preprocess
from rewards.blip.loader import load_image_reward
from rewards.image_reward import ImageRewardScorer

from .conftest import random_image, t2i_samples

PROMPTS = ["a photo of a cat", "red car at night", "the sky", "a dog on the beach", "old house"]
SHAPES = [(40, 50), (32, 32), (70, 33), (33, 70), (64, 64)]


def expected_scores(model_dir, samples):
    """One sample at a time straight through the network (the package's way of scoring)."""
    loaded = load_image_reward(model_dir)
    out = []
    for sample in samples:
        pixels = preprocess([check_image(sample.image)[0]], resize_to=32, crop_to=32, rounding="round")
        tokens = loaded.tokenizer(
            [sample.prompt], padding="max_length", truncation=True, max_length=35, return_tensors="pt"
        )
        with torch.no_grad():
            out.append(loaded.network(pixels, tokens["input_ids"], tokens["attention_mask"]).item())
    return out


def test_registry_builds_it(tiny_image_reward_dir):
    reward = rewards.get("image_reward", path=str(tiny_image_reward_dir), batch_size=2)
    assert isinstance(reward, ImageRewardScorer) and reward.isolation == "thread"
    with pytest.raises(ValueError, match="unknown option"):
        rewards.get("image_reward", path=str(tiny_image_reward_dir), text_field="response")


def test_batched_scores_equal_one_at_a_time(tiny_image_reward_dir):
    samples = t2i_samples(PROMPTS, SHAPES)
    reward = ImageRewardScorer(str(tiny_image_reward_dir), batch_size=2)  # chunks of 2, 2, 1
    scores = reward(samples)
    assert all(isinstance(s, float) for s in scores)
    assert scores == pytest.approx(expected_scores(tiny_image_reward_dir, samples), abs=1e-5)
    assert len({round(s, 3) for s in scores}) == len(scores)  # they do depend on the input


def test_unscorable_samples_get_none_with_reasons(tiny_image_reward_dir):
    good = t2i_samples(["a cat", "a dog"], [(40, 50), (50, 40)])
    samples = [
        good[0],
        Sample(task="t2i", prompt="a cat", response=""),  # no image
        Sample(task="t2i", prompt="   ", response="", image=random_image(8, 8, 0)),  # blank prompt
        Sample(task="t2i", prompt="a cat", response="", image=random_image(0, 8, 0)),  # no pixels
        good[1],
    ]
    scored = ImageRewardScorer(str(tiny_image_reward_dir)).score_detailed(samples)
    assert [s.category for s in scored] == [None, "no_image", "empty_text", "no_image", None]
    assert scored[2].reason == "empty_text: the prompt is empty"
    assert "no pixels" in scored[3].reason
    assert [s.value for s in (scored[0], scored[4])] == pytest.approx(
        expected_scores(tiny_image_reward_dir, good), abs=1e-5
    )


def test_time_budget(tiny_image_reward_dir):
    samples = t2i_samples(PROMPTS[:3], SHAPES[:3]) + [Sample(task="t2i", prompt="x", response="")]
    reward = ImageRewardScorer(str(tiny_image_reward_dir), batch_size=1)
    spent = reward.score_detailed(samples, timeout_s=-1.0)  # already over budget before the first chunk
    assert [s.category for s in spent] == ["timeout", "timeout", "timeout", "no_image"]
    assert spent[0].reason == "timeout: batch budget of -1 s spent"
    ample = reward.score_detailed(samples, timeout_s=600.0)
    assert [s.category for s in ample] == [None, None, None, "no_image"]


def test_pickles_without_the_model(tiny_image_reward_dir):
    reward = ImageRewardScorer(str(tiny_image_reward_dir))
    samples = t2i_samples(PROMPTS[:2], SHAPES[:2])
    before = reward(samples)
    payload = pickle.dumps(reward)
    assert len(payload) < 2000  # options only, not the weights
    assert pickle.loads(payload)(samples) == pytest.approx(before, abs=0)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"path": ""}, "path: ''"),
        (
            {"path": "x", "dtype": "fp8"},
            "dtype: 'fp8' is not a dtype; expected one of float32, bfloat16, float16",
        ),
        ({"path": "x", "batch_size": 0}, "batch_size: 0; expected an integer >= 1"),
    ],
)
def test_option_errors(options, message):
    with pytest.raises(ValueError, match=message):
        ImageRewardScorer(**options)


def test_bad_directory_is_a_clear_error_on_first_use(tmp_path):
    reward = ImageRewardScorer(str(tmp_path / "missing"))
    assert reward([Sample(task="t2i", prompt="a", response="")]) == [None]  # nothing to load for
    with pytest.raises(FileNotFoundError, match="ImageReward directory not found"):
        reward(t2i_samples(["a cat"], [(8, 8)]))
