"""The MAGVIT-v2 network of Show-o / MMaDA: config, encoder, decoder and the lookup-free quantiser's code maths.

A fully convolutional VQ autoencoder (docs/models.md §4). The module tree reproduces the published
key names, so a published state dict loads with `strict=True`:

    encoder.conv_in                                   3x3, in_channels -> ch
    encoder.down.{l}.block.{b}.{norm1,conv1,norm2,conv2,nin_shortcut}
    encoder.down.{l}.downsample.conv                  after every level but the last (pad right/bottom 1, 3x3 stride 2)
    encoder.mid.{block_1,attn_1,block_2}              ResnetBlock, single-head attention, ResnetBlock
    encoder.{norm_out,conv_out,quant_conv}            GroupNorm, swish, 3x3 -> z_channels, 1x1 z -> z
    decoder.{post_quant_conv,conv_in}                 1x1 z -> z, 3x3 z -> ch * decoder_ch_mult[-1]
    decoder.mid.{block_1,attn_1,block_2}
    decoder.up.{l}.block.{b}.*                        run from the highest level l = L-1 down to 0
    decoder.up.{l}.upsample.conv                      after levels L-1 .. 1 (nearest x2, then 3x3)
    decoder.{norm_out,conv_out}                       GroupNorm, swish, 3x3 -> out_channels (no tanh, no clamp)
    quantize.embedding [2^bits, bits], quantize.power_vals [bits]   deterministic buffers (below)

LFQ with b = z_channels bits: a latent vector z [b] becomes z_q[c] = +1 if z[c] > 0 else -1 (0 -> -1), and
code = sum_c 2^(b-1-c) [z_q[c] > 0]: channel 0 is the most significant bit. Decoding code k gives bit c =
(k >> (b-1-c)) & 1 and the vector 2*bit - 1. `quantize.embedding[k]` is that vector and `quantize.power_vals`
the weights 2^(b-1-c), as stored upstream.

Unverified details (a published checkpoint's shapes would contradict them and the loader says so): the 3x3
kernels of conv_in / conv_out / downsample / upsample, the 1x1 kernels of quant_conv / post_quant_conv, and
the attention scale 1/sqrt(C) (taming's AttnBlock). Dropout is absent (inference only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

MAX_BITS = 62  # codes are int64


@dataclass(frozen=True)
class MagvitConfig:
    """Architecture of a MAGVIT-v2 tokenizer; the defaults are the published 13-bit, x16 model.

    Tiny twins shrink ch / levels / blocks / bits / num_groups, e.g. the shipped toy tokenizer
    MagvitConfig(ch=16, z_channels=6, encoder_ch_mult=(1, 2, 2), encoder_num_res_blocks=(1, 1, 1),
    decoder_ch_mult=(1, 2, 2), decoder_num_res_blocks=(1, 1, 1), num_groups=8): x4, 64 codes.
    """

    ch: int = 128
    in_channels: int = 3
    out_channels: int = 3
    z_channels: int = 13  # = bits per code
    encoder_ch_mult: tuple[int, ...] = (1, 2, 2, 4, 4)
    encoder_num_res_blocks: tuple[int, ...] = (4, 3, 4, 3, 4)
    decoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    decoder_num_res_blocks: tuple[int, ...] = (4, 4, 3, 4, 3)  # decoder_num_res_blocks[l] blocks at up.{l}
    num_groups: int = 32  # GroupNorm groups (upstream: 32)
    eps: float = 1e-6  # GroupNorm eps (upstream: 1e-6)

    def __post_init__(self):
        for name in ("encoder_ch_mult", "encoder_num_res_blocks", "decoder_ch_mult", "decoder_num_res_blocks"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not value or not all(_positive_int(v) for v in value):
                raise ValueError(f"MagvitConfig.{name}={value!r} must be a non-empty list of positive integers")
            object.__setattr__(self, name, tuple(value))
        for name in ("ch", "in_channels", "out_channels", "z_channels", "num_groups"):
            if not _positive_int(getattr(self, name)):
                raise ValueError(f"MagvitConfig.{name}={getattr(self, name)!r} must be a positive integer")
        if self.z_channels > MAX_BITS:
            raise ValueError(f"MagvitConfig.z_channels={self.z_channels}: at most {MAX_BITS} bits fit an int64 code")
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not self.eps > 0:
            raise ValueError(f"MagvitConfig.eps={self.eps!r} must be a positive number")
        for side in ("encoder", "decoder"):
            mult, blocks = getattr(self, f"{side}_ch_mult"), getattr(self, f"{side}_num_res_blocks")
            if len(mult) != len(blocks):
                raise ValueError(f"MagvitConfig: {side}_ch_mult has {len(mult)} levels but "
                                 f"{side}_num_res_blocks has {len(blocks)}; give one block count per level")
        if len(self.encoder_ch_mult) != len(self.decoder_ch_mult):
            raise ValueError(f"MagvitConfig: encoder has {len(self.encoder_ch_mult)} levels, decoder "
                             f"{len(self.decoder_ch_mult)}; they must agree so the decoder undoes the x{self.downsample}")
        for width in sorted({self.ch * m for m in self.encoder_ch_mult + self.decoder_ch_mult}):
            if width % self.num_groups:
                raise ValueError(f"MagvitConfig: num_groups={self.num_groups} does not divide the channel width "
                                 f"{width} (ch={self.ch} x a multiplier); pick num_groups dividing every width")

    @property
    def num_codes(self) -> int:
        """Codebook size 2^bits."""
        return 2 ** self.z_channels

    @property
    def downsample(self) -> int:
        """Pixels per code along each side: 2^(levels - 1)."""
        return 2 ** (len(self.encoder_ch_mult) - 1)

    def to_dict(self) -> dict:
        """Field -> value (tuples as lists), the form written to config.json."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


