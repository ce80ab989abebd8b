"""The clipped policy loss shared by every estimator, the KL estimator registry, and loss statistics.

For one masked copy (docs/algorithm.md §4.4), with per-token log-probs ℓ_θ, ℓ_old, ℓ_ref at the loss
positions:

    r      = exp(ℓ_θ − ℓ_old)
    obj_ij = min(r·Â_i, clip(r, 1−ε, 1+ε)·Â_i) − β·KL(ℓ_θ, ℓ_ref)
    loss   = − Σ_i [ mean_{j in loss positions of i} obj_ij ] / normalizer

`normalizer` is the number of sequences in the GLOBAL batch (default: this call's B). Each sequence's
term depends only on its own tokens, so summing the losses of any split of the batch (ranks,
micro-batches, accumulation steps), each divided by the same global normalizer, gives the loss and the
gradient of the whole batch. A sequence without loss positions (or with `sequence_mask` False)
contributes exactly 0 — no NaN, no gradient — and still counts in the normalizer.

Statistics are floats that add up across micro-batches and ranks: every key is a sum (of tokens,
sequences, or losses already divided by the global normalizer) except keys ending in `_max`, which
combine with max.
`reduce_stats` combines them and `summarize_stats` turns them into means (clip fractions, ratio mean,
approximate KL(π_old‖π_θ) via k3, KL to the reference, mask ratio).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch

from rl.config import adder, lookup

KLFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
KL_ESTIMATORS: dict[str, KLFn] = {}


def register_kl(name: str) -> Callable[[KLFn], KLFn]:
    """Decorator adding a per-token KL estimator fn(logp [B, L], ref_logp [B, L]) -> [B, L]."""
    return adder(KL_ESTIMATORS, name, "KL estimator")


def get_kl(name: str) -> KLFn:
    """`KL_ESTIMATORS[name]`; a plugin name (`algo.kl.estimator`) is imported on first use in each process."""
    return lookup(KL_ESTIMATORS, name, "KL estimator")


@register_kl("k1")
def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """log(π_θ/π_ref): unbiased, can be negative."""
    return logp - ref_logp


@register_kl("k2")
def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """½·log(π_θ/π_ref)²: biased, non-negative."""
    return 0.5 * (logp - ref_logp) ** 2


@register_kl("k3")
def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """exp(Δ) − Δ − 1 with Δ = ℓ_ref − ℓ_θ: unbiased and non-negative (GRPO's choice)."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


def _check_like(name: str, value: torch.Tensor | None, shape: torch.Size) -> None:
    if value is not None and tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(value.shape)}, need {tuple(shape)} like logp")


