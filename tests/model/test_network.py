"""The backbone against an independent forward pass written here from the published formulas.

The reference (float64, plain tensor ops, weights read by published key name) implements
models.md §1: RMSNorm x/sqrt(mean(x^2)+eps)*w; RoPE over the whole head with rotate_half and
inv_freq theta^(-2j/hd), positions 0..T-1; attention as an explicit softmax of q.k^T/sqrt(hd) with
padded keys removed, key/value head of query head h = h // (H/Hkv); FFN ff_out(silu(ff_proj h) *
up_proj h); untied head. The model under test is loaded through model.load from a checkpoint
written by hand in the published layout (2 shards + index, tests/model/conftest.py).
"""

from __future__ import annotations

import math

import pytest
import torch

import model
from model.network import KVCache
from model.tiny import INIT_STD, tiny_backbone, tiny_mmada_model, tiny_model

TOLERANCE = 1e-5  # max |logit difference| between the fp32 model and the reference


def reference_logits(state: dict, fields: dict, input_ids: torch.Tensor, attention_mask=None) -> torch.Tensor:
    """float64 logits [B, T, V] for input_ids [B, T] and attention_mask [B, T] (1 = real token)."""

    def weight(name: str) -> torch.Tensor:
        return state[f"model.transformer.{name}"].double()

    d, heads, layers = fields["d_model"], fields["n_heads"], fields["n_layers"]
    kv_heads = fields.get("n_kv_heads") or heads
    head_dim, eps, theta = d // heads, fields["rms_norm_eps"], fields["rope_theta"]
    batch, length = input_ids.shape
    keep = torch.ones(batch, length, dtype=torch.bool) if attention_mask is None else attention_mask.bool()

    def rms_norm(x, w):  # x [B, T, d]
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w

    j = torch.arange(head_dim // 2, dtype=torch.float64)
    inv_freq = theta ** (-2.0 * j / head_dim)  # [hd/2]
    angle = torch.arange(length, dtype=torch.float64)[:, None] * inv_freq[None, :]  # [T, hd/2]
    cos = torch.cat([angle.cos(), angle.cos()], dim=-1)  # [T, hd]
    sin = torch.cat([angle.sin(), angle.sin()], dim=-1)

    def rope(x):  # [B, T, h, hd]: x*cos + rotate_half(x)*sin
        first, second = x[..., : head_dim // 2], x[..., head_dim // 2 :]
        rotate_half = torch.cat([-second, first], dim=-1)
        return x * cos[None, :, None, :] + rotate_half * sin[None, :, None, :]

    x = weight("wte.weight")[input_ids]  # [B, T, d]
    for i in range(layers):
        block = f"blocks.{i}."
        h = rms_norm(x, weight(block + "attn_norm.weight"))
        q = rope((h @ weight(block + "q_proj.weight").T).view(batch, length, heads, head_dim))
        k = rope((h @ weight(block + "k_proj.weight").T).view(batch, length, kv_heads, head_dim))
        v = (h @ weight(block + "v_proj.weight").T).view(batch, length, kv_heads, head_dim)
        head_outputs = []
        for head in range(heads):
            kv = head // (heads // kv_heads)
            scores = q[:, :, head] @ k[:, :, kv].transpose(1, 2) / math.sqrt(head_dim)  # [B, T, T]
            scores = scores.masked_fill(~keep[:, None, :], float("-inf"))
            probs = torch.exp(scores - scores.max(-1, keepdim=True).values)
            probs = probs / probs.sum(-1, keepdim=True)
            head_outputs.append(probs @ v[:, :, kv])  # [B, T, hd]
        x = x + torch.cat(head_outputs, dim=-1) @ weight(block + "attn_out.weight").T
        h = rms_norm(x, weight(block + "ff_norm.weight"))
        gate = h @ weight(block + "ff_proj.weight").T
        x = x + (gate / (1 + torch.exp(-gate)) * (h @ weight(block + "up_proj.weight").T)) @ weight(
            block + "ff_out.weight"
        ).T
    return rms_norm(x, weight("ln_f.weight")) @ weight("ff_out.weight").T


def random_ids(batch: int, length: int, vocab: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def test_logits_match_reference_on_sharded_checkpoint(published_checkpoint):
    directory, fields, state = published_checkpoint
    loaded = model.load(directory, tokenizer=False)
    ids = random_ids(2, 12, fields["vocab_size"], seed=1)
    with torch.no_grad():
        logits = loaded.network(ids)
    expected = reference_logits(state, fields, ids)
    assert logits.dtype == torch.float32 and logits.shape == (2, 12, fields["vocab_size"])
    assert expected.abs().max() > 1.0  # the logits are not trivially small
    assert max_diff(logits, expected) <= TOLERANCE


def test_left_padding_matches_reference_at_real_positions(published_checkpoint):
    directory, fields, state = published_checkpoint
    network = model.load(directory, tokenizer=False).network
    full = random_ids(1, 10, fields["vocab_size"], seed=2)
    short = random_ids(1, 6, fields["vocab_size"], seed=3)
    pad = fields["pad_token_id"]
    ids = torch.cat([full, torch.cat([torch.full((1, 4), pad), short], dim=1)])  # [2, 10]
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, :4] = False
    with torch.no_grad():
        logits = network(ids, mask)
    expected = reference_logits(state, fields, ids, mask)
    real = mask[:, :, None].expand_as(logits)
    assert max_diff(logits[real], expected[real]) <= TOLERANCE
    # RoPE sees only relative offsets: the padded row's real tokens score as if unpadded.
    unpadded = reference_logits(state, fields, short)
    assert max_diff(logits[1, 4:], unpadded[0]) <= TOLERANCE
    # and padding changes nothing for the unpadded row
    assert max_diff(logits[0], reference_logits(state, fields, full)[0]) <= TOLERANCE


def test_grouped_query_attention_matches_reference(tmp_path, layout):
    fields = layout.published_config(n_heads=4, n_kv_heads=2)
    state = layout.random_state_dict(fields, seed=5)
    network = model.load(layout.write_checkpoint(tmp_path / "gqa", fields, state), tokenizer=False).network
    assert network.transformer.blocks[0].k_proj.weight.shape == (32, 64)  # 2 kv heads x 16
    ids = random_ids(2, 9, fields["vocab_size"], seed=6)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, :3] = False
    with torch.no_grad():
        logits = network(ids, mask)
    expected = reference_logits(state, fields, ids, mask)
    real = mask[:, :, None].expand_as(logits)
    assert max_diff(logits[real], expected[real]) <= TOLERANCE


def test_bf16_runs_and_is_close_to_fp32(published_checkpoint):
    directory, fields, state = published_checkpoint
    network = model.load(directory, dtype=torch.bfloat16, tokenizer=False).network
    ids = random_ids(2, 12, fields["vocab_size"], seed=7)
    with torch.no_grad():
        logits = network(ids)
    expected = reference_logits(state, fields, ids)
    assert logits.dtype == torch.bfloat16
    # bf16 keeps 8 mantissa bits: errors of a few percent of the logit scale, never more.
    assert max_diff(logits, expected) <= 0.05 * expected.abs().max().item()
    assert (logits.double().argmax(-1) == expected.argmax(-1)).float().mean() >= 0.9


def test_hidden_states_then_lm_head_equals_forward_and_none_mask_equals_all_ones():
    network = tiny_model(seed=1).network
    ids = random_ids(2, 8, network.config.vocab_size, seed=8)
    with torch.no_grad():
        logits = network(ids)
        assert torch.equal(network.lm_head(network.hidden_states(ids)), logits)
        assert torch.equal(network(ids, torch.ones(2, 8, dtype=torch.long)), logits)
        subset = network.lm_head(network.hidden_states(ids)[:, 5:])  # logits at the last 3 positions only
    assert max_diff(subset, logits[:, 5:]) <= 1e-6  # same math, another GEMM blocking


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    ids = random_ids(2, 8, 600, seed=9)

    def loss_and_grads(checkpointing: bool):
        network = tiny_model(seed=2).network.train()
        network.gradient_checkpointing = checkpointing
        loss = network(ids).float().logsumexp(-1).mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in network.named_parameters()}

    plain_loss, plain_grads = loss_and_grads(False)
    ckpt_loss, ckpt_grads = loss_and_grads(True)
    assert torch.equal(plain_loss, ckpt_loss)
    for name, grad in plain_grads.items():
        assert torch.allclose(grad, ckpt_grads[name], atol=1e-7), name


