"""LearnerGroup: two DeepSpeed ranks update exactly like one process; identical ranks; checkpoints; ZeRO-3.

The reference for every distributed update is the same step run in this process on the whole batch with
a plain `torch.optim.AdamW` and `clip_grad_norm_` (rl.update.PlainEngine).
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import ray
import torch

from actors.config import CheckpointConfig, LearnerConfig, LoraConfig
from actors.learner import LearnerContext, LearnerGroup, deepspeed_config, resolve_step, unigrpo_step
from actors.rollout import PromptRequest, RolloutWorker
from actors.weight_sync import checksum
from jobs.checkpoint import CheckpointManager
from model.lora import adapter_state, adapters_disabled, add_lora, is_adapter_key, merged_state_dict
from rl.advantages import group_advantages
from rl.config import AlgoConfig
from rl.lr_schedule import set_learning_rate
from rl.update import PlainEngine, unigrpo_update

GROUPS, SAMPLES = 4, 2  # 8 rows: 4 per rank, 2 micro-batches of 2 per rank per optimizer step
ALGO = AlgoConfig(group_size=SAMPLES, mu=2, beta=0.01)
# Every weight moves by ~2e-3 (lr 1e-3, 2 Adam steps). Summing gradients over 2 ranks instead of in one
# process changes float32 rounding only (seen: <= 1.1e-6 in a few elements, where Adam divides a tiny
# gradient by its own size); a missing micro-batch or a wrong sign moves weights by ~1e-3.
TOLERANCE = 5e-6


def learner_cfg(**changes) -> LearnerConfig:
    base = LearnerConfig(num_ranks=2, zero_stage=2, lr=1e-3, weight_decay=0.01, grad_clip=1.0, micro_batch_size=2)
    return dataclasses.replace(base, **changes)


def plain_engine(network: torch.nn.Module, cfg: LearnerConfig) -> PlainEngine:
    optimizer = torch.optim.AdamW(network.parameters(), lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                                  weight_decay=cfg.weight_decay)
    return PlainEngine(network, optimizer, cfg.grad_clip)


def masked_ce_step(ctx: LearnerContext, *, input_ids, masked, num_sequences_global, optimizer_steps=2):
    """A supervised step of the same shape as rl's update: per-sequence mean CE over masked positions,
    summed over this shard's rows and divided by the global row count; micro-batches; then step. Afterwards
    the reference's loss (`loss_ref`, as rl.update computes it: no grad, adapters disabled), which must be
    the policy's loss before the first step."""
    network = ctx.engine.module
    mask_id = network.config.mask_token_id

    def loss_of(module, rows):
        ids, where = input_ids[rows], masked[rows]  # [b, T] each
        logits = module(ids.masked_fill(where, mask_id)).float()  # [b, T, V]
        token_ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids, reduction="none")  # [b, T]
        per_row = (token_ce * where).sum(1) / where.sum(1)  # [b]
        return per_row.sum() / num_sequences_global

    micro = torch.arange(input_ids.shape[0]).split(ctx.config.micro_batch_size)
    losses, norm = [], None
    for _ in range(optimizer_steps):
        total = 0.0
        for rows in micro:
            loss = loss_of(network, rows)
            ctx.engine.backward(loss)
            total += float(loss.detach())
        norm = ctx.engine.step()
        losses.append(total)
    with torch.no_grad(), adapters_disabled(ctx.ref_network):
        loss_ref = sum(float(loss_of(ctx.ref_network, rows)) for rows in micro)
    stats = {"loss_first": losses[0], "loss_last": losses[-1], "loss_ref": loss_ref,
             "gradient_checkpointing": float(network.gradient_checkpointing)}
    return stats if norm is None else {**stats, "grad_norm": norm}


def reference_values_held(ctx: LearnerContext) -> dict[str, float]:
    """How many of the reference's values this rank holds (a ZeRO-3 partition: `ds_tensor`)."""
    return {"held": float(sum(getattr(p, "ds_tensor", p).numel() for p in ctx.ref_network.parameters()))}


