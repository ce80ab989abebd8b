"""The MAGVIT-v2 image tokenizer of Show-o / MMaDA: pixels <-> discrete codes, and its checkpoint files.

`MagvitTokenizer` encodes pixels to codes and decodes codes to pixels around the network of
model/magvit_net.py; `load_image_tokenizer` / `save_image_tokenizer` read and write a checkpoint directory,
checking every key and shape so that a file from another architecture or bit order fails naming the key
instead of producing wrong images; `random_image_tokenizer` builds tiny random twins for tests. The network,
key names, codes and weight files: docs/models.md §4; what loading checks and the config.json fields:
docs/models.md §4.5.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from model.atomic_write import write_atomic
from model.magvit_net import (
    Decoder,
    Encoder,
    LFQuantizer,
    MagvitConfig,
    bit_weights,
    codes_to_bits,
    codes_to_vectors,
    init_weights,
    vectors_to_codes,
)

__all__ = ["MagvitConfig", "MagvitTokenizer", "load_image_tokenizer", "save_image_tokenizer",
           "random_image_tokenizer", "config_from_json", "config_to_json"]

CONFIG_NAME = "config.json"
# The weight file names the upstream savers write (docs/models.md §4.4): ours and huggingface_hub's
# mixins (model.safetensors), the ModelMixin vendored in Show-o / MMaDA (pytorch_model.safetensors, or
# .bin without safe serialisation) and diffusers' ModelMixin (diffusion_pytorch_model.*).
SAFETENSORS_NAMES = ("model.safetensors", "pytorch_model.safetensors", "diffusion_pytorch_model.safetensors")
PICKLE_NAMES = ("pytorch_model.bin", "diffusion_pytorch_model.bin")
WEIGHT_NAMES = SAFETENSORS_NAMES + PICKLE_NAMES
MODEL_TYPE = "magvitv2"
CLASS_NAMES = ("MAGVITv2",)  # diffusers' `_class_name` of Show-o's tokenizer [unverified]
QUANTIZER_BUFFERS = ("quantize.embedding", "quantize.power_vals")
PIXEL_TOLERANCE = 1e-3  # encode accepts pixels in [-1 - tol, 1 + tol] (rounding of a low-precision input)
_FIELDS = tuple(MagvitConfig.__dataclass_fields__)
_ALIASES = {"out_ch": "out_channels", "codebook_dim": "z_channels"}
_FIXED = {"double_z": False, "attn_resolutions": [], "resamp_with_conv": True, "give_pre_end": False, "tanh_out": False}
_REFUSED = ("ch_mult", "num_res_blocks")
_IGNORED = {"_class_name", "_diffusers_version", "_version", "_name_or_path", "model_type", "architectures",
            "torch_dtype", "resolution", "dropout", "beta", "entropy_multiplier", "commit_loss_multiplier",
            "transformers_version"}


class MagvitTokenizer(nn.Module):
    """Encoder, decoder and quantiser buffers with the published key names (model/magvit_net.py)."""

    def __init__(self, config: MagvitConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quantize = LFQuantizer(config.z_channels)

    @property
    def num_codes(self) -> int:
        return self.config.num_codes

    @property
    def downsample(self) -> int:
        return self.config.downsample

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.encoder.conv_in.weight.device

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, in_channels, H, W] in [-1, 1], H and W multiples of `downsample` -> codes [B, N] long.

        N = (H/ds) * (W/ds), row-major over the latent grid.
        """
        self._check_pixels(pixels)
        latents = self.encoder(pixels.to(device=self.device, dtype=self.dtype))  # [B, bits, h, w]
        return self.vectors_to_codes(latents.permute(0, 2, 3, 1)).flatten(1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """codes [B, N] integers in [0, num_codes) -> pixels [B, out_channels, h*ds, w*ds], un-clamped.

        grid: (h, w) with h*w = N; None takes the square grid and needs N to be a square.
        """
        if not isinstance(codes, torch.Tensor) or codes.dim() != 2:
            raise ValueError(f"decode: codes must be a [batch, tokens] tensor, got "
                             f"{tuple(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__}")
        h, w = self.grid(codes.shape[1], grid)
        vectors = self.codes_to_vectors(codes.to(self.device))  # [B, N, bits]
        latents = vectors.to(self.dtype).reshape(codes.shape[0], h, w, -1).permute(0, 3, 1, 2)  # [B, bits, h, w]
        return self.decoder(latents.contiguous())

    def grid(self, num_tokens: int, grid: Sequence[int] | None = None) -> tuple[int, int]:
        """(h, w) of the latent grid for `num_tokens` codes: `grid` checked, else the square root."""
        if grid is None:
            side = math.isqrt(num_tokens)
            if num_tokens < 1 or side * side != num_tokens:
                raise ValueError(f"decode: {num_tokens} codes per image is not a square number; pass grid=(h, w) "
                                 "with h*w equal to the number of codes")
            return side, side
        if (len(grid) != 2 or not all(isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in grid)
                or grid[0] * grid[1] != num_tokens):
            raise ValueError(f"decode: grid={tuple(grid)!r} must be two positive integers (h, w) with h*w = "
                             f"{num_tokens}, the number of codes per image")
        return int(grid[0]), int(grid[1])

    def codes_to_bits(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [...] -> bits [..., z_channels] long in {0, 1}, channel 0 the most significant bit."""
        self._check_codes(codes)
        return codes_to_bits(codes, self.config.z_channels)

    def codes_to_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [...] -> quantised vectors [..., z_channels] float32 in {-1, +1}."""
        self._check_codes(codes)
        return codes_to_vectors(codes, self.config.z_channels)

    def vectors_to_codes(self, vectors: torch.Tensor) -> torch.Tensor:
        """vectors [..., z_channels] (sign: > 0 is bit 1, else 0) -> codes [...] long."""
        if vectors.shape[-1:] != (self.config.z_channels,):
            raise ValueError(f"vectors_to_codes: last dimension {tuple(vectors.shape)} must be z_channels="
                             f"{self.config.z_channels}")
        return vectors_to_codes(vectors)

    def _check_codes(self, codes: torch.Tensor) -> None:
        if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
            raise TypeError(f"codes must be an integer tensor, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.num_codes):
            raise ValueError(f"codes must lie in [0, {self.num_codes}) ({self.config.z_channels} bits); got values "
                             f"in [{int(codes.min())}, {int(codes.max())}]")

    def _check_pixels(self, pixels: torch.Tensor) -> None:
        channels, ds = self.config.in_channels, self.downsample
        if not isinstance(pixels, torch.Tensor) or not pixels.dtype.is_floating_point:
            raise TypeError(f"encode: pixels must be a float tensor [B, {channels}, H, W] in [-1, 1], got "
                            f"{pixels.dtype if isinstance(pixels, torch.Tensor) else type(pixels).__name__}")
        shape = tuple(pixels.shape)
        if (len(shape) != 4 or shape[1] != channels or min(shape) < 1 or shape[2] % ds or shape[3] % ds):
            raise ValueError(f"encode: pixels have shape {list(shape)}; expected [B, {channels}, H, W] with H and W "
                             f"positive multiples of {ds} (use model.image_processing.preprocess_image)")
        if not torch.isfinite(pixels).all():
            raise ValueError("encode: pixels contain NaN or infinite values")
        low, high = float(pixels.min()), float(pixels.max())
        if low < -1 - PIXEL_TOLERANCE or high > 1 + PIXEL_TOLERANCE:
            raise ValueError(f"encode: pixels lie in [{low:.4g}, {high:.4g}], expected [-1, 1] "
                             "(x / 127.5 - 1 for uint8 images; see model.image_processing.preprocess_image)")


# ---------------------------------------------------------------------------------------------- config


def config_from_json(raw: dict, where: str = CONFIG_NAME) -> MagvitConfig:
    """MagvitConfig from a config.json's fields (module docstring); `where` names the file in errors."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    if raw.get("model_type", MODEL_TYPE) != MODEL_TYPE:
        raise ValueError(f"{where}: model_type {raw['model_type']!r} is not a MAGVIT-v2 tokenizer; expected "
                         f"{MODEL_TYPE!r} (is this the language model's directory?)")
    if raw.get("_class_name", CLASS_NAMES[0]) not in CLASS_NAMES:
        raise ValueError(f"{where}: _class_name {raw['_class_name']!r} is not supported; expected one of {CLASS_NAMES}")
    for name in _REFUSED:
        if name in raw:
            raise ValueError(f"{where}: field {name!r} is a taming-VQGAN field shared by encoder and decoder; MAGVIT-v2 "
                             "needs encoder_ch_mult / encoder_num_res_blocks / decoder_ch_mult / "
                             "decoder_num_res_blocks (taming's decoder has num_res_blocks + 1 blocks per level)")
    for name, value in _FIXED.items():
        if name in raw and raw[name] != value:
            raise ValueError(f"{where}: {name}={raw[name]!r} is not implemented; this tokenizer has {name}={value!r}")
    values = {name: raw[name] for name in _FIELDS if name in raw}
    for alias, name in _ALIASES.items():
        if alias in raw:
            if name in values and values[name] != raw[alias]:
                raise ValueError(f"{where}: {alias}={raw[alias]!r} contradicts {name}={values[name]!r}; they name the "
                                 "same thing")
            values[name] = raw[alias]
    try:
        config = MagvitConfig(**values)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from error
    for name in ("codebook_size", "num_codebook_entry"):
        allowed = (config.num_codes, -1) if name == "num_codebook_entry" else (config.num_codes,)
        if name in raw and raw[name] not in allowed:
            raise ValueError(f"{where}: {name}={raw[name]!r} contradicts z_channels={config.z_channels} "
                             f"({config.num_codes} codes)")
    if "num_resolutions" in raw and raw["num_resolutions"] != len(config.encoder_ch_mult):
        raise ValueError(f"{where}: num_resolutions={raw['num_resolutions']!r} contradicts encoder_ch_mult "
                         f"{list(config.encoder_ch_mult)} ({len(config.encoder_ch_mult)} levels)")
    known = set(_FIELDS) | set(_ALIASES) | set(_FIXED) | _IGNORED | {"codebook_size", "num_codebook_entry",
                                                                     "num_resolutions"}
    if unknown := sorted(set(raw) - known):
        warnings.warn(f"{where}: ignoring unknown config field(s) {unknown}", stacklevel=3)
    return config


def config_to_json(config: MagvitConfig) -> dict:
    """The config.json written by save_image_tokenizer (read back by config_from_json)."""
    return {"model_type": MODEL_TYPE, **config.to_dict()}


# --------------------------------------------------------------------------------------------- weights


def expected_shapes(config: MagvitConfig) -> dict[str, tuple[int, ...]]:
    """Published key -> shape for `config`, quantiser buffers included (built on meta: free at any size)."""
    with torch.device("meta"):
        tokenizer = MagvitTokenizer(config)
    return {key: tuple(tensor.shape) for key, tensor in tokenizer.state_dict().items()}


def check_state(config: MagvitConfig, state: dict[str, torch.Tensor], where: str) -> None:
    """Raise naming missing, unexpected or wrong-shaped keys, then bad quantiser buffer values."""
    expected = expected_shapes(config)
    missing = [key for key in expected if key not in state and key not in QUANTIZER_BUFFERS]
    if missing:
        raise KeyError(f"{where} is missing {len(missing)} weight(s) of the configured tokenizer: {_names(missing)}")
    unexpected = [key for key in state if key not in expected]
    if unexpected:
        raise KeyError(f"{where} has {len(unexpected)} unexpected key(s): {_names(unexpected)}; training-only "
                       "weights (discriminator, loss networks) are not part of the tokenizer, drop them, and check "
                       "that config.json describes these weights")
    for key, tensor in state.items():
        if tuple(tensor.shape) != expected[key]:
            raise ValueError(f"{where}: {key} has shape {list(tensor.shape)}, expected {list(expected[key])} from "
                             f"the config ({config})")
        if key not in QUANTIZER_BUFFERS and not tensor.dtype.is_floating_point:
            raise ValueError(f"{where}: {key} has dtype {tensor.dtype}; weights must be floating point")
    bits = config.z_channels
    reference = {"quantize.embedding": codes_to_vectors(torch.arange(2**bits), bits),  # [2^bits, bits]
                 "quantize.power_vals": bit_weights(bits)}  # [bits]
    for key in QUANTIZER_BUFFERS:
        if key in state and not torch.equal(state[key].double().cpu(), reference[key].double()):
            rows = (state[key].double().cpu() != reference[key].double()).reshape(len(reference[key]), -1).any(-1)
            first = int(rows.nonzero()[0, 0])
            raise ValueError(f"{where}: {key}[{first}] = {state[key][first].tolist()}, expected "
                             f"{reference[key][first].tolist()}: the file's bit order differs from 2^(bits-1-c) "
                             "(channel 0 the most significant bit), or the buffer is corrupt")


def _names(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _weight_file(path: Path) -> Path:
    """The one weight file of `path`: a safetensors name if any is present, else a pickle name.

    A safetensors file next to a .bin is the same weights in the safe format (hubs often carry both); two
    files of one format are two candidates, and which one is meant cannot be told: an error naming them.
    """
    for names in (SAFETENSORS_NAMES, PICKLE_NAMES):
        present = [path / name for name in names if (path / name).is_file()]
        if len(present) > 1:
            raise ValueError(f"{path} holds {len(present)} tokenizer weight files, {[p.name for p in present]}; "
                             "keep the one that belongs to config.json and remove the other(s)")
        if present:
            return present[0]
    found = sorted(p.name for p in path.iterdir())
    raise FileNotFoundError(f"no tokenizer weights in {path}: expected one of {list(WEIGHT_NAMES)}; found {found}")


def _read_state(file: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors or torch.load (weights_only) file, on the CPU."""
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file), device="cpu")
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # both libraries raise several types for a corrupt file
        raise ValueError(f"{file}: cannot be read as a state dict ({type(error).__name__}: {error})") from error
    if not isinstance(state, dict):
        raise ValueError(f"{file}: holds a {type(state).__name__}, expected a dict of key -> tensor")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{file}: entry {key!r} is a {type(value).__name__}, not a tensor; expected a flat state "
                             "dict (from a training checkpoint, save its model state dict alone)")
    return state


