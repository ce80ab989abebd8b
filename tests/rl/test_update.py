"""rl.update.unigrpo_update on tiny networks: sharding invariance, the n = 1 gradient, π_old ordering,
learning on a fixed batch, unscorable groups, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rl.advantages import group_advantages
from rl.batch import RolloutBatch
from rl.config import AlgoConfig, RandomMaskingConfig
from rl.estimators import build_views
from rl.losses import policy_loss
from rl.update import Engine, PlainEngine, unigrpo_update


class RecordingEngine:
    """An Engine that keeps the weights fixed: `step` stores the accumulated gradient and zeroes it."""

    def __init__(self, module: nn.Module):
        self.module, self.steps, self.losses = module, [], []

    def backward(self, loss):
        self.losses.append(float(loss.detach()))
        loss.backward()

    def step(self):
        self.steps.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                                     for p in self.module.parameters()]))
        self.module.zero_grad(set_to_none=True)
        return None


class SnapshotEngine(PlainEngine):
    """PlainEngine that also keeps the loss of every backward and a copy of the weights after every step."""

    def __init__(self, module, optimizer):
        super().__init__(module, optimizer, grad_clip=None)
        self.losses, self.snapshots = [], []

    def backward(self, loss):
        self.losses.append(float(loss.detach()))
        super().backward(loss)

    def step(self):
        out = super().step()
        self.snapshots.append(copy.deepcopy(self.module))
        return out


class IdsToLogits(nn.Module):
    """A plain ids -> logits module without `config`, `hidden_states` or `lm_head`."""

    def __init__(self, network):
        super().__init__()
        self.network = network

    def forward(self, ids, mask):
        return self.network(ids, mask)


def reference_logp(network, ids, mask, targets, positions, vocab):
    """[R, T] log_softmax of the full forward (or its column slice) at positions, 0 elsewhere."""
    logits = network(ids, mask).double()
    out = torch.zeros(ids.shape, dtype=torch.float64)
    for r, c in positions.nonzero().tolist():
        lo, hi = vocab[r] if vocab[r] is not None else (0, logits.shape[-1])
        out[r, c] = torch.log_softmax(logits[r, c, lo:hi], dim=-1)[targets[r, c] - lo]
    return out


@pytest.fixture(scope="module")
def batch(kit):
    """12 rows: text, mmu and t2i groups of different widths, plus two more text groups."""
    extra = kit.text_batch({"a": 3, "b": 3}, eos_at={1: 2, 4: 5}, rewards=[1.0, 0.0, 0.5, 0.0, 1.0, 1.0])
    return RolloutBatch.concat([kit.mixed_batch(), extra])


def advantages_of(batch):
    return group_advantages(batch.total, batch.uid)


def recorded_grads(net, ref, batch, adv, cfg, shards, micro):
    """Sum over simulated ranks of each rank's per-step gradients, all with the global normaliser."""
    total = None
    for rows in shards:
        engine = RecordingEngine(net)
        unigrpo_update(engine, ref, batch.select(rows), adv[rows], cfg, step=3, run_seed=9,
                       micro_batch_size=micro, num_sequences_global=batch.num_rows)
        total = engine.steps if total is None else [a + b for a, b in zip(total, engine.steps)]
    return total


@pytest.mark.parametrize("estimator", ["unigrpo", "diffu_grpo", "random_masking", "coupled"])
def test_gradient_does_not_depend_on_ranks_or_micro_batches(kit, batch, estimator):
    net, ref = kit.tiny_net(seed=0), kit.tiny_net(seed=1)
    cfg = AlgoConfig(estimator=estimator, mu=2, beta=0.05, random_masking=RandomMaskingConfig(copies=2))
    adv = advantages_of(batch)
    B = batch.num_rows
    whole = recorded_grads(net, ref, batch, adv, cfg, [list(range(B))], micro=B)
    assert len(whole) == 2 and all(g.abs().sum() > 0 for g in whole)
    layouts = [(1, 5), (2, 2), (4, 1)] if estimator == "unigrpo" else [(2, 4)]
    for ranks, micro in layouts:
        shards = [list(range(B))[r::ranks] for r in range(ranks)]  # interleaved: groups span ranks
        split = recorded_grads(net, ref, batch, adv, cfg, shards, micro)
        for step_whole, step_split in zip(whole, split):
            torch.testing.assert_close(step_split, step_whole, rtol=0, atol=1e-6)