def fails_on_rank_one(ctx: LearnerContext) -> dict[str, float]:
    if ctx.rank == 1:
        raise ValueError("bad shard on rank 1")
    return {}


def noop_step(ctx: LearnerContext) -> dict[str, float]:
    return {}


@pytest.fixture(scope="module")
def rollout_batch(kit):
    """8 sampled rows (4 prompts × 2) from the tiny twin, with rewards and group advantages."""
    from model.templates import chat_prompt_ids

    worker = RolloutWorker(kit.sampler_source(0))
    tokenizer = worker.tokenizer
    requests = [PromptRequest(tuple(chat_prompt_ids(tokenizer, f"What is {g} + {g}?", thinking=False)), f"u{g}", s, "text")
                for g in range(GROUPS) for s in range(SAMPLES)]
    batch = worker.sample(requests, gen_length=8, steps=4, block_length=4, temperature=1.0, seed=0)
    rewards = [1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 2.0, 0.0]  # group u2 is constant: advantage 0
    batch = dataclasses.replace(batch, rewards={"correctness": rewards}, reward_reasons={"correctness": [None] * 8},
                                total=rewards)  # one term of weight 1: as the reward service would write it
    advantages = group_advantages(rewards, batch.uid)
    return batch, advantages


def shards_by_group(batch, advantages, world_size):
    """Whole prompt groups per rank, round robin: rank r gets groups r, r + world_size, ..."""
    order = list(dict.fromkeys(batch.uid))
    shards = []
    for rank in range(world_size):
        rows = [i for i, uid in enumerate(batch.uid) if order.index(uid) % world_size == rank]
        shards.append({"batch": batch.select(rows), "advantages": advantages[rows]})
    return shards


