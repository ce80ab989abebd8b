"""The LLaDA / MMaDA backbone: a bidirectional LLaMA-style mask predictor.

The module tree reproduces the published parameter names exactly
(`model.transformer.wte.weight`, `model.transformer.blocks.{i}.q_proj.weight`, ...), so a
published checkpoint's state dict loads with `strict=True` and a state dict we save loads back
into the upstream code. Forward math (docs/models.md §1.3):

    x = wte(ids)
    per block:  x += attn_out(SDPA(RoPE(q), RoPE(k), v))      on RMSNorm(x), bidirectional
                x += ff_out(SiLU(ff_proj(h)) * up_proj(h))     on h = RMSNorm(x)
    logits = ff_out(ln_f(x))                                    untied head, no logit scaling

Deviations from the upstream code, on purpose:
- Padding is a key mask on a *bidirectional* base. (The copy vendored in the MMaDA repository adds
  it to a causal base; that is a bug, not the model.)
- No dropout, no flash/fused paths: SDPA picks the kernel.
- An optional block KV cache for the sampler (`KVCache`; the learner never passes one): a full forward
  fills it, and a forward of a span of positions attends over the cached keys/values of every other
  position. Bidirectional attention makes that an approximation (the cached entries go stale as tokens
  are revealed); docs/sampling.md says when it is exact and what it costs in accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

MODEL_TYPES = ("llada", "mmada")


@dataclass(frozen=True)
class BackboneConfig:
    """Architecture fields, named as in the upstream `config.json`."""

    d_model: int
    n_heads: int
    n_layers: int
    mlp_hidden_size: int
    vocab_size: int
    n_kv_heads: int | None = None
    embedding_size: int | None = None
    max_sequence_length: int = 4096
    rope_theta: float = 500000.0
    rms_norm_eps: float = 1e-5
    mask_token_id: int = 126336
    eos_token_id: int = 126081
    pad_token_id: int = 126081
    bos_token_id: int | None = 126080  # None: the checkpoint names none (model/checkpoint.py resolves it)
    model_type: str = "llada"
    # MMaDA only (None for LLaDA): new_vocab_size, llm_vocab_size, codebook_size, num_vq_tokens, ...
    mmada: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not supported; expected one of {MODEL_TYPES}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not divisible by n_kv_heads={self.kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head size {self.head_dim} must be even for rotary embeddings")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def num_embeddings(self) -> int:
        """Rows of `wte` and `ff_out` (upstream pads the vocabulary to `embedding_size`)."""
        return self.embedding_size or self.vocab_size


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) in fp32, cast back to the input dtype, then times the weight."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., d] -> [..., d]
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))  # fp32, or fp64 for fp64 weights
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rotary_tables(seq_len: int, head_dim: int, theta: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 (cos, sin), each [T, head_dim], half-rotation layout (frequencies repeated, not interleaved)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    positions = torch.arange(seq_len, device=device, dtype=torch.float32)
    freqs = torch.outer(positions, inv_freq)  # [T, hd/2]
    angles = torch.cat((freqs, freqs), dim=-1)  # [T, hd]
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, H, T, hd] rotated in fp32 (fp64 for fp64 inputs) and cast back: x*cos + rotate_half(x)*sin."""
    x32 = x.to(torch.promote_types(x.dtype, torch.float32))
    x1, x2 = x32.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x32 * cos + rotated * sin).to(x.dtype)


class KVCache:
    """Keys and values of every layer for one batch of sequences: `layers[i] = (keys, values)`, each
    [B, Hkv, T, hd] in the network's dtype, after RoPE, before grouped-query heads are repeated.

    Empty until a full forward (`hidden_states(ids, mask, kv_cache=cache)`) fills it; a span forward
    (`start > 0` or fewer than T ids) writes its fresh keys/values into the span and reads the rest.
    """

    def __init__(self):
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def length(self) -> int:
        """T, the number of positions cached (0 when empty)."""
        return int(self.layers[0][0].shape[2]) if self.layers else 0