def test_first_iteration_ratio_is_one_and_gradient_is_advantage_times_mean_logprob(kit, batch):
    net = kit.tiny_net()
    adv = advantages_of(batch)
    cfg = AlgoConfig(mu=1, beta=0.0)
    engine = RecordingEngine(net)
    stats = unigrpo_update(engine, None, batch, adv, cfg, step=0, run_seed=0, micro_batch_size=4)
    assert stats["ratio_max"] == 1.0 and stats["ratio_mean"] == 1.0
    assert stats["clip_frac_low"] == stats["clip_frac_high"] == 0.0
    # independently: −(1/B) Σ_i Â_i · mean over masked tokens of log_softmax(full logits)[target]
    views = build_views(batch, cfg, iteration=1, step=0, run_seed=0, mask_token_id=kit.MASK)
    net.zero_grad()
    logp = reference_logp(net, views.input_ids[0], batch.attention_mask, batch.input_ids, views.loss_mask[0],
                          batch.score_vocab)
    mask = views.loss_mask[0]
    objective = -(adv.double() * (logp * mask).sum(1) / mask.sum(1)).sum() / batch.num_rows
    objective.backward()
    want = torch.cat([p.grad.flatten() for p in net.parameters()])
    torch.testing.assert_close(engine.steps[0], want, rtol=0, atol=1e-9)


def test_later_iterations_use_old_log_probs_of_the_weights_before_the_first_step(kit, batch):
    net, ref = kit.tiny_net(), kit.tiny_net(seed=1)
    original = copy.deepcopy(net)
    adv = advantages_of(batch)
    cfg = AlgoConfig(mu=2, beta=0.05)
    engine = SnapshotEngine(net, torch.optim.SGD(net.parameters(), lr=0.5))
    stats = unigrpo_update(engine, ref, batch, adv, cfg, step=1, run_seed=2, micro_batch_size=batch.num_rows)
    assert len(engine.losses) == 2 and stats["ratio_max"] > 1.0  # the policy moved between the steps
    # step 2's loss: π_θ = weights after step 1, π_old = the ORIGINAL weights, both on masked copy 2
    views = build_views(batch, cfg, iteration=2, step=1, run_seed=2, mask_token_id=kit.MASK)
    args = (views.input_ids[0], batch.attention_mask, batch.input_ids, views.loss_mask[0], batch.score_vocab)
    with torch.no_grad():
        logp, old, ref_logp = (reference_logp(m, *args) for m in (engine.snapshots[0], original, ref))
    want, _ = policy_loss(logp, old, ref_logp, adv.double(), views.loss_mask[0], clip_eps=0.2, beta=0.05,
                          sequence_mask=batch.scorable())
    assert engine.losses[1] == pytest.approx(want.item(), abs=1e-9)


def masked_mean_logp(net, batch, kit):
    """Per row: mean log-prob of the scored tokens with the whole response masked."""
    ids = torch.where(batch.response_mask(), torch.full_like(batch.input_ids, kit.MASK), batch.input_ids)
    with torch.no_grad():
        logp = reference_logp(net, ids, batch.attention_mask, batch.input_ids, batch.scored_mask, batch.score_vocab)
    return (logp.sum(1) / batch.scored_mask.sum(1)).tolist()


def test_repeated_updates_move_log_probs_the_way_the_advantages_say(kit):
    batch = kit.text_batch({"p": 2, "q": 2}, rewards=[1.0, 0.0, None, None], seed=3)
    adv = advantages_of(batch)
    assert adv[0] > 0 > adv[1] and adv[2] == adv[3] == 0
    net, ref = kit.tiny_net(seed=4, dtype=torch.float32), kit.tiny_net(seed=4, dtype=torch.float32)
    before = masked_mean_logp(net, batch, kit)
    engine = PlainEngine(net, torch.optim.AdamW(net.parameters(), lr=3e-3), grad_clip=1.0)
    cfg = AlgoConfig(mu=2, beta=0.01)
    for step in range(8):
        stats = unigrpo_update(engine, ref, batch, adv, cfg, step=step, run_seed=0, micro_batch_size=2)
        assert torch.isfinite(torch.tensor([stats["kl_ref"], stats["loss"], stats["grad_norm"]])).all()
    after = masked_mean_logp(net, batch, kit)
    assert after[0] > before[0] + 0.1  # positive advantage: more likely
    assert after[1] < before[1] - 0.1  # negative advantage: less likely
    assert 0 < stats["kl_ref"] < 10 and stats["masked_tokens"] > 0