def mlm_data(vocab: int, rows: int = 8, width: int = 12, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(10, vocab - 10, (rows, width), generator=generator)  # [B, T]
    masked = torch.rand(rows, width, generator=generator) < 0.4  # [B, T]
    masked[:, 0] = True  # every row scores at least one position
    return input_ids, masked


@pytest.fixture(scope="module")
def zero2(ray_session, kit):
    group = LearnerGroup(learner_cfg(), kit.policy_source(0))
    yield group
    group.shutdown()


def test_two_rank_zero2_unigrpo_update_equals_single_process(zero2, kit, rollout_batch):
    batch, advantages = rollout_batch
    initial = kit.policy_source(0)()
    assert zero2.checksums() == [checksum(initial.state_dict().items())] * 2

    network = copy.deepcopy(initial).train()
    reference = copy.deepcopy(initial).eval().requires_grad_(False)
    expected_stats = unigrpo_update(plain_engine(network, zero2.cfg), reference, batch, advantages, ALGO, step=1,
                                    run_seed=0, micro_batch_size=2, num_sequences_global=len(batch))

    stats = zero2.train_step(unigrpo_step, shards_by_group(batch, advantages, 2), algo=ALGO, step=1, run_seed=0,
                             num_sequences_global=len(batch))
    weights = zero2.state_dict_for_sync()
    for name, value in network.state_dict().items():
        torch.testing.assert_close(weights[name], value, rtol=1e-5, atol=TOLERANCE, msg=name)
        assert not torch.equal(weights[name], initial.state_dict()[name]), f"{name} did not change"
    # Adam and clipping are blind to a constant gradient factor, so the weights alone cannot prove the
    # normalisation: the global gradient norm before clipping (a factor W off if the rank average were
    # not undone) and the ranks' loss sums (each rank's share of the global loss) do.
    for rank_stats in stats:
        assert rank_stats["grad_norm"] == pytest.approx(expected_stats["grad_norm"], rel=1e-5)
    # The loss is a sum of advantage-weighted terms of both signs that largely cancel (here ~4e-3):
    # float32 reductions in another order (other thread counts) moved it by 7e-8 once, so the bound is absolute.
    assert sum(s["loss_sum"] for s in stats) == pytest.approx(expected_stats["loss_sum"], rel=1e-5, abs=1e-6)
    sums = zero2.checksums()
    assert sums[0] == sums[1] == checksum(weights.items())  # both ranks hold identical weights
    frozen = ray.get([rank.ref_checksum.remote() for rank in zero2.ranks])
    assert frozen == [checksum(initial.state_dict().items())] * 2  # the reference policy never moves


def test_checkpoint_round_trip_restores_weights_and_optimizer(zero2, rollout_batch, tmp_path):
    batch, advantages = rollout_batch
    shards = shards_by_group(batch, advantages, 2)

    def update(step):
        zero2.train_step(unigrpo_step, shards, algo=ALGO, step=step, run_seed=0, num_sequences_global=len(batch))
        return zero2.checksums()[0]

    zero2.save_checkpoint(tmp_path)
    saved = zero2.checksums()[0]
    after_save = update(7)
    update(8)
    zero2.load_checkpoint(tmp_path)
    assert zero2.checksums() == [saved, saved]
    assert update(7) == after_save  # Adam moments restored too: the same step gives the same weights
    with pytest.raises(RuntimeError, match=r"load_checkpoint failed on learner rank \d of 2: (.|\n)*no learner state in"):
        zero2.load_checkpoint(tmp_path / "missing")


def test_checkpoint_manager_saves_the_learner_atomically_and_resumes_it(zero2, rollout_batch, tmp_path):
    batch, advantages = rollout_batch
    manager = CheckpointManager(tmp_path / "checkpoints", CheckpointConfig(resume="auto", keep_last=1))
    saved = zero2.checksums()[0]
    manager.save(3, driver_state={"policy_version": 3}, config_text="learner: {}\n",
                 save_learner=zero2.save_checkpoint)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_3"]
    zero2.train_step(unigrpo_step, shards_by_group(batch, advantages, 2), algo=ALGO, step=9, run_seed=0,
                     num_sequences_global=len(batch))
    assert zero2.checksums()[0] != saved
    loaded = manager.resume(load_learner=zero2.load_checkpoint)
    assert loaded.step == 3 and loaded.driver_state["policy_version"] == 3
    assert zero2.checksums() == [saved, saved]


def test_a_failing_rank_fails_the_call_naming_it(zero2):
    with pytest.raises(RuntimeError, match=r"train_step failed on learner rank 1 of 2: (.|\n)*bad shard on rank 1"):
        zero2.train_step(fails_on_rank_one, [{}, {}])
    with pytest.raises(ValueError, match="1 shard\\(s\\) for learner.num_ranks=2"):
        zero2.train_step(unigrpo_step, [{}])


@pytest.mark.parametrize("stage,optimizer,lora", [(3, "deepspeed_adamw", None), (0, "adamw", None),
                                                  (3, "adamw", LoraConfig(rank=4, alpha=8.0))])
def test_zero3_and_zero0_equal_single_process_and_gather_full_weights(ray_session, kit, stage, optimizer, lora):
    """With LoRA (ZeRO-3, 2 ranks): only the adapters train, the reference is the base with adapters disabled,
    and the gathered weights are the merged ones (model/lora.py)."""
    cfg = learner_cfg(zero_stage=stage, optimizer=optimizer, lora=lora)
    initial = kit.policy_source(0)()
    input_ids, masked = mlm_data(initial.config.vocab_size)
    network = copy.deepcopy(initial).train()
    if lora is not None:
        add_lora(network, lora)
    ctx = LearnerContext(plain_engine(network, cfg), copy.deepcopy(initial), 0, 1, cfg, torch.device("cpu"))
    expected = masked_ce_step(ctx, input_ids=input_ids, masked=masked, num_sequences_global=8)
    assert expected["loss_ref"] == pytest.approx(expected["loss_first"], rel=1e-6)

    group = LearnerGroup(cfg, kit.policy_source(0))
    try:
        shards = [{"input_ids": input_ids[:4], "masked": masked[:4]}, {"input_ids": input_ids[4:], "masked": masked[4:]}]
        stats = group.train_step(f"{__name__}:masked_ce_step", shards, num_sequences_global=8)
        assert sum(s["loss_first"] for s in stats) == pytest.approx(expected["loss_first"], rel=1e-6)
        assert sum(s["loss_last"] for s in stats) == pytest.approx(expected["loss_last"], rel=1e-6)
        assert sum(s["loss_ref"] for s in stats) == pytest.approx(expected["loss_first"], rel=1e-6)
        if stage == 3:  # ZeRO-0 reports no norm
            assert stats[0]["grad_norm"] == pytest.approx(expected["grad_norm"], rel=1e-5)
        weights = group.state_dict_for_sync()  # the published keys; with LoRA merged
        published = initial.state_dict() if lora is None else merged_state_dict(network.state_dict(), lora)
        assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in published.items()}
        for name, value in (network.state_dict() if lora is None else published).items():
            torch.testing.assert_close(weights[name], value, rtol=1e-5, atol=TOLERANCE, msg=name)
        sums = group.checksums()
        assert sums[0] == sums[1]
        if lora is None:
            assert sums[0] == checksum(weights.items())
            frozen = ray.get([r.ref_checksum.remote() for r in group.ranks])
            assert frozen == [checksum(initial.state_dict().items())] * 2  # gathered under ZeRO-3
        if lora is None and stage == 3:  # the full fine-tune's reference is partitioned: each rank holds ~half
            total = sum(p.numel() for p in initial.parameters())
            held = [s["held"] for s in group.train_step(reference_values_held, [{}, {}])]
            assert sum(held) >= total and max(held) <= total / 2 + 1024, (held, total)
        if lora is not None:  # the ranks hash base + adapters; the base never moved; the adapters are what a sync sends
            base = {k: v for k, v in network.state_dict().items() if not is_adapter_key(k)}
            assert ray.get([r.ref_checksum.remote() for r in group.ranks]) == [checksum(base.items())] * 2
            adapters = group.adapter_state_dict()
            assert sorted(adapters) == sorted(adapter_state(network)) and len(adapters) == 28
            for name, value in adapter_state(network).items():
                torch.testing.assert_close(adapters[name], value, rtol=1e-5, atol=TOLERANCE, msg=name)
            manifest = ray.get(group.ranks[0].weights_manifest.remote(1, 1.0))
            assert manifest.names() == set(adapters)
    finally:
        group.shutdown()