class Block(nn.Module):
    """One LLaMA-style block with the upstream parameter names."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        d, hd = cfg.d_model, cfg.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, hd
        self.attn_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.q_proj = nn.Linear(d, cfg.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(d, cfg.kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, cfg.kv_heads * hd, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.ff_proj = nn.Linear(d, cfg.mlp_hidden_size, bias=False)
        self.up_proj = nn.Linear(d, cfg.mlp_hidden_size, bias=False)
        self.ff_out = nn.Linear(cfg.mlp_hidden_size, d, bias=False)

    def forward(self, x, cos, sin, key_mask, cache=None, start=0):
        # x [B, T, d] at positions [start, start+T); cos/sin [T, hd]; key_mask [B, 1, 1, T_keys] bool
        # (True = attend) or None; cache: this layer's (keys, values) [B, Hkv, T_keys, hd], written in place
        B, T, _ = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, hd]
        k = self.k_proj(h).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, T, hd]
        v = self.v_proj(h).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            keys, values = cache
            keys[:, :, start : start + T] = k
            values[:, :, start : start + T] = v
            if T != keys.shape[2]:  # a span: attend over every cached position (a full forward uses k, v as is)
                k, v = keys, values  # [B, Hkv, T_keys, hd]
        if self.n_kv_heads != self.n_heads:
            k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
        att = self.attend(q, k, v, key_mask)  # [B, H, T, hd]
        x = x + self.attn_out(att.transpose(1, 2).reshape(B, T, -1))
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))

    def attend(self, q, k, v, key_mask):
        """Bidirectional attention of q [B, H, Tq, hd] over k, v [B, H, Tk, hd] -> [B, H, Tq, hd]."""
        return F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, is_causal=False)


class Transformer(nn.Module):
    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.wte = nn.Embedding(cfg.num_embeddings, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = RMSNorm(cfg.d_model, cfg.rms_norm_eps)
        self.ff_out = nn.Linear(cfg.d_model, cfg.num_embeddings, bias=False)


class _Inner(nn.Module):
    """Holds `transformer` so that keys read `model.transformer.*` as in the published files."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.transformer = Transformer(cfg)


class MaskedDiffusionLM(nn.Module):
    """`network(input_ids [B,T], attention_mask [B,T] | None) -> logits [B,T,V]`.

    attention_mask: 1/True for real tokens, 0/False for padding. Positions are 0..T-1 whatever the
    padding (as upstream); RoPE depends only on relative offsets, so left padding does not change
    the logits of the real tokens.
    """

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.config = cfg
        self.model = _Inner(cfg)
        self.gradient_checkpointing = False

    @property
    def transformer(self) -> Transformer:
        return self.model.transformer

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                      kv_cache: KVCache | None = None, start: int = 0) -> torch.Tensor:
        """Final normed hidden states [B, T, d] (the input of the LM head).

        kv_cache (sampler only): with `start == 0`, input_ids is the whole sequence [B, T] and the cache is
        (re)filled with its keys/values; with `start > 0`, input_ids [B, Tq] are the tokens at positions
        [start, start+Tq) of a filled cache, the hidden states are theirs only, and every other position's
        keys/values come from the cache. attention_mask is always [B, T] over the whole sequence.
        """
        tr = self.model.transformer
        B, Tq = input_ids.shape
        T = Tq if kv_cache is None or start == 0 else kv_cache.length
        if kv_cache is None and start:
            raise ValueError(f"start={start} needs a kv_cache filled by a full forward")
        if kv_cache is not None and start and not 0 < start <= start + Tq <= T:
            raise ValueError(f"positions [{start}, {start + Tq}) are outside the cached [0, {T}) (kv_cache.length "
                             f"{T}; fill it with a full forward at start=0)")
        if T > self.config.max_sequence_length:
            raise ValueError(f"sequence length {T} exceeds max_sequence_length={self.config.max_sequence_length}")
        x = tr.wte(input_ids)  # [B, Tq, d]
        cos, sin = rotary_tables(T, self.config.head_dim, self.config.rope_theta, input_ids.device)  # [T, hd]
        cos, sin = cos[start : start + Tq], sin[start : start + Tq]  # [Tq, hd]
        key_mask = None
        if attention_mask is not None:
            key_mask = attention_mask.to(torch.bool).view(B, 1, 1, T)
        if kv_cache is not None and start == 0:  # a full forward: buffers of this batch's shape (reused if equal)
            shape = (B, self.config.kv_heads, T, self.config.head_dim)
            if not kv_cache.layers or kv_cache.layers[0][0].shape != shape or kv_cache.layers[0][0].dtype != x.dtype:
                kv_cache.layers = [(x.new_empty(shape), x.new_empty(shape)) for _ in tr.blocks]
        for index, block in enumerate(tr.blocks):
            cache = None if kv_cache is None else kv_cache.layers[index]
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, cos, sin, key_mask, cache, start, use_reentrant=False)
            else:
                x = block(x, cos, sin, key_mask, cache, start)
        return tr.ln_f(x)

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., d] -> [..., V]; apply to a subset of positions to save memory on large vocabularies."""
        return self.model.transformer.ff_out(hidden)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.lm_head(self.hidden_states(input_ids, attention_mask))  # [B, T, V]