@pytest.mark.parametrize("n_kv_heads", [None, 2])
def test_kv_cache_span_forward_equals_the_full_forward_on_an_unchanged_sequence(n_kv_heads):
    # Nothing changed since the cache was filled, so a span read against it is exact (float64: only the
    # GEMM blocking differs). Left padding on row 0; grouped-query heads when n_kv_heads=2.
    network = tiny_backbone(50, d_model=32, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, mlp_hidden_size=48,
                            mask_token_id=1, eos_token_id=2, seed=3).double().eval()
    ids = random_ids(2, 12, 50, seed=4)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[0, :3] = False
    with torch.no_grad():
        full = network.hidden_states(ids, mask)  # [2, 12, d]
        cache = KVCache()
        assert torch.equal(network.hidden_states(ids, mask, kv_cache=cache), full)  # filling changes nothing
        assert cache.length == 12 and len(cache.layers) == 2
        assert cache.layers[0][0].shape == (2, n_kv_heads or 4, 12, 8)
        for start, end in ((5, 12), (5, 9), (11, 12)):  # a prefix-cache span, a dual-cache block, one position
            span = network.hidden_states(ids[:, start:end], mask, kv_cache=cache, start=start)
            assert max_diff(span, full[:, start:end]) <= 1e-12, (start, end)


