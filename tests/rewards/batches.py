"""`batch_of(samples)`: a rollout batch whose rows carry the samples' fields, for tests that score through
`RewardService.score(batch)` / `RewardRouter.score(batch)` (which take what the training driver scores)."""

from __future__ import annotations

import torch

from rewards import Sample
from rl.batch import RolloutBatch


def batch_of(samples: list[Sample]) -> RolloutBatch:
    """One row per sample (uid `row<i>`, one prompt and one response token): its task, prompt, response,
    answer, image and meta in the row's columns, so that `rewards.samples_of` gives back equal samples. A row
    with an image is a t2i row for task `t2i`, else an mmu row; without one, a text row."""
    B = len(samples)
    kinds = ["text" if s.image is None else "t2i" if s.task == "t2i" else "mmu" for s in samples]
    return RolloutBatch.from_sampler(
        torch.full((B, 2), 7), torch.zeros(B, 1, dtype=torch.long), [1] * B, eos_ids=(), kind=kinds,
        uid=[f"row{i}" for i in range(B)], sample_index=[0] * B, policy_version=0,
        task=[s.task for s in samples], prompt=[s.prompt for s in samples], response=[s.response for s in samples],
        answer=[s.answer for s in samples], image=[s.image for s in samples],
        meta=[dict(s.meta) if s.meta is not None else None for s in samples])
