"""Per-token log-probs at selected positions, without a full-vocabulary fp32 log-softmax.

    ℓ(j) = logit_j[target_j] − logsumexp(logit_j[lo:hi])          (docs/algorithm.md §4.1)

over the full vocabulary (text: lo, hi = 0, V) or a column range (image codes). When the network exposes
`hidden_states` and `lm_head` (model.network.MaskedDiffusionLM), the head runs only on the selected
positions, in chunks of `chunk_size` tokens, and each chunk is upcast to fp32 (fp64 stays fp64) only for
its own gather and logsumexp. With gradients on, each chunk is checkpointed, so backward recomputes its
[chunk, V] logits instead of keeping every chunk's alive (vocabularies are 134k). A plain module that
only maps ids to logits is supported through one full forward (then the [B, T, V] logits exist once).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.utils.checkpoint
from torch import nn


def _chunk_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor, lo: int | None, hi: int | None,
                    compute_dtype: torch.dtype) -> torch.Tensor:
    """hidden [n, d] (or logits [n, V] with head=identity), targets [n] -> ℓ [n] in compute_dtype."""
    logits = head(hidden)  # [n, V]
    if lo is not None:
        logits = logits[:, lo:hi]  # [n, hi − lo]
        targets = targets - lo
    logits = logits.to(compute_dtype)
    picked = logits.gather(1, targets[:, None]).squeeze(1)  # [n]
    return picked - torch.logsumexp(logits, dim=-1)  # [n]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def token_logprobs(
    network: nn.Module,
    input_ids: torch.Tensor,  # [R, T] long: model input (masked copy)
    attention_mask: torch.Tensor | None,  # [R, T] bool
    targets: torch.Tensor,  # [R, T] long: the clean tokens whose log-prob is wanted
    positions: torch.Tensor,  # [R, T] bool: where to compute it
    score_vocab: Sequence[tuple[int, int] | None],  # per row: None = full vocabulary, (lo, hi) = columns
    *,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """ℓ [R, T] in max(fp32, weight dtype) at `positions`, 0 elsewhere; differentiable w.r.t. the network."""
    if not (input_ids.shape == targets.shape == positions.shape) or input_ids.dim() != 2:
        raise ValueError(f"input_ids {tuple(input_ids.shape)}, targets {tuple(targets.shape)} and positions "
                         f"{tuple(positions.shape)} need the same [R, T] shape")
    if len(score_vocab) != input_ids.shape[0]:
        raise ValueError(f"score_vocab has {len(score_vocab)} entries for {input_ids.shape[0]} rows")
    if chunk_size < 1:
        raise ValueError(f"chunk_size {chunk_size} is not a positive integer")
    rows, cols = positions.nonzero(as_tuple=True)  # [N], [N]
    if hasattr(network, "hidden_states") and hasattr(network, "lm_head"):
        features = network.hidden_states(input_ids, attention_mask)[rows, cols]  # [N, d]
        head = network.lm_head
    else:
        features = network(input_ids, attention_mask)[rows, cols]  # [N, V]
        head = _identity
    weight_dtype = next(network.parameters()).dtype
    compute_dtype = torch.promote_types(weight_dtype, torch.float32)
    chosen = targets[rows, cols]  # [N]
    ranges = list(dict.fromkeys(score_vocab))  # distinct ranges, first-seen order
    range_of_row = torch.tensor([ranges.index(v) for v in score_vocab], dtype=torch.long)  # [R]
    range_of_token = range_of_row[rows.cpu()]  # [N]
    with torch.no_grad():
        width = int(head(features[:0]).shape[-1])  # V, from a zero-row call of the head
    pieces, order = [], []
    for range_id, vocab in enumerate(ranges):
        index = (range_of_token == range_id).nonzero().flatten().to(chosen.device)  # [n_v]
        lo, hi = (None, None) if vocab is None else (int(vocab[0]), int(vocab[1]))
        wanted = chosen[index]  # [n_v]
        upper = width if hi is None else min(hi, width)
        bad = (wanted < (lo or 0)) | (wanted >= upper)
        if bad.any():
            i = int(index[bad.nonzero()[0, 0]])
            raise ValueError(f"row {int(rows[i])}, column {int(cols[i])}: target id {int(chosen[i])} is outside "
                             f"the scored vocabulary [{lo or 0}, {upper})")
        for part in index.split(chunk_size):  # [≤ chunk]
            args = (head, features[part], chosen[part], lo, hi, compute_dtype)
            if torch.is_grad_enabled() and features.requires_grad:
                values = torch.utils.checkpoint.checkpoint(_chunk_logprobs, *args, use_reentrant=False)
            else:
                values = _chunk_logprobs(*args)
            pieces.append(values)  # [≤ chunk]
            order.append(part)
    out = torch.zeros(input_ids.shape, dtype=compute_dtype, device=input_ids.device)  # [R, T]
    if not pieces:
        return out + 0 * features.sum() if features.requires_grad else out  # keep the graph connected
    flat = torch.cat(pieces)[torch.argsort(torch.cat(order))]  # [N], back in (row, col) order
    return out.index_put((rows, cols), flat)