def policy_loss(
    logp: torch.Tensor,  # [B, L] log-probs under π_θ (with grad)
    old_logp: torch.Tensor,  # [B, L] under π_old on the same masked input (no grad)
    ref_logp: torch.Tensor | None,  # [B, L] under π_ref on the same masked input, or None when beta = 0
    advantages: torch.Tensor,  # [B]
    scored_mask: torch.Tensor,  # [B, L] bool: the loss positions
    *,
    clip_eps: float,
    beta: float,
    kl: str = "k3",
    normalizer: float | None = None,
    sequence_mask: torch.Tensor | None = None,  # [B] bool: False rows contribute nothing (unscorable)
    mask_ratio: torch.Tensor | None = None,  # [B] fraction of each row's scored tokens masked (for stats)
) -> tuple[torch.Tensor, dict[str, float]]:
    """(loss scalar, stats) for one masked copy; see the module docstring for the formula.

    stats (floats, summable; see `reduce_stats`): loss_sum, pg_loss_sum, kl_loss_sum (already divided by
    the normalizer); token_count (loss tokens), sequence_count (rows with at least one); clip_low_count /
    clip_high_count (tokens where the clip is active, i.e. zeroes the gradient: r < 1 − ε with Â < 0, or
    r > 1 + ε with Â > 0); ratio_sum, ratio_max; approx_kl_sum (k3 of π_old vs π_θ per token);
    kl_ref_sum (the chosen estimator vs π_ref, 0 without ref_logp); mask_ratio_sum (when mask_ratio given).
    """
    if logp.dim() != 2:
        raise ValueError(f"logp has shape {tuple(logp.shape)}, need [B, L]")
    B = logp.shape[0]
    _check_like("old_logp", old_logp, logp.shape)
    _check_like("ref_logp", ref_logp, logp.shape)
    _check_like("scored_mask", scored_mask, logp.shape)
    for name, value in (("advantages", advantages), ("sequence_mask", sequence_mask), ("mask_ratio", mask_ratio)):
        if value is not None and tuple(value.shape) != (B,):
            raise ValueError(f"{name} has shape {tuple(value.shape)}, need [{B}] (one per sequence)")
    if not clip_eps > 0:
        raise ValueError(f"clip_eps {clip_eps} must be positive")
    if beta < 0:
        raise ValueError(f"beta {beta} is negative; use 0 to disable the KL term")
    if beta > 0 and ref_logp is None:
        raise ValueError(f"beta = {beta} needs ref_logp (log-probs of the reference policy); pass it or set beta = 0")
    if normalizer is not None and not normalizer > 0:
        raise ValueError(f"normalizer {normalizer} must be positive (the number of sequences in the global batch)")
    kl_fn = get_kl(kl)
    normalizer = float(B if normalizer is None else normalizer)

    mask = scored_mask.to(torch.bool)  # [B, L]
    if sequence_mask is not None:
        mask = mask & sequence_mask.to(torch.bool)[:, None]
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    safe_logp = torch.where(mask, logp, zero)  # [B, L]: no NaN/inf leaks from unused positions
    log_ratio = torch.where(mask, logp - old_logp.to(logp.dtype), zero)  # [B, L]
    ratio = torch.exp(log_ratio)  # [B, L], exactly 1 where old_logp == logp.detach()
    adv = advantages.to(logp.dtype)[:, None]  # [B, 1]
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)  # [B, L]
    surrogate = torch.minimum(ratio * adv, clipped * adv)  # [B, L]
    tokens = mask.sum(dim=1)  # [B]
    per_seq_denominator = tokens.clamp(min=1).to(logp.dtype)  # [B]
    pg_seq = torch.where(mask, surrogate, zero).sum(dim=1) / per_seq_denominator  # [B]
    pg_loss = -pg_seq.sum() / normalizer

    kl_tok = None
    if ref_logp is not None:
        safe_ref = torch.where(mask, ref_logp.to(logp.dtype), zero)  # [B, L]
        kl_tok = torch.where(mask, kl_fn(safe_logp, safe_ref), zero)  # [B, L]
    if beta > 0:
        kl_loss = beta * (kl_tok.sum(dim=1) / per_seq_denominator).sum() / normalizer
    else:
        kl_loss = torch.zeros((), dtype=logp.dtype, device=logp.device)
    loss = pg_loss + kl_loss

    with torch.no_grad():
        # a clip is "active" where the clipped term wins the min and stops the gradient
        low = mask & (ratio < 1 - clip_eps) & (adv < 0)  # [B, L]
        high = mask & (ratio > 1 + clip_eps) & (adv > 0)  # [B, L]
        approx_kl = torch.where(mask, kl_k3(safe_logp, torch.where(mask, old_logp.to(logp.dtype), zero)), zero)
        rows = (tokens > 0) if sequence_mask is None else (tokens > 0) & sequence_mask.to(torch.bool)  # [B]
        stats = {
            "loss_sum": float(loss.detach()),
            "pg_loss_sum": float(pg_loss.detach()),
            "kl_loss_sum": float(kl_loss.detach()),
            "token_count": float(mask.sum()),
            "sequence_count": float(rows.sum()),
            "clip_low_count": float(low.sum()),
            "clip_high_count": float(high.sum()),
            "ratio_sum": float(torch.where(mask, ratio, zero).sum()),
            "ratio_max": float(ratio[mask].max()) if bool(mask.any()) else 0.0,
            "approx_kl_sum": float(approx_kl.sum()),
            "kl_ref_sum": float(kl_tok.sum()) if kl_tok is not None else 0.0,
        }
        if mask_ratio is not None:
            stats["mask_ratio_sum"] = float(mask_ratio.to(torch.float64)[rows.cpu()].sum())
    return loss, stats


def reduce_stats(parts: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Combine stats of micro-batches / steps / ranks: keys ending in `_max` by max, all others by sum."""
    total: dict[str, float] = {}
    for part in parts:
        for key, value in part.items():
            if key not in total:
                total[key] = float(value)
            elif key.endswith("_max"):
                total[key] = max(total[key], float(value))
            else:
                total[key] += float(value)
    return total


def summarize_stats(total: Mapping[str, float], *, num_steps: int = 1) -> dict[str, float]:
    """Means from reduced stats; losses are averaged over `num_steps` optimizer steps.

    The raw keys are kept and every derived key is recomputed from them, so `summarize_stats(reduce_stats(
    [summarize_stats(a), summarize_stats(b)]))` equals `summarize_stats(reduce_stats([a, b]))`: a learner
    may all-reduce the summaries of its ranks (sum, or max for `_max`) and summarize again.
    """
    tokens = max(total.get("token_count", 0.0), 1.0)
    sequences = max(total.get("sequence_count", 0.0), 1.0)
    out = dict(total)
    out.update({
        "loss": total.get("loss_sum", 0.0) / num_steps,
        "pg_loss": total.get("pg_loss_sum", 0.0) / num_steps,
        "kl_loss": total.get("kl_loss_sum", 0.0) / num_steps,
        "clip_frac_low": total.get("clip_low_count", 0.0) / tokens,
        "clip_frac_high": total.get("clip_high_count", 0.0) / tokens,
        "ratio_mean": total.get("ratio_sum", 0.0) / tokens if total.get("token_count") else 1.0,
        "approx_kl": total.get("approx_kl_sum", 0.0) / tokens,
        "kl_ref": total.get("kl_ref_sum", 0.0) / tokens,
        "masked_tokens": total.get("token_count", 0.0) / num_steps,
    })
    if "mask_ratio_sum" in total:
        out["mask_ratio"] = total["mask_ratio_sum"] / sequences
    return out
