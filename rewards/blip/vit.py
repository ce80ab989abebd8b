"""BLIP's vision transformer (the `visual_encoder` of ImageReward-v1.0), in plain PyTorch.

Same computation and parameter names as `ImageReward/models/BLIP/vit.py` (itself timm's ViT): a 16×16
patch convolution, a class token, learned absolute position embeddings, pre-norm blocks with a fused
`qkv` projection, exact (erf) GELU, LayerNorm eps 1e-6, and a final LayerNorm; the output is every token's
state (class token first), which the text encoder cross-attends to.

Deviations from upstream, none of which changes a number at inference:
- attention runs through `scaled_dot_product_attention` (same math, no probability tensor kept);
- no dropout, drop-path, gradient checkpointing or attention-map hooks (scoring only);
- the sizes are constructor arguments instead of the `'base'|'large'` switch; `VisionConfig.from_state_dict`
  reads them from the weight shapes (ImageReward uses ViT-L/16 at 224 px: width 1024, depth 24, 16 heads).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

HEAD_DIM = 64  # both BLIP ViT sizes (base 768/12 heads, large 1024/16 heads) use 64-wide heads


@dataclass(frozen=True)
class VisionConfig:
    """Geometry of a BLIP ViT; the defaults are ImageReward-v1.0's ViT-L/16 at 224 px."""

    image_size: int = 224  # input side in pixels (square)
    patch_size: int = 16  # side of one patch in pixels
    width: int = 1024  # token width
    depth: int = 24  # number of transformer blocks
    num_heads: int = 16  # attention heads per block
    mlp_ratio: float = 4.0  # MLP hidden width / token width
    layer_norm_eps: float = 1e-6  # eps of every LayerNorm

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size: {self.image_size} is not a multiple of patch_size {self.patch_size}; "
                "the patch grid must tile the image"
            )
        if self.width % self.num_heads:
            raise ValueError(f"width: {self.width} is not divisible by num_heads {self.num_heads}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def from_state_dict(cls, weights: dict[str, torch.Tensor], prefix: str, source: str) -> VisionConfig:
        """Read the geometry off the weight shapes under `prefix` (e.g. "blip.visual_encoder.").

        Heads are not visible in shapes; BLIP's ViTs all use 64-wide heads, so num_heads = width / 64.
        `source` names the file in error messages.
        """
        patch_key, pos_key = f"{prefix}patch_embed.proj.weight", f"{prefix}pos_embed"
        for key in (patch_key, pos_key):
            if key not in weights:
                raise ValueError(f"{source}: missing key {key!r}; expected an ImageReward state dict")
        width, channels, patch_size, patch_size_w = weights[patch_key].shape  # [D, 3, P, P]
        if channels != 3 or patch_size != patch_size_w:
            raise ValueError(
                f"{source}: {patch_key} has shape {tuple(weights[patch_key].shape)}; expected [width, 3, P, P]"
            )
        num_tokens = weights[pos_key].shape[1]  # [1, 1 + N, D]
        grid = round((num_tokens - 1) ** 0.5)
        if grid * grid != num_tokens - 1:
            raise ValueError(
                f"{source}: {pos_key} has {num_tokens} positions; expected 1 + a square number of patches"
            )
        block_prefix = f"{prefix}blocks."
        block_ids = {int(k[len(block_prefix) :].split(".")[0]) for k in weights if k.startswith(block_prefix)}
        if not block_ids or block_ids != set(range(len(block_ids))):
            raise ValueError(
                f"{source}: blocks under {block_prefix!r} are {sorted(block_ids)}; expected 0..depth-1"
            )
        if width % HEAD_DIM:
            raise ValueError(f"{source}: vision width {width} is not a multiple of the head width {HEAD_DIM}")
        return cls(
            image_size=grid * patch_size,
            patch_size=patch_size,
            width=width,
            depth=len(block_ids),
            num_heads=width // HEAD_DIM,
        )


class Attention(nn.Module):
    def __init__(self, width: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape  # [B, N, D]
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, width // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, N, D/H]
        out = F.scaled_dot_product_attention(q, k, v)  # [B, H, N, D/H]
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, width))  # [B, N, D]


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg.width, cfg.num_heads)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)
        self.mlp = Mlp(cfg.width, int(cfg.width * cfg.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.proj(pixels).flatten(2).transpose(1, 2)  # [B, 3, S, S] -> [B, N, D]


class VisionTransformer(nn.Module):
    """pixels [B, 3, S, S] (normalised) -> token states [B, 1 + N, D] (class token first)."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.config = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches + 1, cfg.width))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.layer_norm_eps)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixels)  # [B, N, D]
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # [B, 1, D]
        x = torch.cat([cls, x], dim=1) + self.pos_embed  # [B, 1 + N, D]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)  # [B, 1 + N, D]