# ------------------------------------------------------------------------------------------ code maths


def bit_weights(bits: int, device=None) -> torch.Tensor:
    """[bits] long: 2^(bits-1-c), channel 0 the most significant bit (upstream's `power_vals`)."""
    return 2 ** torch.arange(bits - 1, -1, -1, dtype=torch.long, device=device)


def vectors_to_codes(vectors: torch.Tensor) -> torch.Tensor:
    """vectors [..., bits] (any real values; > 0 is bit 1) -> codes [...] long."""
    weights = bit_weights(vectors.shape[-1], vectors.device)  # [bits]
    return ((vectors > 0).long() * weights).sum(-1)


def codes_to_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes [...] integer -> bits [..., bits] long in {0, 1}, channel 0 the most significant."""
    shifts = torch.arange(bits - 1, -1, -1, dtype=torch.long, device=codes.device)  # [bits]
    return (codes.long().unsqueeze(-1) >> shifts) & 1


def codes_to_vectors(codes: torch.Tensor, bits: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """codes [...] -> vectors [..., bits] in {-1, +1} (2 * bit - 1)."""
    return (2 * codes_to_bits(codes, bits) - 1).to(dtype)


class LFQuantizer(nn.Module):
    """Holds the deterministic buffers of the published quantiser; no learned weights."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits
        self.register_buffer("embedding", codes_to_vectors(torch.arange(2**bits), bits))  # [2^bits, bits]
        self.register_buffer("power_vals", bit_weights(bits))  # [bits]

    def reset_buffers(self, device=None, dtype: torch.dtype = torch.float32) -> None:
        """Recompute the buffers on `device` (after building on the meta device)."""
        self.embedding = codes_to_vectors(torch.arange(2**self.bits, device=device), self.bits, dtype)
        self.power_vals = bit_weights(self.bits, device)


# ---------------------------------------------------------------------------------------------- blocks


