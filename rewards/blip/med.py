"""BLIP's "med" text encoder: BERT-base whose every layer also cross-attends to the image tokens.

Same computation and parameter names as `ImageReward/models/BLIP/med.py` (`BertModel(add_pooling_layer=False)`
called with `mode='multimodal'`): word + absolute position embeddings (no token-type embeddings), LayerNorm,
then per layer self-attention → add & LayerNorm → cross-attention to the image tokens (keys/values projected
from the vision width) → add & LayerNorm → GELU MLP → add & LayerNorm (post-norm, as BERT).

Deviations from upstream, none of which changes a number at inference:
- attention runs through `scaled_dot_product_attention` with a boolean key mask instead of adding −10000 to
  the scores of padding keys (both give those keys probability 0 in fp32, exp(−10000) underflows);
- no decoder mode, KV cache, head pruning, dropout, or relative position embeddings (ImageReward's config
  uses none of them; a config asking for them is rejected by `TextConfig.from_med_config`);
- the config is a small dataclass read from `med_config.json`, not transformers' `BertConfig`, so this file
  does not depend on a transformers version.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TextConfig:
    """BERT geometry from `med_config.json`; the defaults are ImageReward-v1.0's (BERT-base, 30524 tokens)."""

    vocab_size: int = 30524  # bert-base-uncased 30522 + [DEC] + [ENC]
    hidden_size: int = 768  # token width
    num_hidden_layers: int = 12  # layers, each with self- and cross-attention
    num_attention_heads: int = 12  # heads in both attentions
    intermediate_size: int = 3072  # MLP hidden width
    max_position_embeddings: int = 512  # rows of the position table
    layer_norm_eps: float = 1e-12  # eps of every LayerNorm
    pad_token_id: int = 0  # padding id of the word embedding
    encoder_width: int = 1024  # width of the image tokens (set from the ViT, as BLIP_Pretrain does)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size: {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}"
            )

    @classmethod
    def from_med_config(cls, path: Path, encoder_width: int) -> TextConfig:
        """Parse BLIP's med_config.json; `encoder_width` overrides the file's, as `BLIP_Pretrain` does."""
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read the med config: {exc}") from exc
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(raw).__name__}")
        checks = {
            "hidden_act": ("gelu",),
            "position_embedding_type": ("absolute",),
            "add_cross_attention": (True,),
        }
        for key, allowed in checks.items():
            if key in raw and raw[key] not in allowed:
                raise ValueError(
                    f"{path}: {key}={raw[key]!r} is not supported; ImageReward's encoder uses {allowed[0]!r}"
                )
        kwargs = {}
        for key in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "layer_norm_eps",
            "pad_token_id",
        ):
            if key not in raw:
                raise ValueError(f"{path}: missing key {key!r}; BLIP's med_config.json has it")
            value = raw[key]
            expected = float if key == "layer_norm_eps" else int
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or (expected is int and not isinstance(value, int))
            ):
                raise ValueError(f"{path}: {key}={value!r} must be a number ({expected.__name__})")
            kwargs[key] = expected(value)
        return cls(**kwargs, encoder_width=encoder_width)


class Embeddings(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # [T]
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)  # [B, T, D]
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    """Multi-head attention; keys/values come from `context` (the text itself or the image tokens)."""

    def __init__(self, cfg: TextConfig, context_width: int) -> None:
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(context_width, cfg.hidden_size)
        self.value = nn.Linear(context_width, cfg.hidden_size)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape  # [B, T, D]
        return x.view(batch, tokens, self.num_heads, width // self.num_heads).transpose(
            1, 2
        )  # [B, H, T, D/H]

    def forward(self, x: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        # x [B, T, D], context [B, S, C], key_mask [B, S] bool (True = attend) or None (all)
        q, k, v = self._heads(self.query(x)), self._heads(self.key(context)), self._heads(self.value(context))
        mask = None if key_mask is None else key_mask[:, None, None, :]  # [B, 1, 1, S]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0 / math.sqrt(q.shape[-1]))
        return out.transpose(1, 2).flatten(2)  # [B, T, D]


class AttentionOutput(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, attended: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(attended) + residual)


class Attention(nn.Module):
    """`self` + `output` submodules, as BERT names them (state-dict keys `attention.self.query.weight`...)."""

    def __init__(self, cfg: TextConfig, context_width: int) -> None:
        super().__init__()
        self.self = SelfAttention(cfg, context_width)
        self.output = AttentionOutput(cfg)

    def forward(self, x: torch.Tensor, context: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, context, key_mask), x)


class Intermediate(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class Output(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(hidden) + residual)


class Layer(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.attention = Attention(cfg, cfg.hidden_size)
        self.crossattention = Attention(cfg, cfg.encoder_width)
        self.intermediate = Intermediate(cfg)
        self.output = Output(cfg)

    def forward(self, x: torch.Tensor, text_mask: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, x, text_mask)  # [B, T, D]
        x = self.crossattention(x, image_tokens, None)  # every image token is attended
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))


class TextEncoder(nn.Module):
    """(input_ids [B, T], attention_mask [B, T], image_tokens [B, S, C]) -> token states [B, T, D]."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_tokens: torch.Tensor
    ) -> torch.Tensor:
        text_mask = attention_mask.bool()  # [B, T]
        x = self.embeddings(input_ids)  # [B, T, D]
        for layer in self.encoder.layer:
            x = layer(x, text_mask, image_tokens)
        return x  # [B, T, D]
