"""The vision built-ins inside `RewardService` (thread isolation, weights, None), and concurrent first use."""

from __future__ import annotations

import threading

import pytest

import rewards.blip.loader as loader
from rewards import RewardsConfig, RewardService, RewardTermConfig, Sample
from rewards.clip import ClipScore
from rewards.image_reward import ImageRewardScorer
from tests.rewards.batches import batch_of

from .conftest import random_image, t2i_samples


def test_t2i_and_captioning_through_the_service(tiny_clip_dir, tiny_image_reward_dir):
    clip_prompt = {"path": str(tiny_clip_dir), "backend": "transformers"}
    config = RewardsConfig(
        tasks={
            "t2i": [
                RewardTermConfig("clip", 0.1, options=clip_prompt),
                RewardTermConfig("image_reward", 0.1, options={"path": str(tiny_image_reward_dir)}),
            ],
            "captioning": [RewardTermConfig("clip", 0.1, options={**clip_prompt, "text_field": "response"})],
        }
    )
    image = random_image(40, 50, 3)
    samples = [
        *t2i_samples(["a photo of a cat", "red car"], [(40, 50), (64, 48)]),
        Sample(task="t2i", prompt="a dog", response=""),  # no image: the whole sample is unscorable
        Sample(task="captioning", prompt="Describe the image.", response="a photo of a cat", image=image),
    ]
    clip = ClipScore(**clip_prompt)(
        [*samples[:3], Sample(task="t2i", prompt="a photo of a cat", response="", image=image)]
    )
    image_reward = ImageRewardScorer(str(tiny_image_reward_dir))(samples[:3])
    with RewardService(config) as service:
        batch, _ = service.score(batch_of(samples))
    assert batch.rewards["clip"] == pytest.approx(clip, abs=1e-5), batch.reward_reasons
    assert batch.rewards["image_reward"][:3] == pytest.approx(image_reward, abs=1e-5)
    expected_total = [0.1 * clip[i] + 0.1 * image_reward[i] for i in range(2)] + [None, 0.1 * clip[3]]
    assert batch.total[:2] == pytest.approx(expected_total[:2], abs=1e-5)
    assert batch.total[2] is None and batch.total[3] == pytest.approx(expected_total[3], abs=1e-5)
    assert batch.reward_reasons["image_reward"][2].startswith("no_image")


def test_concurrent_first_use_loads_once(tiny_image_reward_dir, monkeypatch):
    loads = []
    real_load = loader.load_image_reward

    def counting_load(*args, **kwargs):  # a spy around the real loader
        loads.append(args)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(loader, "load_image_reward", counting_load)
    reward = ImageRewardScorer(str(tiny_image_reward_dir))
    samples = t2i_samples(["a cat", "a dog", "the sky"], [(40, 50), (32, 32), (70, 33)])
    results: list = [None] * 4
    start = threading.Barrier(4)

    def score(slot: int) -> None:
        start.wait()
        results[slot] = reward(samples)

    threads = [threading.Thread(target=score, args=(slot,)) for slot in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(loads) == 1
    assert all(result == pytest.approx(results[0], abs=1e-6) for result in results)
