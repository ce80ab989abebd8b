"""The masked-diffusion SFT objective (LLaDA paper §2.3 / its SFT guidelines): masking and loss.

For a batch of B (prompt, response) pairs, response i occupying the L_i positions R_i (its tokens, then EOS
padding up to the generation length; the padding is a target, so the model learns to stop):

    t_i ~ U(0, 1),   p_i = eps + (1 - eps) * t_i                     (mask ratio of sequence i)
    m_ij ~ Bernoulli(p_i) for j in R_i, m_ij = 0 on the prompt      (the prompt is never masked)
    x~_i = x_i with every m_ij = 1 position replaced by [MASK]
    loss = (1/B) * sum_i (1/L_i) * sum_{j in R_i, m_ij = 1} -log p_theta(x_ij | x~_i) / p_i

The 1/p_i weight makes it an upper bound of the response's negative log-likelihood (the ELBO); the 1/L_i
normaliser is LLaDA SFT's "answer length" normaliser. On n data-parallel ranks each rank computes
`sum over its rows / B` (B the global batch, `num_sequences_global`), so the ranks' losses add up to the loss
above (the learner group's normalisation, actors/learner.py).

Where the randomness lives: the caller draws (t_i, m_ij) with `mask_responses` from a generator seeded by
`mask_seed(run seed, step)`, so a step's masks do not depend on the number of ranks; the loss and the update
only compute. Plain PyTorch, like the rest of rl/; `sft_step` is what jobs.sft runs on every learner rank.
"""

from __future__ import annotations

import torch
from torch import nn

from rl.update import Engine


def mask_seed(run_seed: int, step: int) -> int:
    """Seed of step `step`'s mask draws: a pure function of (run seed, step), so resumes and rank counts agree."""
    return (run_seed * 1_000_003 + step) & 0x7FFF_FFFF_FFFF_FFFF


def mask_responses(input_ids: torch.Tensor, response_mask: torch.Tensor, *, mask_id: int, eps: float,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LLaDA's forward process on the response only.

    input_ids [B, T], response_mask [B, T] bool -> (noisy_ids [B, T], masked [B, T] bool,
    mask_ratio [B] float: p_i = eps + (1 - eps) t_i, t_i ~ U(0, 1)). Each response position is masked
    independently with probability p_i; prompt and padding positions never are. Draw order (t, then the
    [B, T] uniforms) is part of the contract: a seed fixes the masks.
    """
    t = torch.rand(input_ids.shape[0], generator=generator)  # [B]
    mask_ratio = eps + (1 - eps) * t  # [B]
    draws = torch.rand(input_ids.shape, generator=generator)  # [B, T]
    masked = (draws < mask_ratio[:, None]) & response_mask  # [B, T]
    return input_ids.masked_fill(masked, mask_id), masked, mask_ratio


def sft_objective(logits: torch.Tensor, input_ids: torch.Tensor, masked: torch.Tensor, mask_ratio: torch.Tensor,
                  response_mask: torch.Tensor, num_sequences_global: int) -> torch.Tensor:
    """The loss from the logits at the masked positions: sum_i (1/L_i) sum_{masked j} CE_ij / p_i, / B_global.

    Split from the forward pass so that it can be checked on hand-written logits.
    logits [n_masked, V] float, the rows of `masked` in row-major order (what `hidden[masked]` gives);
    input_ids [b, T] long (the clean targets); masked, response_mask [b, T] bool; mask_ratio [b] -> scalar.
    """
    token_ce = torch.nn.functional.cross_entropy(logits, input_ids[masked], reduction="none")  # [n_masked]
    response_length = response_mask.sum(1).to(torch.float32)  # [b] = L_i
    weight = 1.0 / (mask_ratio.to(torch.float32)[:, None] * response_length[:, None])  # [b, 1]
    token_weight = weight.expand_as(masked)[masked]  # [n_masked]
    return (token_ce * token_weight).sum() / num_sequences_global


def sft_loss(network: nn.Module, input_ids: torch.Tensor, noisy_ids: torch.Tensor, masked: torch.Tensor,
             mask_ratio: torch.Tensor, response_mask: torch.Tensor, attention_mask: torch.Tensor | None,
             num_sequences_global: int) -> torch.Tensor:
    """`sft_objective` of the network's prediction on the noisy ids (module docstring).

    input_ids, noisy_ids [b, T] long; masked, response_mask [b, T] bool; mask_ratio [b];
    attention_mask [b, T] bool or None. Logits are computed only at the masked positions (the LM head is
    the largest matmul, and only those positions are scored).
    """
    hidden = network.hidden_states(noisy_ids, attention_mask)  # [b, T, d]
    logits = network.lm_head(hidden[masked]).float()  # [n_masked, V]
    return sft_objective(logits, input_ids, masked, mask_ratio, response_mask, num_sequences_global)


def sft_update(engine: Engine, *, input_ids: torch.Tensor, noisy_ids: torch.Tensor, masked: torch.Tensor,
               mask_ratio: torch.Tensor, response_mask: torch.Tensor, attention_mask: torch.Tensor | None,
               num_sequences_global: int, micro_batch_size: int, device: torch.device) -> dict[str, float]:
    """One optimizer step on a (rank's) batch: backward per micro-batch of `micro_batch_size` rows, then one step.

    Tensors as in `sft_loss`, [b, ...] on any device (moved to `device` a micro-batch at a time). Returns this
    batch's share of the loss (the global loss is the sum over ranks) and its masked-token count.
    """
    network = engine.module
    total, rows = 0.0, torch.arange(input_ids.shape[0])  # rows [b]
    for part in rows.split(micro_batch_size):
        loss = sft_loss(network, input_ids[part].to(device), noisy_ids[part].to(device), masked[part].to(device),
                        mask_ratio[part].to(device), response_mask[part].to(device),
                        None if attention_mask is None else attention_mask[part].to(device), num_sequences_global)
        engine.backward(loss)
        total += float(loss.detach())
    engine.step()
    return {"loss": total, "masked_tokens": float(masked.sum())}


def sft_step(ctx, *, num_sequences_global: int, **batch: torch.Tensor | None) -> dict[str, float]:
    """On each learner rank (ctx: actors.learner.LearnerContext): `sft_update` on the rank's shard (jobs/sft_data.py
    `make_batch`'s tensors); returns the rank's share of the loss (summed over ranks) and its masked count. The
    learning rate is the learner's (`learner.lr` and its schedule, set by the learner group before the step)."""
    return sft_update(ctx.engine, **batch, num_sequences_global=num_sequences_global,
                      micro_batch_size=ctx.config.micro_batch_size, device=ctx.device)