def _norm(config: MagvitConfig, channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(config.num_groups, channels, eps=config.eps, affine=True)


class ResnetBlock(nn.Module):
    """norm1 -> swish -> conv1 3x3 -> norm2 -> swish -> conv2 3x3, plus x (1x1 nin_shortcut if widths differ)."""

    def __init__(self, config: MagvitConfig, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = _norm(config, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(config, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, Cin, H, W] -> [B, Cout, H, W]
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions with 1x1 q/k/v/proj_out, plus x."""

    def __init__(self, config: MagvitConfig, channels: int):
        super().__init__()
        self.norm = _norm(config, channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, C, H, W]
        b, c, h, w = x.shape
        normed = self.norm(x)
        q, k, v = (conv(normed).reshape(b, 1, c, h * w).transpose(2, 3) for conv in (self.q, self.k, self.v))
        attended = F.scaled_dot_product_attention(q, k, v)  # [B, 1, HW, C], softmax(q k^T / sqrt(C)) v
        return x + self.proj_out(attended.transpose(2, 3).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Pad right and bottom by one pixel, then a 3x3 stride-2 conv: [B, C, H, W] -> [B, C, H/2, W/2]."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2, then a 3x3 conv: [B, C, H, W] -> [B, C, 2H, 2W]."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _middle(config: MagvitConfig, channels: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(config, channels, channels)
    mid.attn_1 = AttnBlock(config, channels)
    mid.block_2 = ResnetBlock(config, channels, channels)
    return mid


def _run_middle(mid: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(x)))


class Encoder(nn.Module):
    """pixels [B, in_channels, H, W] -> latents [B, z_channels, H/ds, W/ds] (before the sign)."""

    def __init__(self, config: MagvitConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(config.in_channels, config.ch, 3, padding=1)
        self.down = nn.ModuleList()
        width = config.ch
        last = len(config.encoder_ch_mult) - 1
        for level, (mult, num_blocks) in enumerate(zip(config.encoder_ch_mult, config.encoder_num_res_blocks)):
            stage = nn.Module()
            stage.block = nn.ModuleList()
            for _ in range(num_blocks):
                stage.block.append(ResnetBlock(config, width, config.ch * mult))
                width = config.ch * mult
            if level != last:
                stage.downsample = Downsample(width)
            self.down.append(stage)
        self.mid = _middle(config, width)
        self.norm_out = _norm(config, width)
        self.conv_out = nn.Conv2d(width, config.z_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(config.z_channels, config.z_channels, 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(pixels)
        for stage in self.down:
            for block in stage.block:
                h = block(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = _run_middle(self.mid, h)
        h = self.conv_out(F.silu(self.norm_out(h)))
        return self.quant_conv(h)


class Decoder(nn.Module):
    """quantised latents [B, z_channels, h, w] -> pixels [B, out_channels, h*ds, w*ds], un-clamped."""

    def __init__(self, config: MagvitConfig):
        super().__init__()
        levels = len(config.decoder_ch_mult)
        width = config.ch * config.decoder_ch_mult[-1]
        self.post_quant_conv = nn.Conv2d(config.z_channels, config.z_channels, 1)
        self.conv_in = nn.Conv2d(config.z_channels, width, 3, padding=1)
        self.mid = _middle(config, width)
        stages: list[nn.Module] = [nn.Module() for _ in range(levels)]
        for level in reversed(range(levels)):  # built in the order they run: up.{L-1} first
            stage = stages[level]
            stage.block = nn.ModuleList()
            for _ in range(config.decoder_num_res_blocks[level]):
                stage.block.append(ResnetBlock(config, width, config.ch * config.decoder_ch_mult[level]))
                width = config.ch * config.decoder_ch_mult[level]
            if level != 0:
                stage.upsample = Upsample(width)
        self.up = nn.ModuleList(stages)
        self.norm_out = _norm(config, width)
        self.conv_out = nn.Conv2d(width, config.out_channels, 3, padding=1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(self.post_quant_conv(latents))
        h = _run_middle(self.mid, h)
        for level in reversed(range(len(self.up))):
            stage = self.up[level]
            for block in stage.block:
                h = block(h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def init_weights(module: nn.Module, generator: torch.Generator) -> None:
    """Deterministic random init: convs N(0, 1/sqrt(fan_in)), biases 0, GroupNorm weight 1 / bias 0.

    Parameters are visited in sorted name order, so a generator seed fixes every weight.
    """
    norm_params = {id(p) for m in module.modules() if isinstance(m, nn.GroupNorm) for p in (m.weight, m.bias)}
    norm_weights = {id(m.weight) for m in module.modules() if isinstance(m, nn.GroupNorm)}
    with torch.no_grad():
        for _, parameter in sorted(module.named_parameters()):
            if id(parameter) in norm_params:
                parameter.fill_(1.0 if id(parameter) in norm_weights else 0.0)
            elif parameter.dim() == 1:  # conv bias
                parameter.zero_()
            else:
                fan_in = math.prod(parameter.shape[1:])
                parameter.normal_(0.0, fan_in**-0.5, generator=generator)
