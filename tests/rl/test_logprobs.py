"""rl.logprobs.token_logprobs against log_softmax of the full logits (full vocabulary and column ranges)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rl.logprobs import token_logprobs


class IdsToLogits(nn.Module):
    """A plain module with only forward(ids, mask) -> logits (no hidden_states / lm_head)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, ids, mask):
        return self.network(ids, mask)


def reference(network, ids, mask, targets, positions, vocab):
    """log_softmax over the whole row of logits (or its column slice), gathered at the target."""
    logits = network(ids, mask).double()  # [R, T, V]
    out = torch.zeros(ids.shape, dtype=torch.float64)
    for r, c in positions.nonzero().tolist():
        lo, hi = vocab[r] if vocab[r] is not None else (0, logits.shape[-1])
        out[r, c] = torch.log_softmax(logits[r, c, lo:hi], dim=-1)[targets[r, c] - lo]
    return out


@pytest.fixture(scope="module")
def setup(kit):
    batch = kit.mixed_batch()
    ids = batch.input_ids.clone()
    ids[batch.scored_mask] = kit.MASK  # a fully masked copy
    return batch, ids


@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
def test_matches_log_softmax_full_vocab_and_image_columns(kit, setup, chunk_size):
    batch, ids = setup
    net = kit.tiny_net()
    got = token_logprobs(net, ids, batch.attention_mask, batch.input_ids, batch.scored_mask, batch.score_vocab,
                         chunk_size=chunk_size)
    want = reference(net, ids, batch.attention_mask, batch.input_ids, batch.scored_mask, batch.score_vocab)
    assert got.dtype == torch.float64  # fp64 weights are not downcast to fp32
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert (got[~batch.scored_mask] == 0).all()
    # the image rows really are normalised over the 15 image columns only: higher than over 48 columns
    full = reference(net, ids, batch.attention_mask, batch.input_ids, batch.scored_mask, [None] * 6)
    assert (got[4:][batch.scored_mask[4:]] > full[4:][batch.scored_mask[4:]]).all()


def test_low_precision_weights_are_scored_in_fp32(kit, setup):
    batch, ids = setup
    net = kit.tiny_net(dtype=torch.bfloat16)
    got = token_logprobs(net, ids, batch.attention_mask, batch.input_ids, batch.scored_mask, batch.score_vocab)
    assert got.dtype == torch.float32
    want = reference(net, ids, batch.attention_mask, batch.input_ids, batch.scored_mask, batch.score_vocab)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)  # same bf16 logits, fp32 vs fp64 lse


def test_gradient_matches_the_reference_and_plain_modules_work(kit, setup):
    batch, ids = setup
    net = kit.tiny_net()
    weights = torch.linspace(-1, 1, ids.numel(), dtype=torch.float64).view(ids.shape)
    grads = []
    for module, compute in ((net, token_logprobs), (IdsToLogits(net), token_logprobs), (net, None)):
        net.zero_grad()
        if compute is None:
            values = reference(net, ids, batch.attention_mask, batch.input_ids, batch.scored_mask, batch.score_vocab)
        else:
            values = compute(module, ids, batch.attention_mask, batch.input_ids, batch.scored_mask,
                             batch.score_vocab, chunk_size=5)
        (values * weights).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    torch.testing.assert_close(grads[0], grads[2], rtol=0, atol=1e-12)  # chunked + checkpointed == plain
    torch.testing.assert_close(grads[1], grads[2], rtol=0, atol=1e-12)  # ids -> logits fallback


def test_no_positions_gives_zeros_and_a_zero_gradient(kit, setup):
    batch, ids = setup
    net = kit.tiny_net()
    nothing = torch.zeros_like(batch.scored_mask)
    out = token_logprobs(net, ids, batch.attention_mask, batch.input_ids, nothing, batch.score_vocab)
    assert (out == 0).all()
    out.sum().backward()  # still connected to the graph, so an all-empty micro-batch can call backward
    assert all((p.grad == 0).all() for p in net.parameters())
    with torch.no_grad():
        assert (token_logprobs(net, ids, batch.attention_mask, batch.input_ids, nothing, batch.score_vocab) == 0).all()


def test_left_repadding_does_not_change_log_probs(kit):
    # concat shifted the t2i rows (width 12) right by 4 columns of padding; RoPE is relative and padding
    # is a key mask, so dropping those columns again gives the same log-probs
    t2i = kit.mixed_batch().split_by_group()[2]
    assert t2i.seq_len == 16 and not t2i.attention_mask[:, :4].any()
    net = kit.tiny_net()
    ids = t2i.input_ids.clone()
    ids[t2i.scored_mask] = kit.MASK
    wide = token_logprobs(net, ids, t2i.attention_mask, t2i.input_ids, t2i.scored_mask, t2i.score_vocab)
    cut = slice(4, None)
    narrow = token_logprobs(net, ids[:, cut], t2i.attention_mask[:, cut], t2i.input_ids[:, cut],
                            t2i.scored_mask[:, cut], t2i.score_vocab)
    # 1e-6, not 1e-12: model.network computes RoPE in fp32 even for fp64 weights
    torch.testing.assert_close(wide[:, cut], narrow, rtol=0, atol=1e-6)


def test_errors_name_the_problem(kit, setup):
    batch, ids = setup
    net = kit.tiny_net()
    args = (batch.attention_mask, batch.input_ids, batch.scored_mask)
    with pytest.raises(ValueError, match="need the same \\[R, T\\] shape"):
        token_logprobs(net, ids[:, 1:], *args, batch.score_vocab)
    with pytest.raises(ValueError, match="score_vocab has 2 entries for 6 rows"):
        token_logprobs(net, ids, *args, batch.score_vocab[:2])
    with pytest.raises(ValueError, match="chunk_size 0 is not a positive integer"):
        token_logprobs(net, ids, *args, batch.score_vocab, chunk_size=0)
    text_as_image = [(32, 47)] * 6
    with pytest.raises(ValueError, match="row 0, column 8: target id \\d+ is outside the scored vocabulary \\[32, 47\\)"):
        token_logprobs(net, ids, *args, text_as_image)
    too_big = batch.input_ids.clone()
    too_big[1, 9] = 99
    with pytest.raises(ValueError, match="row 1, column 9: target id 99 is outside the scored vocabulary \\[0, 48\\)"):
        token_logprobs(net, ids, batch.attention_mask, too_big, batch.scored_mask, batch.score_vocab)