def test_an_all_none_group_contributes_exactly_zero_gradient(kit):
    batch = kit.text_batch({"p": 2, "q": 2}, rewards=[1.0, 0.0, None, None])
    adv = advantages_of(batch)
    net, ref = kit.tiny_net(), kit.tiny_net(seed=1)
    cfg = AlgoConfig(mu=2, beta=0.1)  # β > 0: the KL term alone would give q a gradient
    only_q = RecordingEngine(net)
    stats = unigrpo_update(only_q, ref, batch.select([2, 3]), adv[[2, 3]], cfg, step=0, run_seed=0,
                           micro_batch_size=1, num_sequences_global=4)
    assert all((g == 0).all() for g in only_q.steps) and stats["masked_tokens"] == 0
    # even a non-zero advantage on an unscorable row trains nothing
    forced = RecordingEngine(net)
    unigrpo_update(forced, ref, batch.select([2, 3]), torch.tensor([1.0, -1.0]), cfg, step=0, run_seed=0,
                   micro_batch_size=2)
    assert all((g == 0).all() for g in forced.steps)
    with_q, without_q = RecordingEngine(net), RecordingEngine(net)
    unigrpo_update(with_q, ref, batch, adv, cfg, step=0, run_seed=0, micro_batch_size=1)
    unigrpo_update(without_q, ref, batch.select([0, 1]), adv[:2], cfg, step=0, run_seed=0, micro_batch_size=1,
                   num_sequences_global=4)
    for a, b in zip(with_q.steps, without_q.steps):
        assert torch.equal(a, b)
    # an explicit sequence_mask overrides the reward-based one
    masked_out = RecordingEngine(net)
    unigrpo_update(masked_out, ref, batch, adv, cfg, step=0, run_seed=0, micro_batch_size=4,
                   sequence_mask=torch.zeros(4, dtype=torch.bool))
    assert all((g == 0).all() for g in masked_out.steps)


def test_plain_engine_and_plain_modules(kit, batch):
    net = kit.tiny_net(dtype=torch.float32)
    engine = PlainEngine(net, torch.optim.SGD(net.parameters(), lr=0.1), grad_clip=1.0)
    assert isinstance(engine, Engine) and isinstance(RecordingEngine(net), Engine)
    stats = unigrpo_update(engine, kit.tiny_net(seed=2, dtype=torch.float32), batch, advantages_of(batch),
                           AlgoConfig(mu=2), step=0, run_seed=0, micro_batch_size=5)
    assert stats["grad_norm"] > 0 and stats["grad_norm_max"] >= stats["grad_norm"]
    for key in ("loss", "pg_loss", "kl_loss", "clip_frac_low", "clip_frac_high", "approx_kl", "kl_ref",
                "ratio_mean", "ratio_max", "masked_tokens", "mask_ratio"):
        assert key in stats, key
    assert 0 < stats["mask_ratio"] <= 1
    # a module with only forward(ids, mask): full-logit fallback, mask id passed explicitly, no clipping
    plain = IdsToLogits(kit.tiny_net(seed=5, dtype=torch.float32))
    no_clip = PlainEngine(plain, torch.optim.SGD(plain.parameters(), lr=0.1), grad_clip=None)
    stats = unigrpo_update(no_clip, None, batch, advantages_of(batch), AlgoConfig(mu=1, beta=0.0), step=0,
                           run_seed=0, micro_batch_size=12, mask_token_id=kit.MASK)
    assert "grad_norm" not in stats and stats["ratio_max"] == 1.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch": "empty"}, "unigrpo_update: the batch has no rows"),
        ({"advantages": torch.zeros(3)}, "advantages has shape \\(3,\\), need \\[4\\]"),
        ({"advantages": torch.tensor([0.0, float("nan"), 0.0, 0.0])}, "non-finite values at rows \\[1\\]"),
        ({"micro_batch_size": 0}, "micro_batch_size 0 is not a positive integer"),
        ({"num_sequences_global": 3}, "num_sequences_global 3 is smaller than this shard's 4 rows"),
        ({"ref_network": None}, "beta = 0.01 needs a reference network"),
        ({"plain": True}, "mask_token_id: the policy has no config.mask_token_id"),
        ({"sequence_mask": torch.ones(2, dtype=torch.bool)}, "sequence_mask has shape \\(2,\\), need \\[4\\]"),
    ],
)
def test_errors_name_the_problem(kit, change, message):
    batch = kit.text_batch({"p": 4})
    net = kit.tiny_net()
    change = dict(change)
    if change.pop("batch", None) == "empty":
        batch = batch.select([])
    module = IdsToLogits(net) if change.pop("plain", False) else net
    kwargs = {"ref_network": net, "advantages": torch.zeros(batch.num_rows), "micro_batch_size": 2} | change
    ref_network, advantages = kwargs.pop("ref_network"), kwargs.pop("advantages")
    with pytest.raises(ValueError, match=message):
        unigrpo_update(RecordingEngine(module), ref_network, batch, advantages, AlgoConfig(), step=0, run_seed=0,
                       **kwargs)


def test_plain_engine_rejects_a_bad_clip(kit):
    net = kit.tiny_net()
    with pytest.raises(ValueError, match="grad_clip 0 must be positive, or None"):
        PlainEngine(net, torch.optim.SGD(net.parameters(), lr=0.1), grad_clip=0)

