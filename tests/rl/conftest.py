"""Tiny vocabulary, tiny networks and rollout-batch builders shared by the rl tests.

Vocabulary of 48 ids: 0 pad, 1 EOS, 2 end-of-turn, 3 <|soi|>, 4 <|eoi|>, 5 <|mmu|>, 6..31 text,
32..46 image codes, 47 [MASK].
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from model.tiny import tiny_backbone
from rl.batch import RolloutBatch

VOCAB = 48
PAD, EOS, EOT, SOI, EOI, MMU, MASK = 0, 1, 2, 3, 4, 5, 47
TEXT = (6, 32)
IMAGE = (32, 47)
SPECIAL = (EOS, EOT, SOI, EOI, MMU)


def tiny_net(seed: int = 0, dtype: torch.dtype = torch.float64, **size) -> torch.nn.Module:
    size = {"d_model": 32, "n_layers": 2, "n_heads": 4, "mlp_hidden_size": 64} | size
    return tiny_backbone(VOCAB, mask_token_id=MASK, eos_token_id=EOS, seed=seed, dtype=dtype, **size)


def text_batch(
    groups: dict[str, int],
    *,
    prompt_width: int = 6,
    gen_length: int = 8,
    seed: int = 0,
    eos_at: dict[int, int] | None = None,
    rewards: list[float | None] | None = None,
) -> RolloutBatch:
    """Text rows: `groups` maps uid -> number of responses; prompt lengths vary; EOS where `eos_at` says."""
    g = torch.Generator().manual_seed(seed)
    uids = [u for u, n in groups.items() for _ in range(n)]
    samples = [i for _, n in groups.items() for i in range(n)]
    B = len(uids)
    seqs = torch.randint(TEXT[0], TEXT[1], (B, prompt_width + gen_length), generator=g)
    lengths = [prompt_width - (r % 3) for r in range(B)]
    for r, n in enumerate(lengths):
        seqs[r, : prompt_width - n] = PAD
    for r, pos in (eos_at or {}).items():
        seqs[r, prompt_width + pos] = EOS
        seqs[r, prompt_width + pos + 1:] = EOS
    reveal = torch.randint(0, gen_length, (B, gen_length), generator=g)
    batch = RolloutBatch.from_sampler(
        seqs, reveal, lengths, eos_ids=[EOS, EOT], kind="text", uid=uids, sample_index=samples,
        policy_version=0, protected_ids=SPECIAL, protected_id_range=IMAGE, pad_token_id=PAD,
    )
    return scored(batch, {"correctness": rewards if rewards is not None else [1.0] * B})


def scored(batch: RolloutBatch, rewards: dict[str, list[float | None]],
           total: list[float | None] | None = None) -> RolloutBatch:
    """`batch` as the reward service leaves it: the terms `rewards` (a None value has the reason
    "unscorable"), and `total` per row (default: the values of the one term, weight 1)."""
    if total is None:
        (total,) = rewards.values()
    reasons = {term: [None if v is not None else "unscorable" for v in values] for term, values in rewards.items()}
    return dataclasses.replace(batch, rewards={k: list(v) for k, v in rewards.items()}, reward_reasons=reasons,
                               total=list(total), total_reason=[None if t is not None else "unscored" for t in total])


def mixed_batch(seed: int = 0) -> RolloutBatch:
    """text + mmu + t2i rows of different widths, concatenated (left re-padding)."""
    g = torch.Generator().manual_seed(seed)
    text = text_batch({"t": 2}, seed=seed, eos_at={0: 3})
    # mmu: <|mmu|> <|soi|> 4 image codes <|eoi|> question (3 text) | response (6)
    prompt = [MMU, SOI, *torch.randint(*IMAGE, (4,), generator=g).tolist(), EOI, 7, 8, 9]
    mmu_seqs = torch.tensor([prompt + torch.randint(*TEXT, (6,), generator=g).tolist() for _ in range(2)])
    mmu_seqs[1, len(prompt) + 2] = EOT
    mmu = scored(RolloutBatch.from_sampler(
        mmu_seqs, torch.zeros(2, 6, dtype=torch.long), [len(prompt)] * 2, eos_ids=[EOS, EOT], kind="mmu",
        uid=["m", "m"], sample_index=[0, 1], policy_version=1,
        protected_ids=SPECIAL, protected_id_range=IMAGE, pad_token_id=PAD), {"correctness": [0.0, 1.0]})
    # t2i: pad pad <|t2i|>-ish text EOS <|soi|> | 5 image slots | <|eoi|>
    t2i_prompt = [PAD, PAD, 10, 11, EOS, SOI]
    t2i_seqs = torch.tensor([t2i_prompt + torch.randint(*IMAGE, (5,), generator=g).tolist() + [EOI]
                             for _ in range(2)])
    t2i = scored(RolloutBatch.from_sampler(
        t2i_seqs, torch.arange(5).repeat(2, 1), [4, 4], eos_ids=(), kind="t2i", uid=["i", "i"],
        sample_index=[0, 1], policy_version=1, prompt_width=6, score_vocab=IMAGE,
        protected_ids=SPECIAL, protected_id_range=IMAGE, pad_token_id=PAD), {"correctness": [0.3, 0.7]})
    return RolloutBatch.concat([text, mmu, t2i])


@pytest.fixture(autouse=True)
def one_thread(one_torch_thread):
    """Every rl test runs with one intra-op thread (tests/conftest.py)."""
    yield


@pytest.fixture(scope="session")
def kit() -> SimpleNamespace:
    """Constants and builders: kit.MASK, kit.IMAGE, kit.tiny_net(...), kit.text_batch(...), ..."""
    return SimpleNamespace(
        VOCAB=VOCAB, PAD=PAD, EOS=EOS, EOT=EOT, SOI=SOI, EOI=EOI, MMU=MMU, MASK=MASK, TEXT=TEXT, IMAGE=IMAGE,
        SPECIAL=SPECIAL, tiny_net=tiny_net, text_batch=text_batch, mixed_batch=mixed_batch, scored=scored,
    )
