"""rl.losses.policy_loss: values and gradients by hand, against a plain loop, KL estimators, stats, errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rl.losses import KL_ESTIMATORS, get_kl, policy_loss, reduce_stats, register_kl, summarize_stats

LN = math.log


def hand_case():
    """Two sequences; old log-probs −1 everywhere, so ℓ_θ = −1 + ln r gives the ratios r below."""
    ratios = torch.tensor([[1.1, 1.5, 0.5], [0.5, 1.5, 1.0]], dtype=torch.float64)
    old = torch.full((2, 3), -1.0, dtype=torch.float64)
    logp = (old + ratios.log()).requires_grad_(True)
    ref = logp.detach().clone()
    ref[0, 0] += LN(2)  # Δ = ℓ_ref − ℓ_θ = ln 2 at one token, 0 elsewhere
    adv = torch.tensor([1.0, -2.0], dtype=torch.float64)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    return logp, old, ref, adv, mask


def test_hand_computed_loss_clip_and_kl():
    logp, old, ref, adv, mask = hand_case()
    loss, stats = policy_loss(logp, old, ref, adv, mask, clip_eps=0.2, beta=0.1, kl="k3")
    # row 0, Â = +1, r = [1.1, 1.5, 0.5], clip to [0.8, 1.2] -> [1.1, 1.2, 0.8]
    #   min(r·Â, clip·Â) = [1.1 (inside), 1.2 (clipped high), 0.5 (r below range, unclipped side wins)]
    #   mean = 2.8 / 3 = 0.933333
    # row 1, Â = −2, r = [0.5, 1.5] (third token not scored): r·Â = [−1, −3], clip·Â = [−1.6, −2.4]
    #   min = [−1.6 (clipped low), −3 (r above range, unclipped side wins)]; mean = −4.6 / 2 = −2.3
    # pg_loss = −(0.933333 − 2.3) / 2 = 0.683333
    # k3 at row 0 token 0: e^{ln 2} − ln 2 − 1 = 1 − ln 2 = 0.306853; row 0 mean 0.102284; row 1: 0
    # kl_loss = 0.1 · (0.102284 + 0) / 2 = 0.0051142;  loss = 0.6884475
    pg = -(2.8 / 3 - 2.3) / 2
    kl = 0.1 * ((1 - LN(2)) / 3) / 2
    assert loss.detach().item() == pytest.approx(pg + kl, abs=1e-12)
    assert stats["pg_loss_sum"] == pytest.approx(pg) and stats["kl_loss_sum"] == pytest.approx(kl)
    assert stats["token_count"] == 5 and stats["sequence_count"] == 2
    assert stats["clip_high_count"] == 1 and stats["clip_low_count"] == 1
    assert stats["ratio_sum"] == pytest.approx(1.1 + 1.5 + 0.5 + 0.5 + 1.5) and stats["ratio_max"] == pytest.approx(1.5)
    assert stats["kl_ref_sum"] == pytest.approx(1 - LN(2))
    loss.backward()
    # d loss / d ℓ = −(1/N)(1/n_i)·r·Â where unclipped (0 where clipped) + (β/N)(1/n_i)·(1 − e^Δ)
    #   row 0: token 0: −(1/6)·1.1 + (0.1/6)·(1 − 2) = −0.2; token 1 clipped: 0; token 2: −(1/6)·0.5
    #   row 1: token 0 clipped: 0; token 1: −(1/4)·1.5·(−2) = +0.75; token 2 not scored: 0
    expected = torch.tensor([[-0.2, 0.0, -0.5 / 6], [0.0, 0.75, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(logp.grad, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("name", "value"), [
    ("k1", -LN(2)),  # ℓ_θ − ℓ_ref = −ln 2
    ("k2", 0.5 * LN(2) ** 2),  # ½ (ln 2)² = 0.240227
    ("k3", 1 - LN(2)),  # e^{ln 2} − ln 2 − 1 = 0.306853
])
def test_kl_estimators_by_hand(name, value):
    logp = torch.tensor([[-1.0, -2.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.0 + LN(2), -2.0]], dtype=torch.float64)
    assert get_kl(name)(logp, ref).tolist()[0] == pytest.approx([value, 0.0])
    loss, stats = policy_loss(logp, logp, ref, torch.zeros(1, dtype=torch.float64), torch.ones(1, 2, dtype=torch.bool),
                              clip_eps=0.2, beta=1.0, kl=name)
    assert loss.detach().item() == pytest.approx(value / 2)  # Â = 0: only the KL term, mean over 2 tokens
    assert stats["kl_ref_sum"] == pytest.approx(value)


def test_kl_registry_errors():
    assert sorted(KL_ESTIMATORS) == ["k1", "k2", "k3"]
    with pytest.raises(ValueError, match=r"KL estimator: got 'k9'; expected one of \['k1', 'k2', 'k3'\] or a plugin"):
        get_kl("k9")
    with pytest.raises(ValueError, match="KL estimator 'k3' is already registered"):
        register_kl("k3")(lambda a, b: a)


def test_first_iteration_ratio_is_exactly_one_and_gradient_is_advantage_times_mean_logprob():
    torch.manual_seed(0)
    logp = torch.randn(3, 5, dtype=torch.float64).requires_grad_(True)
    mask = torch.rand(3, 5) < 0.6
    mask[:, 0] = True
    adv = torch.tensor([0.7, -1.3, 0.2], dtype=torch.float64)
    loss, stats = policy_loss(logp, logp.detach(), None, adv, mask, clip_eps=0.2, beta=0.0)
    assert stats["ratio_max"] == 1.0 and stats["ratio_sum"] == stats["token_count"]
    assert stats["clip_low_count"] == stats["clip_high_count"] == 0
    (grad,) = torch.autograd.grad(loss, logp)
    direct = -(adv * (logp * mask).sum(1) / mask.sum(1)).sum() / 3  # −mean_i Â_i · mean_j ℓ_ij
    (want,) = torch.autograd.grad(direct, logp)
    torch.testing.assert_close(grad, want, rtol=0, atol=1e-15)
    assert loss.detach().item() == pytest.approx(-float(adv.sum()) / 3)  # r = 1: the objective is mean Â


def test_empty_and_masked_out_sequences_contribute_zero_without_nan():
    logp = torch.tensor([[-1.0, float("-inf")], [float("nan"), -2.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-1.5, 0.0], [0.0, -2.5]], dtype=torch.float64)
    ref = torch.tensor([[-1.0, float("nan")], [0.0, -2.0]], dtype=torch.float64)
    mask = torch.tensor([[True, False], [False, False]])  # row 1 has nothing to score
    loss, stats = policy_loss(logp, old, ref, torch.tensor([1.0, 5.0], dtype=torch.float64), mask,
                              clip_eps=0.2, beta=0.1, normalizer=4)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()
    assert (logp.grad[1] == 0).all() and logp.grad[0, 1] == 0
    # row 0: r = e^{0.5} = 1.6487 > 1.2, Â > 0 -> clipped: 1.2; k3 = 0 (ℓ_ref = ℓ_θ); loss = −1.2 / 4
    assert loss.detach().item() == pytest.approx(-1.2 / 4)
    assert stats["sequence_count"] == 1 and stats["token_count"] == 1
    off, off_stats = policy_loss(logp, old, ref, torch.tensor([1.0, 5.0], dtype=torch.float64), mask, clip_eps=0.2,
                                 beta=0.1, sequence_mask=torch.tensor([False, True]))
    assert off.detach().item() == 0.0 and off_stats["token_count"] == 0 and off_stats["ratio_max"] == 0.0


# ---- vectorised vs plain loop over random shapes ----------------------------------------------------

def loop_loss(logp, old, ref, adv, mask, eps, beta, kl, normalizer):
    """Token by token, sequence by sequence, with Python scalars on torch 0-d tensors."""
    total = torch.zeros((), dtype=torch.float64)
    for i in range(logp.shape[0]):
        terms = []
        for j in range(logp.shape[1]):
            if not mask[i, j]:
                continue
            r = torch.exp(logp[i, j] - old[i, j])
            term = torch.minimum(r * adv[i], torch.clamp(r, 1 - eps, 1 + eps) * adv[i])
            if beta > 0:
                d = ref[i, j] - logp[i, j]
                k = {"k1": -d, "k2": 0.5 * d * d, "k3": torch.exp(d) - d - 1}[kl]
                term = term - beta * k
            terms.append(term)
        if terms:
            total = total + sum(terms) / len(terms)
    return -total / normalizer


@given(B=st.integers(1, 5), L=st.integers(1, 6), seed=st.integers(0, 10**6), eps=st.floats(0.05, 0.5),
       beta=st.sampled_from([0.0, 0.04, 1.0]), kl=st.sampled_from(["k1", "k2", "k3"]), extra=st.integers(0, 3))
@settings(max_examples=60, deadline=None)
def test_vectorised_matches_plain_loop(B, L, seed, eps, beta, kl, extra):
    g = torch.Generator().manual_seed(seed)
    logp = (-3 * torch.rand(B, L, generator=g, dtype=torch.float64)).requires_grad_(True)
    old = logp.detach() + 0.6 * (torch.rand(B, L, generator=g, dtype=torch.float64) - 0.5)
    ref = logp.detach() + 0.6 * (torch.rand(B, L, generator=g, dtype=torch.float64) - 0.5)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    mask = torch.rand(B, L, generator=g) < 0.6
    loss, _ = policy_loss(logp, old, ref, adv, mask, clip_eps=eps, beta=beta, kl=kl, normalizer=B + extra)
    (grad,) = torch.autograd.grad(loss, logp)
    want = loop_loss(logp, old, ref, adv, mask, eps, beta, kl, B + extra)
    if want.requires_grad:
        (want_grad,) = torch.autograd.grad(want, logp, allow_unused=True, materialize_grads=True)
    else:  # nothing scored anywhere: the loop's loss is a constant 0
        want_grad = torch.zeros_like(logp)
    assert loss.detach().item() == pytest.approx(want.detach().item(), rel=1e-12, abs=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-12)


def test_splitting_rows_with_a_global_normalizer_adds_up():
    logp, old, ref, adv, mask = hand_case()
    whole, whole_stats = policy_loss(logp, old, ref, adv, mask, clip_eps=0.2, beta=0.1)
    parts = [policy_loss(logp[i:i + 1], old[i:i + 1], ref[i:i + 1], adv[i:i + 1], mask[i:i + 1], clip_eps=0.2,
                         beta=0.1, normalizer=2, mask_ratio=torch.tensor([0.5])) for i in (0, 1)]
    assert (parts[0][0] + parts[1][0]).detach().item() == pytest.approx(whole.detach().item(), abs=1e-15)
    total = reduce_stats(p[1] for p in parts)
    for key in ("loss_sum", "token_count", "clip_low_count", "clip_high_count", "ratio_sum", "kl_ref_sum"):
        assert total[key] == pytest.approx(whole_stats[key]), key
    assert total["ratio_max"] == whole_stats["ratio_max"] == pytest.approx(1.5)
    summary = summarize_stats(total)
    assert summary["loss"] == pytest.approx(whole.detach().item()) and summary["clip_frac_high"] == pytest.approx(1 / 5)
    assert summary["ratio_mean"] == pytest.approx(5.1 / 5) and summary["mask_ratio"] == pytest.approx(0.5)
    assert summary["masked_tokens"] == 5
    # summaries of shards can be reduced and summarized again (a learner's all-reduce)
    again = summarize_stats(reduce_stats([summarize_stats(p[1]) for p in parts]))
    assert again["loss"] == pytest.approx(summary["loss"]) and again["approx_kl"] == pytest.approx(summary["approx_kl"])
    assert summarize_stats(total, num_steps=2)["loss"] == pytest.approx(whole.detach().item() / 2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"logp": torch.zeros(3)}, "logp has shape \\(3,\\), need \\[B, L\\]"),
        ({"old_logp": torch.zeros(2, 2)}, "old_logp has shape \\(2, 2\\), need \\(2, 3\\) like logp"),
        ({"ref_logp": torch.zeros(1, 3)}, "ref_logp has shape \\(1, 3\\)"),
        ({"scored_mask": torch.ones(2, 4, dtype=torch.bool)}, "scored_mask has shape \\(2, 4\\)"),
        ({"advantages": torch.zeros(3)}, "advantages has shape \\(3,\\), need \\[2\\] \\(one per sequence\\)"),
        ({"sequence_mask": torch.ones(1, dtype=torch.bool)}, "sequence_mask has shape \\(1,\\)"),
        ({"mask_ratio": torch.ones(2, 1)}, "mask_ratio has shape \\(2, 1\\)"),
        ({"clip_eps": 0.0}, "clip_eps 0.0 must be positive"),
        ({"beta": -1.0}, "beta -1.0 is negative"),
        ({"ref_logp": None}, "beta = 0.1 needs ref_logp"),
        ({"normalizer": 0}, "normalizer 0 must be positive"),
        ({"kl": "k7"}, "KL estimator: got 'k7'; expected one of"),
    ],
)
def test_errors_name_the_problem(kwargs, message):
    logp, old, ref, adv, mask = hand_case()
    args = {"logp": logp, "old_logp": old, "ref_logp": ref, "advantages": adv, "scored_mask": mask,
            "clip_eps": 0.2, "beta": 0.1} | kwargs
    with pytest.raises((ValueError, KeyError), match=message):
        policy_loss(**args)


def test_beta_zero_needs_no_reference():
    logp, old, _, adv, mask = hand_case()
    loss, stats = policy_loss(logp, old, None, adv, mask, clip_eps=0.2, beta=0.0)
    assert loss.detach().item() == pytest.approx(-(2.8 / 3 - 2.3) / 2) and stats["kl_ref_sum"] == 0.0