def test_bf16_zero1_with_gradient_checkpointing_trains(ray_session, kit):
    cfg = learner_cfg(num_ranks=1, zero_stage=1, dtype="bf16", gradient_checkpointing=True)
    initial = kit.policy_source(0)().to(torch.bfloat16)
    input_ids, masked = mlm_data(initial.config.vocab_size, rows=4)
    group = LearnerGroup(cfg, kit.policy_source(0))
    try:
        (stats,) = group.train_step(masked_ce_step, [{"input_ids": input_ids, "masked": masked}],
                                    num_sequences_global=4, optimizer_steps=3)
        assert stats["gradient_checkpointing"] == 1.0 and stats["loss_last"] < stats["loss_first"]
        weights = group.state_dict_for_sync()
        assert all(v.dtype == torch.bfloat16 for v in weights.values())
        assert all(not torch.equal(weights[k], v) for k, v in initial.state_dict().items() if not k.endswith("norm.weight"))
    finally:
        group.shutdown()


def test_deepspeed_config_follows_the_learner_config():
    cfg = learner_cfg(zero_stage=3, dtype="bf16", grad_clip=0.5, micro_batch_size=3)
    ds = deepspeed_config(cfg, world_size=2)
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"] == {"enabled": True}
    assert ds["gradient_clipping"] == 0.5 and ds["train_micro_batch_size_per_gpu"] == 3
    assert ds["gradient_accumulation_steps"] == 1 and ds["managed_gradient_accumulation"] is False
    assert ds["train_batch_size"] == 6 and "optimizer" not in ds
    adamw = deepspeed_config(learner_cfg(optimizer="deepspeed_adamw", lr=2e-5, betas=(0.8, 0.9)), 1)["optimizer"]
    assert adamw == {"type": "AdamW", "params": {"lr": 2e-5, "betas": [0.8, 0.9], "eps": 1e-8, "weight_decay": 0.01,
                                                 "torch_adam": True}}


