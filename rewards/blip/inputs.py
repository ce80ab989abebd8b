"""Sample input checks (image, text, dtype names) and CLIP-style preprocessing in PIL + torch (no torchvision).

Shared by the native ImageReward scorer and the transformers `CLIPModel` backend of the `clip` reward (the
core environment has no torchvision: transformers 5.x breaks when it is installed, and its default
`CLIPImageProcessor` needs it). Both pipelines are: resize the shorter side to `size` with PIL bicubic (the
longer side becomes int(size · long / short), as torchvision and transformers compute it), centre crop,
scale to [0, 1], normalise per channel. They differ in one rounding only, kept so each matches its reference:
- torchvision's `CenterCrop` (ImageReward, open_clip) puts the crop at int(round((H − S) / 2));
- transformers' `center_crop` puts it at (H − S) // 2.
These differ by one pixel when H − S is odd and (H − S) / 2 rounds up (Python rounds half to even).

A sample's image is an H×W×3 uint8 array (RGB); a PIL image is accepted too. Anything else is unscorable
(`None` with a reason), never an exception: a policy produces garbage images routinely.
"""

from __future__ import annotations

import math
import time
from typing import Literal

import numpy as np
import torch
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_ASPECT_RATIO = 32.0  # beyond this the bicubic resize of the long side costs more memory than it is worth

CropRounding = Literal["round", "floor"]
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def torch_dtype(name: str, option: str = "dtype") -> torch.dtype:
    """The torch dtype for a config name, or ValueError listing the valid names."""
    if name not in DTYPES:
        raise ValueError(f"{option}: {name!r} is not a dtype; expected one of {', '.join(DTYPES)}")
    return DTYPES[name]


def clean_text(text: object) -> str | None:
    """The text with invalid UTF-8 (lone surrogates) replaced, or None when it is not a string or blank."""
    if not isinstance(text, str) or not text.strip():
        return None
    return text.encode("utf-8", errors="replace").decode("utf-8")


def check_image(image: object) -> tuple[Image.Image | None, str]:
    """Return (RGB PIL image, "") for a scorable image, else (None, the reason it cannot be scored)."""
    if image is None:
        return None, "no image"
    if isinstance(image, Image.Image):
        try:
            image = np.asarray(image.convert("RGB"))
        except (OSError, ValueError) as exc:
            return None, f"PIL image cannot be converted to RGB: {exc}"
    if not isinstance(image, np.ndarray):
        return None, f"image is a {type(image).__name__}; expected an HxWx3 uint8 numpy array"
    if image.dtype != np.uint8:
        return None, f"image dtype is {image.dtype}; expected uint8"
    if image.ndim != 3 or image.shape[2] != 3:
        return None, f"image shape is {image.shape}; expected (H, W, 3)"
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        return None, f"image shape is {image.shape}; it has no pixels"
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        return None, f"image shape is {image.shape}; aspect ratio above {MAX_ASPECT_RATIO:g}"
    return Image.fromarray(np.ascontiguousarray(image)), ""


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """Bicubic resize so the shorter side is `size` (torchvision `Resize(size)` and transformers agree)."""
    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    new_size = (new_short, new_long) if width <= height else (new_long, new_short)
    return image.resize(new_size, Image.BICUBIC)  # PIL returns a copy when the size is unchanged


def centre_crop(image: Image.Image, size: int, rounding: CropRounding) -> Image.Image:
    """Crop the central size×size square; `rounding` picks torchvision's or transformers' offset."""
    width, height = image.size
    if width < size or height < size:
        raise ValueError(f"centre_crop: image {width}x{height} is smaller than the crop {size}")
    if rounding == "round":
        top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    else:
        top, left = (height - size) // 2, (width - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_normalised_tensor(
    images: list[Image.Image], mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """RGB images of one size -> pixels [B, 3, S, S] float32: (x / 255 − mean) / std, as torchvision."""
    arrays = np.stack([np.asarray(image, dtype=np.uint8) for image in images])  # [B, S, S, 3]
    pixels = torch.from_numpy(arrays).permute(0, 3, 1, 2).float().div(255)  # [B, 3, S, S]
    mean_t = torch.tensor(mean, dtype=torch.float32)[None, :, None, None]  # [1, 3, 1, 1]
    std_t = torch.tensor(std, dtype=torch.float32)[None, :, None, None]
    return pixels.sub(mean_t).div(std_t)


def preprocess(
    images: list[Image.Image],
    *,
    resize_to: int,
    crop_to: int,
    rounding: CropRounding,
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN,
    std: tuple[float, ...] = OPENAI_CLIP_STD,
) -> torch.Tensor:
    """Checked RGB images -> pixels [B, 3, crop_to, crop_to] float32 (resize, centre crop, normalise)."""
    cropped = [centre_crop(resize_shorter_side(image, resize_to), crop_to, rounding) for image in images]
    return to_normalised_tensor(cropped, mean, std)


def score_image_text(samples, *, text_field: str, batch_size: int, timeout_s: float | None,
                     score_chunk) -> list:
    """The loop every image-text reward shares: a sample without a usable image or text is None with a
    reason; the rest are scored `batch_size` at a time by `score_chunk(chunk) -> list[float]` (chunk: a list
    of (sample index, text, PIL image)); chunks not started before the deadline are `timeout`, and a
    non-finite score is None (`error: non-finite`)."""
    from rewards.base import Scored

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    results: list = [None] * len(samples)
    todo: list[tuple[int, str, Image.Image]] = []
    for index, sample in enumerate(samples):
        text = clean_text(getattr(sample, text_field, None))
        image, why = check_image(getattr(sample, "image", None))
        if image is None:
            results[index] = Scored(None, f"no_image: {why}")
        elif text is None:
            results[index] = Scored(None, f"empty_text: the {text_field} is empty")
        else:
            todo.append((index, text, image))
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        if deadline is not None and time.monotonic() > deadline:
            for index, _, _ in chunk:
                results[index] = Scored(None, f"timeout: batch budget of {timeout_s:g} s spent")
            continue
        for (index, _, _), value in zip(chunk, score_chunk(chunk)):
            results[index] = Scored(value) if math.isfinite(value) else Scored(None, "error: non-finite")
    return results