def test_kv_cache_span_reads_its_fresh_tokens():
    # In a 1-layer network a position's keys/values depend on its own token only, so after the span's tokens
    # change, the cache outside the span is still exact and a span forward equals the full forward of the new
    # sequence there (and not that of the old one: the span's own keys/values were recomputed).
    network = tiny_backbone(50, d_model=32, n_layers=1, n_heads=4, mlp_hidden_size=48, mask_token_id=1,
                            eos_token_id=2, seed=5).double().eval()
    old = random_ids(1, 10, 50, seed=6)
    new = old.clone()
    new[0, 4:7] = torch.tensor([11, 12, 13])
    with torch.no_grad():
        cache = KVCache()
        network.hidden_states(old, kv_cache=cache)
        span = network.hidden_states(new[:, 4:7], kv_cache=cache, start=4)  # [1, 3, d]
        assert max_diff(span, network.hidden_states(new)[:, 4:7]) <= 1e-12
        assert max_diff(span, network.hidden_states(old)[:, 4:7]) > 1e-3


def test_kv_cache_misuse_is_refused():
    network = tiny_backbone(50, d_model=32, n_layers=1, n_heads=4, mlp_hidden_size=48, mask_token_id=1,
                            eos_token_id=2)
    ids = random_ids(1, 10, 50, seed=1)
    with pytest.raises(ValueError, match="start=3 needs a kv_cache filled by a full forward"):
        network.hidden_states(ids[:, 3:], start=3)
    with pytest.raises(ValueError, match=r"positions \[3, 10\) are outside the cached \[0, 0\)"):
        network.hidden_states(ids[:, 3:], kv_cache=KVCache(), start=3)
    cache = KVCache()
    network.hidden_states(ids[:, :8], kv_cache=cache)
    with pytest.raises(ValueError, match=r"positions \[3, 10\) are outside the cached \[0, 8\)"):
        network.hidden_states(ids[:, 3:], kv_cache=cache, start=3)


def test_sequence_longer_than_max_sequence_length_is_rejected():
    network = tiny_backbone(50, mask_token_id=1, eos_token_id=2, max_sequence_length=8)
    with pytest.raises(ValueError, match="sequence length 9 exceeds max_sequence_length=8"):
        network(torch.zeros(1, 9, dtype=torch.long))


# ------------------------------------------------------------------------------------------ tiny twins


def test_tiny_backbone_is_deterministic_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = tiny_backbone(100, mask_token_id=1, eos_token_id=2, seed=3).state_dict()
    assert torch.equal(torch.get_rng_state(), before)
    second = tiny_backbone(100, mask_token_id=1, eos_token_id=2, seed=3).state_dict()
    other = tiny_backbone(100, mask_token_id=1, eos_token_id=2, seed=4).state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not torch.equal(first["model.transformer.wte.weight"], other["model.transformer.wte.weight"])


def test_tiny_backbone_init_and_key_names(layout):
    network = tiny_backbone(
        600, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden_size=96, mask_token_id=588, eos_token_id=587
    )
    state = network.state_dict()
    fields = layout.published_config(n_kv_heads=2)
    assert {k: tuple(v.shape) for k, v in state.items()} == layout.published_shapes(fields)
    assert torch.equal(state["model.transformer.ln_f.weight"], torch.ones(64))
    assert torch.equal(state["model.transformer.blocks.1.attn_norm.weight"], torch.ones(64))
    wte = state["model.transformer.wte.weight"]
    assert abs(wte.std().item() - INIT_STD) < 0.001 and abs(wte.mean().item()) < 0.001
    assert network.config.pad_token_id == 587 and network.config.kv_heads == 2


def test_tiny_model_takes_its_sizes_and_ids_from_the_tokenizer():
    loaded = tiny_model(seed=0, d_model=32, n_layers=1, dtype=torch.bfloat16)
    tokenizer, config = loaded.tokenizer, loaded.config
    assert config.vocab_size == len(tokenizer) == 600 and config.d_model == 32 and config.n_layers == 1
    assert config.mask_token_id == tokenizer.convert_tokens_to_ids("<|mdm_mask|>")
    assert (config.bos_token_id, config.eos_token_id) == (tokenizer.bos_token_id, tokenizer.eos_token_id)
    assert config.pad_token_id == tokenizer.pad_token_id == config.eos_token_id
    assert loaded.network.transformer.wte.weight.dtype == torch.bfloat16
    assert loaded.network(torch.tensor([[1, 2, 3]])).shape == (1, 3, 600)


def test_tiny_mmada_model_appends_the_codebook_after_the_text_vocabulary():
    loaded = tiny_mmada_model(codebook_size=32, num_vq_tokens=16)
    text_vocab = len(loaded.tokenizer)
    config = loaded.config
    assert config.model_type == "mmada" and config.vocab_size == config.num_embeddings == text_vocab + 32
    assert config.mmada == {
        "new_vocab_size": text_vocab + 32,
        "llm_vocab_size": text_vocab,
        "codebook_size": 32,
        "num_vq_tokens": 16,
        "num_new_special_tokens": 0,
    }
    last_image_code = text_vocab + 31
    assert loaded.network(torch.tensor([[last_image_code]])).shape == (1, 1, text_vocab + 32)