def test_step_functions_are_passed_as_callables_or_import_paths():
    assert resolve_step(unigrpo_step) is unigrpo_step
    assert resolve_step(f"{__name__}:masked_ce_step") is masked_ce_step
    assert resolve_step(masked_ce_step) is masked_ce_step
    with pytest.raises(TypeError, match="step function 'unigrpo': pass the function itself"):
        resolve_step("unigrpo")  # the name registry is gone
    with pytest.raises(TypeError, match="step function None"):
        resolve_step(None)


def test_default_learner_leaves_the_learning_rate_alone(zero2):
    """No schedule configured: train_step never writes the optimizer's lr, with or without rl_step."""
    zero2.train_step(noop_step, [{}, {}], rl_step=5)
    zero2.train_step(noop_step, [{}, {}])
    assert zero2.learning_rates() == [1e-3, 1e-3]


def test_lr_schedule_warms_up_decays_and_resumes_to_the_same_rate(ray_session, kit, tmp_path):
    """Warm-up 2 RL steps then cosine to 0.1 lr over a 6-step run, through a ZeRO-2 DeepSpeed AdamW; a fresh
    group loading the step-2 checkpoint continues with the same rates and the same weights."""
    cfg = learner_cfg(num_ranks=1, optimizer="deepspeed_adamw", lr_warmup_steps=2, lr_decay="cosine",
                      min_lr_ratio=0.1)
    # RL step s (1-based): 1e-3 * s / 2 while warming up, then 1e-3 * (0.1 + 0.45 * (1 + cos(pi * (s - 3) / 4)))
    expected = {1: 5e-4, 2: 1e-3, 3: 1e-3, 4: 1e-3 * (0.1 + 0.45 * (1 + math.sqrt(0.5))),
                6: 1e-3 * (0.1 + 0.45 * (1 - math.sqrt(0.5)))}
    initial = kit.policy_source(0)()
    input_ids, masked = mlm_data(initial.config.vocab_size, rows=4)
    shard = {"input_ids": input_ids, "masked": masked}
    reference = copy.deepcopy(initial).train()
    engine = plain_engine(reference, cfg)
    ctx = LearnerContext(engine, copy.deepcopy(initial), 0, 1, cfg, torch.device("cpu"))

    def reference_step(rl_step):
        set_learning_rate(engine.optimizer, expected[rl_step])
        masked_ce_step(ctx, input_ids=input_ids, masked=masked, num_sequences_global=4, optimizer_steps=1)

    first = LearnerGroup(cfg, kit.policy_source(0), total_steps=6)
    try:
        for rl_step in (1, 2):
            first.train_step(masked_ce_step, [shard], rl_step=rl_step, num_sequences_global=4, optimizer_steps=1)
            assert first.learning_rates() == [pytest.approx(expected[rl_step], rel=1e-12)]
            reference_step(rl_step)
        first.save_checkpoint(tmp_path)
        for rl_step in (3, 4):
            first.train_step(masked_ce_step, [shard], rl_step=rl_step, num_sequences_global=4, optimizer_steps=1)
            assert first.learning_rates() == [pytest.approx(expected[rl_step], rel=1e-12)]
            reference_step(rl_step)
        uninterrupted = first.state_dict_for_sync()
        for name, value in reference.state_dict().items():  # the rates reached the ZeRO optimizer's steps
            torch.testing.assert_close(uninterrupted[name], value, rtol=1e-5, atol=TOLERANCE, msg=name)
    finally:
        first.shutdown()

    resumed = LearnerGroup(cfg, kit.policy_source(0), total_steps=6)
    try:
        resumed.load_checkpoint(tmp_path)
        for rl_step in (3, 4):
            resumed.train_step(masked_ce_step, [shard], rl_step=rl_step, num_sequences_global=4, optimizer_steps=1)
            assert resumed.learning_rates() == [pytest.approx(expected[rl_step], rel=1e-12)]
        assert resumed.checksums() == [checksum(uninterrupted.items())]  # bit-identical to the uninterrupted run
        resumed.train_step(noop_step, [{}], rl_step=6)
        assert resumed.learning_rates() == [pytest.approx(expected[6], rel=1e-12)]  # the last step: above 0.1 lr
        with pytest.raises(ValueError, match="schedule the learning rate per RL step; pass train_step"):
            resumed.train_step(masked_ce_step, [shard], num_sequences_global=4)
        with pytest.raises(ValueError, match="rl_step: got 0; RL steps count from 1"):
            resumed.train_step(masked_ce_step, [shard], rl_step=0, num_sequences_global=4)
    finally:
        resumed.shutdown()


