"""A step whose loss or gradient is NaN/inf is skipped on every learner rank, counted, and leaves nothing behind.

Three ways to get there, injected by the step function on one chosen rank and optimizer step:
- `nan_loss`: the loss times NaN (what a NaN reward or advantage would give): NaN loss and gradients;
- `nan_grad`: the loss plus the norm of the logits' deviation from themselves written as sqrt(Σ d²): the value
  is 0, so the loss stays finite, but sqrt's derivative at 0 is inf and d(d²)/dd is 0, so the gradient is NaN
  (0·inf), the classic bug of a hand-written norm;
- `nan_term`: the loss plus a NaN that does not depend on the weights: a NaN loss with finite gradients, which
  DeepSpeed's own overflow check (on the gradient norm) would let through to the optimizer.
"Nothing behind" is checked against a single process that never saw the bad step: after skipped steps the
next finite step gives the weights of that step alone from the initial weights (no gradient carried over,
Adam's moments and step count untouched: a counted step would change Adam's bias correction).
"""

from __future__ import annotations

import copy
import logging
import math

import pytest
import torch

from actors.config import LearnerConfig
from actors.learner import LearnerContext, LearnerGroup
from actors.weight_sync import checksum
from jobs.config import load_config
from jobs.configtree import ConfigError
from rl.update import PlainEngine, all_finite
from tests.actors.test_learner import learner_cfg, mlm_data

TOLERANCE = 5e-6  # as tests/actors/test_learner.py: two ranks sum gradients in another order than one process
POISONS = ("nan_loss", "nan_grad", "nan_term")


def poisoned_ce_step(ctx: LearnerContext, *, input_ids, masked, num_sequences_global, poison=None,
                     poison_at=(0,), optimizer_steps=2) -> dict[str, float]:
    """tests/actors/test_learner.py's masked CE step (per-row mean CE over the masked positions, summed over the
    shard and divided by the global row count; micro-batches; then `step`), with `poison` (one of POISONS,
    None: clean) added to every micro-batch of the optimizer steps numbered in `poison_at`."""
    network = ctx.engine.module
    mask_id = network.config.mask_token_id
    finite = []
    for index in range(optimizer_steps):
        for rows in torch.arange(input_ids.shape[0]).split(ctx.config.micro_batch_size):
            ids, where = input_ids[rows], masked[rows]  # [b, T] each
            logits = network(ids.masked_fill(where, mask_id)).float()  # [b, T, V]
            token_ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids, reduction="none")  # [b, T]
            loss = ((token_ce * where).sum(1) / where.sum(1)).sum() / num_sequences_global
            if poison is not None and index in poison_at:
                loss = poisoned(loss, logits, poison)
            finite.append(bool(torch.isfinite(loss)))
            ctx.engine.backward(loss)
        ctx.engine.step()
    return {"finite_losses": float(sum(finite))}


def poisoned(loss: torch.Tensor, logits: torch.Tensor, poison: str) -> torch.Tensor:
    if poison == "nan_loss":
        return loss * math.nan
    if poison == "nan_term":
        return loss + math.nan
    deviation = logits - logits.detach()  # [b, T, V], all zeros
    return loss + torch.sqrt((deviation ** 2).sum())  # + 0; its gradient is NaN


def one_process(initial: torch.nn.Module, cfg: LearnerConfig) -> tuple[PlainEngine, LearnerContext]:
    """A copy of `initial` under a PlainEngine with the AdamW of `cfg`, and the context a step function gets."""
    network = copy.deepcopy(initial).train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                  weight_decay=cfg.weight_decay)
    engine = PlainEngine(network, optimizer, cfg.grad_clip)
    return engine, LearnerContext(engine, None, 0, 1, cfg, torch.device("cpu"))


