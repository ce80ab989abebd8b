"""One UniGRPO update (docs/algorithm.md §2.5, Alg. 1 inner loop) of a policy held by an `Engine`.

Order of work, and why:
1. Build the μ masked copies (estimators.py). They are pure functions of (run seed, step, uid, sample
   index, n), so any rank can rebuild any row's copies and nothing depends on the split.
2. Without grad, BEFORE the first optimizer step: old log-probs of copies n = 2..μ under the current
   weights, which are π_old (the weights that sampled the batch). After step 1 the policy has moved, so
   computing them later would give ratios against the wrong policy. Copy 1 needs no extra pass: its
   old log-probs are the first gradient pass's own log-probs, detached (ratio exactly 1 at n = 1).
   Reference log-probs of all μ copies are computed here too (π_ref is frozen). With LoRA (docs/lora.md)
   `ref_network` is the policy network itself and this pass runs with its adapters disabled: the base.
3. For n = 1..μ: forward/backward every micro-batch of copy n (gradient accumulation), then one
   `engine.step()` (clip, optimizer step, zero grad).

Loss normaliser: `num_sequences_global` (the whole batch across data-parallel ranks), so every rank's
micro-batch losses add up to the loss of the whole batch (losses.py). Rows that are unscorable (some
reward term is None; or `sequence_mask` False) are forwarded like the others but contribute exactly 0 —
also no KL term — while still counting in the normaliser.

Engines: `PlainEngine` drives a plain nn.Module and a torch optimizer. The DeepSpeed learner implements
the same Protocol; its `backward` must not rescale the loss by the accumulation count (the normaliser
already does it), and its `step` runs once per inner iteration. Both skip a step whose loss or gradients
are not finite (no parameter or optimizer-state change, gradients dropped, counted in `skipped_steps`;
`step` then returns None), so a NaN never reaches the weights (docs/reliability.md §12).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from model.lora import adapters_disabled
from rl.batch import RolloutBatch
from rl.config import AlgoConfig
from rl.estimators import MaskedViews, build_views
from rl.logprobs import token_logprobs
from rl.losses import policy_loss, reduce_stats, summarize_stats


@runtime_checkable
class Engine(Protocol):
    """What the update needs from whoever owns the policy's weights and optimizer."""

    module: nn.Module  # the policy network (model.network.MaskedDiffusionLM or any ids -> logits module)

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate d(loss)/d(params) into the gradients."""

    def step(self) -> float | None:
        """Clip, take an optimizer step, zero the gradients; return the pre-clip gradient norm if known.

        An engine may skip the step when the loss or the gradients are not finite (gradients zeroed,
        nothing else changed); it then returns None."""


def all_finite(tensor: torch.Tensor) -> torch.Tensor:
    """0-d bool tensor on `tensor`'s device, False when any element is NaN or ±inf; no host sync.

    Tests the float32 sum, as DeepSpeed's own overflow check does: a NaN or inf anywhere makes the sum
    non-finite, and one reduction is cheaper than an elementwise mask (finite values summing past 3e38
    would count as non-finite, far beyond any usable gradient)."""
    return torch.isfinite(tensor.detach().sum(dtype=torch.float32))


class PlainEngine:
    """Engine over a plain module and a torch optimizer (single process, no DeepSpeed).

    A step whose accumulated loss or gradients hold a NaN or inf is skipped: the gradients are dropped,
    the optimizer is not called (weights and its state stay as they were), `skipped_steps` counts it."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float | None = 1.0):
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip {grad_clip} must be positive, or None to disable clipping")
        self.module, self.optimizer, self.grad_clip = module, optimizer, grad_clip
        self.skipped_steps = 0
        self._loss_flags: list[torch.Tensor] = []  # all_finite of every loss since the last step

    def backward(self, loss: torch.Tensor) -> None:
        self._loss_flags.append(all_finite(loss))
        loss.backward()

    def step(self) -> float | None:
        flags, self._loss_flags = self._loss_flags, []
        norm = None
        if self.grad_clip is not None:  # the total norm is non-finite exactly when a gradient is: reuse it
            norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.grad_clip)
            flags.append(torch.isfinite(norm))
        else:
            flags += [all_finite(p.grad) for p in self.module.parameters() if p.grad is not None]
        if flags and not bool(torch.stack(flags).all()):  # one host sync per step
            self.module.zero_grad(set_to_none=True)  # clipping by a NaN norm poisoned them: dropped either way
            self.skipped_steps += 1
            return None
        norm = None if norm is None else float(norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm


def _device(network: nn.Module) -> torch.device:
    return next(network.parameters()).device


def score_views(
    network: nn.Module, batch: RolloutBatch, views: MaskedViews, rows: torch.Tensor, *, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the K copies of `rows` [b] laid side by side: (ℓ [b, K·T], loss positions [b, K·T])."""
    K, b, T = views.num_copies, int(rows.numel()), batch.seq_len
    device = _device(network)
    ids = views.input_ids[:, rows].reshape(K * b, T).to(device)  # [K·b, T], copy-major
    positions = views.loss_mask[:, rows].reshape(K * b, T).to(device)  # [K·b, T]
    attention = batch.attention_mask[rows].repeat(K, 1).to(device)  # [K·b, T]
    targets = batch.input_ids[rows].repeat(K, 1).to(device)  # [K·b, T]
    vocab = [batch.score_vocab[r] for r in rows.tolist()] * K
    logp = token_logprobs(network, ids, attention, targets, positions, vocab, chunk_size=chunk_size)  # [K·b, T]
    side_by_side = logp.view(K, b, T).permute(1, 0, 2).reshape(b, K * T)  # [b, K·T]
    loss_mask = positions.view(K, b, T).permute(1, 0, 2).reshape(b, K * T)  # [b, K·T]
    return side_by_side, loss_mask


def unigrpo_update(
    engine: Engine,
    ref_network: nn.Module | None,
    batch: RolloutBatch,
    advantages: torch.Tensor,  # [B]
    cfg: AlgoConfig,
    *,
    step: int,
    run_seed: int,
    micro_batch_size: int,
    num_sequences_global: int | None = None,
    mask_token_id: int | None = None,
    sequence_mask: torch.Tensor | None = None,  # [B] bool; default: batch.scorable()
) -> dict[str, float]:
    """μ masked copies, old/ref log-probs without grad, μ optimizer steps; returns summarized stats.

    The stats are `losses.summarize_stats` of all μ·(micro-batches) loss calls (raw sums kept, so a
    learner can all-reduce them across ranks and summarize again) plus `grad_norm` (mean over the μ
    steps) and `grad_norm_max` when the engine reports norms.
    """
    policy = engine.module  # `batch` was validated where it was built (RolloutBatch.from_sampler): trusted here
    B = batch.num_rows
    if B == 0:
        raise ValueError("unigrpo_update: the batch has no rows")
    if tuple(advantages.shape) != (B,):
        raise ValueError(f"advantages has shape {tuple(advantages.shape)}, need [{B}] (one per row)")
    if not bool(torch.isfinite(advantages).all()):
        raise ValueError(f"advantages contain non-finite values at rows "
                         f"{(~torch.isfinite(advantages)).nonzero().flatten().tolist()}")
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size {micro_batch_size} is not a positive integer")
    normalizer = B if num_sequences_global is None else int(num_sequences_global)
    if normalizer < B:
        raise ValueError(f"num_sequences_global {normalizer} is smaller than this shard's {B} rows")
    if cfg.beta > 0 and ref_network is None:
        raise ValueError(f"beta = {cfg.beta} needs a reference network; pass ref_network or set algo.beta = 0")
    if mask_token_id is None:
        mask_token_id = getattr(getattr(policy, "config", None), "mask_token_id", None)
        if mask_token_id is None:
            raise ValueError("mask_token_id: the policy has no config.mask_token_id; pass mask_token_id=")
    rows_ok = batch.scorable() if sequence_mask is None else sequence_mask.to(torch.bool)  # [B]
    if tuple(rows_ok.shape) != (B,):
        raise ValueError(f"sequence_mask has shape {tuple(rows_ok.shape)}, need [{B}]")

    views = [build_views(batch, cfg, iteration=n, step=step, run_seed=run_seed, mask_token_id=mask_token_id)
             for n in range(1, cfg.mu + 1)]  # μ × MaskedViews
    micro: Sequence[torch.Tensor] = torch.arange(B).split(micro_batch_size)  # each [≤ micro_batch_size]
    chunk = cfg.logprob_chunk_size
    device = _device(policy)

    old_logp: dict[tuple[int, int], torch.Tensor] = {}  # (n, micro index) -> [b, K·T]
    ref_logp: dict[tuple[int, int], torch.Tensor] = {}
    with torch.no_grad():
        for n in range(2, cfg.mu + 1):  # π_old = the weights before any step of this update
            for m, rows in enumerate(micro):
                old_logp[n, m] = score_views(policy, batch, views[n - 1], rows, chunk_size=chunk)[0]
        if ref_network is not None:
            with adapters_disabled(ref_network):  # with LoRA the reference may be the policy itself, adapters off
                for n in range(1, cfg.mu + 1):
                    for m, rows in enumerate(micro):
                        ref_logp[n, m] = score_views(ref_network, batch, views[n - 1], rows,
                                                     chunk_size=chunk)[0].to(device)

    parts: list[dict[str, float]] = []
    norms: list[float] = []
    for n in range(1, cfg.mu + 1):
        for m, rows in enumerate(micro):
            logp, loss_mask = score_views(policy, batch, views[n - 1], rows, chunk_size=chunk)  # [b, K·T] each
            old = logp.detach() if n == 1 else old_logp.pop((n, m))
            loss, stats = policy_loss(
                logp, old, ref_logp.pop((n, m), None), advantages[rows].to(device), loss_mask,
                clip_eps=cfg.clip_eps, beta=cfg.beta, kl=cfg.kl.estimator, normalizer=normalizer,
                sequence_mask=rows_ok[rows].to(device), mask_ratio=views[n - 1].mask_ratio[rows],
            )
            engine.backward(loss)
            parts.append(stats)
        norm = engine.step()
        if norm is not None:
            norms.append(float(norm))
    summary = summarize_stats(reduce_stats(parts), num_steps=cfg.mu)
    if norms:
        summary["grad_norm"] = sum(norms) / len(norms)
        summary["grad_norm_max"] = max(norms)
    return summary