def test_a_decaying_schedule_needs_the_runs_total_steps(kit):
    with pytest.raises(ValueError, match="learner.lr_decay: linear decays towards the run's last step"):
        LearnerGroup(learner_cfg(lr_decay="linear"), kit.policy_source(0))
    with pytest.raises(ValueError, match="total_steps: got 0"):
        LearnerGroup(learner_cfg(lr_warmup_steps=3), kit.policy_source(0), total_steps=0)


@pytest.mark.parametrize("changes,words", [
    ({"num_ranks": 0}, "num_ranks"), ({"gpus_per_rank": 0.5}, "gpus_per_rank"), ({"lr": 0}, "lr"),
    ({"betas": (0.9, 1.0)}, "betas"), ({"grad_clip": -1}, "grad_clip"), ({"micro_batch_size": 0}, "micro_batch_size"),
    ({"cpus_per_rank": -1}, "cpus_per_rank"), ({"weight_decay": -0.1}, "weight_decay"), ({"eps": 0}, "eps"),
    ({"lr_decay": "step"}, "lr_decay: got 'step'; expected one of constant, cosine, linear"),
    ({"lr_warmup_steps": -1}, "lr_warmup_steps: got -1; expected a whole number of steps >= 0"),
    ({"min_lr_ratio": 1.01}, r"min_lr_ratio: got 1.01; expected a fraction of lr in \[0, 1\]"),
    ({"min_lr_ratio": -0.1}, r"min_lr_ratio: got -0.1"),
])
def test_learner_config_checks(changes, words):
    with pytest.raises(ValueError, match=words):
        learner_cfg(**changes)


@pytest.mark.parametrize("override,message", [
    ("learner.lr_decay=exp", "learner.lr_decay: got 'exp'; expected one of constant, cosine, linear"),
    ("learner.lr_warmup_steps=-2", "learner.lr_warmup_steps: got -2; expected a whole number of steps >= 0"),
    ("learner.min_lr_ratio=2.5", r"learner.min_lr_ratio: got 2.5; expected a fraction of lr in \[0, 1\]"),
    ("learner.min_lr_ratio=-0.5", r"learner.min_lr_ratio: got -0.5; expected a fraction of lr in \[0, 1\]"),
])
def test_schedule_knobs_are_checked_when_the_config_loads(override, message):
    from jobs.config import load_config
    from jobs.configtree import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_config(None, [override, "data.train=x.jsonl"])


def test_schedule_knobs_load_and_default_to_a_constant_rate():
    from jobs.config import load_config

    default = load_config(None, ["data.train=x.jsonl"]).learner
    assert (default.lr_warmup_steps, default.lr_decay, default.min_lr_ratio) == (0, "constant", 0.0)
    cfg = load_config(None, ["data.train=x.jsonl", "learner.lr_warmup_steps=5", "learner.lr_decay=linear",
                             "learner.min_lr_ratio=0.1"]).learner
    assert (cfg.lr_warmup_steps, cfg.lr_decay, cfg.min_lr_ratio) == (5, "linear", 0.1)