def reference_step(initial: torch.nn.Module, cfg: LearnerConfig, input_ids, masked, optimizer_steps: int = 2
                   ) -> dict[str, torch.Tensor]:
    """The clean update in one process with a plain AdamW, from the initial weights: what the group must hold."""
    engine, ctx = one_process(initial, cfg)
    poisoned_ce_step(ctx, input_ids=input_ids, masked=masked, num_sequences_global=input_ids.shape[0],
                     optimizer_steps=optimizer_steps)
    assert engine.skipped_steps == 0
    return engine.module.state_dict()


# -- one process: PlainEngine -------------------------------------------------------------------------------
def test_all_finite_flags_nan_and_inf_anywhere():
    assert bool(all_finite(torch.tensor([1.0, -2.0, 3e38])))
    for bad in (math.nan, math.inf, -math.inf):
        assert not bool(all_finite(torch.tensor([[1.0, 2.0], [bad, 4.0]])))
    assert not bool(all_finite(torch.tensor([math.inf, -math.inf])))  # inf - inf: the sum is NaN
    assert bool(all_finite(torch.tensor([1.0, 2.0], dtype=torch.bfloat16)))


@pytest.mark.parametrize("poison", POISONS)
def test_the_plain_engine_skips_a_non_finite_step_and_the_next_step_is_as_if_it_never_happened(kit, poison):
    cfg = learner_cfg(num_ranks=1)
    initial = kit.policy_source(0)()
    input_ids, masked = mlm_data(initial.config.vocab_size)
    engine, ctx = one_process(initial, cfg)
    network, optimizer = engine.module, engine.optimizer

    stats = poisoned_ce_step(ctx, input_ids=input_ids, masked=masked, num_sequences_global=8, poison=poison,
                             poison_at=(0, 1))
    assert stats["finite_losses"] == (8.0 if poison == "nan_grad" else 0.0)  # 2 steps x 4 micro-batches
    assert engine.skipped_steps == 2
    assert checksum(network.state_dict().items()) == checksum(initial.state_dict().items())
    assert optimizer.state == {} and all(p.grad is None for p in network.parameters())

    poisoned_ce_step(ctx, input_ids=input_ids, masked=masked, num_sequences_global=8)
    assert engine.skipped_steps == 2
    expected = reference_step(initial, cfg, input_ids, masked)
    assert checksum(network.state_dict().items()) == checksum(expected.items())  # same ops in one process: exact


def test_the_plain_engine_skips_only_the_bad_step_of_an_update(kit):
    cfg = learner_cfg(num_ranks=1)
    initial = kit.policy_source(0)()
    input_ids, masked = mlm_data(initial.config.vocab_size)
    engine, ctx = one_process(initial, cfg)
    network, optimizer = engine.module, engine.optimizer
    poisoned_ce_step(ctx, input_ids=input_ids, masked=masked, num_sequences_global=8, poison="nan_loss",
                     poison_at=(1,))
    assert engine.skipped_steps == 1
    one_step = reference_step(initial, cfg, input_ids, masked, optimizer_steps=1)
    assert checksum(network.state_dict().items()) == checksum(one_step.items())
    assert {float(state["step"]) for state in optimizer.state.values()} == {1.0}  # Adam counted the first step only


