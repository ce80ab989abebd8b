"""Fuzz `clip` (transformers backend) and `image_reward` with hostile text and malformed images.

Every sample gets a float or `None`, never an exception. A `Sample` already rejects images that are not
HxWx3 uint8 when it is built; samples that bypass that check (a plugin chain, a hand-built object) are made
with `object.__setattr__` so the scorers' own checks are exercised too.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rewards.base import Sample
from rewards.clip import ClipScore
from rewards.image_reward import ImageRewardScorer

from .conftest import HOSTILE_TEXTS, ODD_IMAGE_SCORABLE, odd_image_samples, random_image


@pytest.fixture(scope="module")
def vision_rewards(tiny_image_reward_dir, tiny_clip_dir):
    return {
        "image_reward": ImageRewardScorer(str(tiny_image_reward_dir), batch_size=4),
        "clip_prompt": ClipScore(str(tiny_clip_dir), backend="transformers", batch_size=4),
        "clip_response": ClipScore(str(tiny_clip_dir), backend="transformers", text_field="response"),
    }


def assert_float_or_none(values, count):
    assert len(values) == count
    for value in values:
        assert value is None or (isinstance(value, float) and math.isfinite(value)), value


@pytest.mark.parametrize("name", ["image_reward", "clip_prompt", "clip_response"])
def test_hostile_text(vision_rewards, name):
    image = random_image(40, 50, 0)
    samples = [Sample(task="t2i", prompt=text, response=text, image=image) for text in HOSTILE_TEXTS]
    values = vision_rewards[name](samples)
    assert_float_or_none(values, len(samples))
    assert values[0] is None and values[1] is None  # blank text is unscorable
    assert all(v is not None for v in values[2:])


@pytest.mark.parametrize("name", ["image_reward", "clip_prompt", "clip_response"])
def test_odd_images(vision_rewards, name):
    samples = odd_image_samples()
    scored = vision_rewards[name].score_detailed(samples)
    assert_float_or_none([s.value for s in scored], len(samples))
    scorable = [s.value is not None for s in scored]
    assert scorable == ODD_IMAGE_SCORABLE
    assert all(s.category == "no_image" for s in scored if s.value is None)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=300), height=st.integers(1, 40), width=st.integers(1, 40))
def test_random_text_and_sizes(vision_rewards, text, height, width):
    image = np.full((height, width, 3), 128, np.uint8)
    sample = Sample(task="t2i", prompt=text, response=text, image=image)
    for reward in vision_rewards.values():
        values = reward([sample])
        assert_float_or_none(values, 1)
        assert (values[0] is None) == (not text.strip() or max(height, width) / min(height, width) > 32)