def _resolve_dtype(dtype, stored: torch.dtype) -> torch.dtype:
    if dtype is None:
        return stored
    from model.checkpoint import resolve_dtype

    return resolve_dtype(dtype, stored)


def load_image_tokenizer(path, dtype=None, device="cpu") -> MagvitTokenizer:
    """Load a MAGVIT-v2 tokenizer directory (module docstring), checked key by key, in eval mode.

    dtype: None (as stored), torch.float32 / bfloat16 / float16 or "fp32" / "bf16" / "fp16".
    device: where the weights go.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"image tokenizer directory {path} does not exist")
    config_path = path / CONFIG_NAME
    if config_path.is_file():
        try:
            raw = json.loads(config_path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{config_path}: not valid JSON ({error})") from error
        config = config_from_json(raw, str(config_path))
    else:
        config = MagvitConfig()  # the published architecture; the shape check below catches anything else
    file = _weight_file(path)
    state = _read_state(file)
    check_state(config, state, str(file))
    target = _resolve_dtype(dtype, state["encoder.conv_in.weight"].dtype)
    with torch.device("meta"):
        tokenizer = MagvitTokenizer(config)
    learned = {key: tensor.to(device=device, dtype=target) for key, tensor in state.items()
               if key not in QUANTIZER_BUFFERS}
    tokenizer.load_state_dict(learned, strict=False, assign=True)
    tokenizer.quantize.reset_buffers(device, dtype=target)
    still_meta = [name for name, tensor in tokenizer.state_dict().items() if tensor.is_meta]
    if still_meta:  # unreachable after check_state; kept so a bug cannot leave meta tensors behind
        raise RuntimeError(f"weights never assigned: {_names(still_meta)}")
    return tokenizer.eval()


def save_image_tokenizer(tokenizer: MagvitTokenizer, path) -> Path:
    """Write config.json and model.safetensors (published keys, quantiser buffers included) into `path`."""
    from safetensors.torch import save_file

    if not isinstance(tokenizer, MagvitTokenizer):
        raise TypeError(f"save_image_tokenizer takes a MagvitTokenizer, not {type(tokenizer).__name__}")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"cannot save an image tokenizer to {path}: it is a file")
    state = {key: tensor.detach().cpu().contiguous() for key, tensor in tokenizer.state_dict().items()}
    check_state(tokenizer.config, state, "tokenizer to save")
    path.mkdir(parents=True, exist_ok=True)
    # each file atomically: a crash leaves the old file, never half a new one
    write_atomic(path / CONFIG_NAME, json.dumps(config_to_json(tokenizer.config), indent=2) + "\n")
    write_atomic(path / WEIGHT_NAMES[0], lambda f: save_file(state, str(f), metadata={"format": "pt"}))
    return path


def random_image_tokenizer(config: MagvitConfig, seed: int = 0, dtype: torch.dtype = torch.float32) -> MagvitTokenizer:
    """`config`'s tokenizer with deterministic random weights (magvit_net.init_weights), in eval mode.

    The global RNG is left untouched: the weights come from a private generator seeded with `seed`.
    """
    with torch.device("meta"):
        tokenizer = MagvitTokenizer(config)
    tokenizer.to_empty(device="cpu")
    init_weights(tokenizer, torch.Generator().manual_seed(seed))
    tokenizer.quantize.reset_buffers("cpu")
    return tokenizer.to(dtype).eval()