# -- two DeepSpeed ranks ------------------------------------------------------------------------------------
@pytest.mark.parametrize("stage,dtype", [(2, "fp32"), (0, "fp32"), (3, "fp32"), (1, "bf16")])
def test_a_bad_step_on_one_rank_is_skipped_on_both_and_leaves_nothing_behind(ray_session, kit, stage, dtype, caplog):
    cfg = learner_cfg(zero_stage=stage, dtype=dtype)
    initial = kit.policy_source(0)()
    input_ids, masked = mlm_data(initial.config.vocab_size)
    shards = [{"input_ids": input_ids[:4], "masked": masked[:4]}, {"input_ids": input_ids[4:], "masked": masked[4:]}]
    group = LearnerGroup(cfg, kit.policy_source(0))
    try:
        start = group.checksums()[0]  # the initial weights (in bf16 for a bf16 learner)
        if dtype == "fp32":
            assert start == checksum(initial.state_dict().items())
        caplog.set_level(logging.WARNING, logger="actors.learner")
        for poison, bad_rank in zip(POISONS, (1, 0, 1)):
            poisoned_shards = [dict(s, poison=poison if rank == bad_rank else None) for rank, s in enumerate(shards)]
            stats = group.train_step(f"{__name__}:poisoned_ce_step", poisoned_shards, num_sequences_global=8,
                                     poison_at=(0, 1))
            finite_on_bad_rank = 4.0 if poison == "nan_grad" else 0.0  # 2 steps x 2 micro-batches
            assert [s["finite_losses"] for s in stats] == [4.0 if r != bad_rank else finite_on_bad_rank
                                                          for r in range(2)]
            assert group.checksums() == [start, start]  # neither rank moved
            assert f"skipped 2 of 2 optimizer step(s) on every learner rank: a non-finite loss or gradient on " \
                   f"rank(s) [{bad_rank}]" in caplog.text
        assert (group.skipped_steps, group.skipped_updates_in_a_row) == (6, 3)

        group.train_step(f"{__name__}:poisoned_ce_step", shards, num_sequences_global=8)
        assert (group.skipped_steps, group.skipped_updates_in_a_row) == (6, 0)
        weights = group.state_dict_for_sync()
        assert group.checksums() == [checksum(weights.items())] * 2 != [start] * 2
        if dtype == "fp32":  # bf16 rounds every weight: no single-process fp32 reference to compare with
            for name, value in reference_step(initial, cfg, input_ids, masked).items():
                torch.testing.assert_close(weights[name], value, rtol=1e-5, atol=TOLERANCE, msg=name)
    finally:
        group.shutdown()


def test_an_update_skipped_in_part_does_not_count_as_skipped_entirely(ray_session, kit):
    cfg = learner_cfg()
    initial = kit.policy_source(0)()
    input_ids, masked = mlm_data(initial.config.vocab_size)
    shards = [{"input_ids": input_ids[:4], "masked": masked[:4], "poison": None},
              {"input_ids": input_ids[4:], "masked": masked[4:], "poison": "nan_loss"}]
    group = LearnerGroup(cfg, kit.policy_source(0))
    try:
        group.train_step(f"{__name__}:poisoned_ce_step", shards, num_sequences_global=8, poison_at=(0, 1))
        assert (group.skipped_steps, group.skipped_updates_in_a_row) == (2, 1)
        group.train_step(f"{__name__}:poisoned_ce_step", shards, num_sequences_global=8, poison_at=(1,))
        assert (group.skipped_steps, group.skipped_updates_in_a_row) == (3, 0)
        group.train_step(f"{__name__}:poisoned_ce_step", shards, num_sequences_global=8, poison_at=(0, 1))
        assert (group.skipped_steps, group.skipped_updates_in_a_row) == (5, 1)
        sums = group.checksums()
        assert sums[0] == sums[1] != checksum(initial.state_dict().items())  # the one good step moved both
    finally:
        group.shutdown()


# -- the knob -------------------------------------------------------------------------------------------------
def test_max_nonfinite_steps_defaults_to_3_and_needs_at_least_1():
    assert LearnerConfig().max_nonfinite_steps == 3
    with pytest.raises(ValueError, match=r"max_nonfinite_steps: 0; need at least 1"):
        LearnerConfig(max_nonfinite_steps=0)
    with pytest.raises(ConfigError, match=r"learner\.max_nonfinite_steps: -1; need at least 1"):
        load_config(None, ["data.train=prompts.jsonl", "learner.max_nonfinite_steps=-1"])
    assert load_config(None, ["data.train=prompts.jsonl", "learner.max_nonfinite_steps=5"]).learner.max_nonfinite_steps == 5
