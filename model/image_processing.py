"""Images <-> the pixel tensors of the MAGVIT-v2 tokenizer (docs/models.md §4.4), with Pillow only.

    preprocess_image(image, resolution) -> [3, R, R] float32 in [-1, 1]
    to_uint8(pixels) -> H x W x 3 uint8 numpy array (a list of them for a batch)

preprocess_image reproduces Show-o's torchvision pipeline `Resize(R, BICUBIC)` -> `CenterCrop(R)` ->
`ToTensor` -> `Normalize(0.5, 0.5)` without torchvision: the shorter side becomes R and the longer
int(R * long / short) (Pillow's bicubic filter, which is what torchvision calls for PIL images), the
crop offsets are int(round((size - R) / 2)) (Python rounding, as torchvision), then x / 255 * 2 - 1.
Images that are not RGB are converted with Pillow's `convert("RGB")` (an alpha channel is dropped, as
upstream does).

to_uint8 maps the decoder output with clamp((x + 1) / 2, 0, 1) * 255 and rounds to the nearest level
(Show-o truncates with astype(uint8); the two differ by at most one level).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def load_rgb(image) -> Image.Image:
    """A PIL RGB image from a PIL image, an H x W x 3 uint8 array or a path to an image file."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
            raise ValueError(f"image array must be H x W x 3 uint8, got shape {image.shape} dtype {image.dtype}")
        return Image.fromarray(np.ascontiguousarray(image))
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image file {path} does not exist")
        try:
            with Image.open(path) as opened:
                return opened.convert("RGB")
        except OSError as error:  # Pillow's UnidentifiedImageError is an OSError
            raise ValueError(f"{path}: not an image Pillow can read ({error})") from error
    raise TypeError(f"image must be a PIL image, an H x W x 3 uint8 numpy array or a path, not {type(image).__name__}")


def resized_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """(width, height) after the shorter side is resized to `resolution` (torchvision's rule)."""
    if width <= height:
        return resolution, int(resolution * height / width)
    return int(resolution * width / height), resolution


def preprocess_image(image, resolution: int) -> torch.Tensor:
    """image (PIL image, H x W x 3 uint8 array or path) -> pixels [3, resolution, resolution] float32 in [-1, 1]."""
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution={resolution!r} must be a positive integer")
    rgb = load_rgb(image)
    size = resized_size(*rgb.size, resolution)
    if size != rgb.size:
        rgb = rgb.resize(size, resample=Image.Resampling.BICUBIC)
    left = int(round((size[0] - resolution) / 2.0))
    top = int(round((size[1] - resolution) / 2.0))
    array = np.asarray(rgb, dtype=np.uint8)[top:top + resolution, left:left + resolution]  # [R, R, 3]
    pixels = torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0  # [3, R, R] in [0, 1]
    return pixels * 2.0 - 1.0


def to_uint8(pixels: torch.Tensor):
    """pixels [3, H, W] -> H x W x 3 uint8 array; [B, 3, H, W] -> list of B arrays. Values clamped to [-1, 1]."""
    if not isinstance(pixels, torch.Tensor) or pixels.dim() not in (3, 4) or pixels.shape[-3] != 3:
        shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
        raise ValueError(f"to_uint8: pixels must be a [3, H, W] or [B, 3, H, W] tensor, got {shape}")
    if not pixels.dtype.is_floating_point:
        raise TypeError(f"to_uint8: pixels must be floating point in [-1, 1], got {pixels.dtype}")
    if not torch.isfinite(pixels).all():
        raise ValueError("to_uint8: pixels contain NaN or infinite values")
    levels = torch.round(((pixels.detach().float() + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0)
    arrays = levels.to(torch.uint8).movedim(-3, -1).cpu().numpy()  # [..., H, W, 3]
    return arrays if pixels.dim() == 3 else list(arrays)
