"""`shape_match`: does a generated image show the prompt's shape in the prompt's colour? A score in [0, 1].

The worked example of a reward plugin for images (docs/multimodal.md): it reads `Sample.image` (the generated
HxWx3 uint8 image) and, from `Sample.meta` (the dataset row's extra fields), `rgb` (the target colour,
0..255), `shape` (circle, square or triangle) and optionally `background` (rgb), `center` ([x, y] in pixels)
and `size` (the shape's half-extent in pixels: circle radius, half the square's side, half the triangle's
base = its half-height), at the image's own resolution. It does not import unigrpo.

Score = soft IoU(colour mask, template) = Σ min(m, t) / Σ max(m, t) over pixels, where
- m ∈ [0, 1] per pixel: how close the pixel is to the target colour, 1 − ‖pixel − rgb‖ / (tolerance · ‖rgb −
  background‖), clipped; pixels at least `tolerance` of the way to the background count 0;
- t ∈ [0, 1] per pixel: the fraction of the pixel the ideal shape covers (4 × 4 sub-pixel samples), drawn at
  `center` with half-extent `size` when the row gives them; otherwise fitted to the mask: at the mask's
  centroid, with the mask's area (but never smaller than `min_area` of the image, so a few target-coloured
  pixels cannot score as a perfect tiny shape).
So a wrong colour scores about 0, a target-coloured blob of the wrong shape scores partially (a disc over the
square of the same area and centre: IoU ≈ 0.83), scattered target pixels score little, and the exact shape 1.
The score moves continuously as an image gets closer, which is what makes learning visible.

None (unscorable, never 0) when the sample has no image, or its meta lacks `rgb` / `shape`, names a shape
this reward does not know, or gives a target colour indistinguishable from the background. The background
defaults to the median colour of the image's border pixels (the shapes never touch the border).
"""

from __future__ import annotations

import numpy as np

SHAPES = ("circle", "square", "triangle")
SUPERSAMPLE = 4  # sub-pixel samples per pixel side when drawing a template
MIN_CONTRAST = 0.05  # ‖rgb − background‖ / √3 (in 0..1 units) below which the colour cannot be told apart


def inside(shape: str, dx: np.ndarray, dy: np.ndarray, size: float) -> np.ndarray:
    """Which points (offsets dx, dy from the centre, y down) lie in `shape` of half-extent `size`."""
    if shape == "circle":
        return dx * dx + dy * dy <= size * size
    if shape == "square":
        return (np.abs(dx) <= size) & (np.abs(dy) <= size)
    # triangle: apex up at (0, -size), base from (-size, size) to (size, size)
    return (dy <= size) & (np.abs(dx) <= (dy + size) / 2)


def size_for_area(shape: str, area: float) -> float:
    """The half-extent at which `shape` covers `area` pixels."""
    if shape == "circle":
        return float(np.sqrt(area / np.pi))
    if shape == "square":
        return float(np.sqrt(area) / 2)
    return float(np.sqrt(area / 2))  # triangle: base 2s, height 2s -> area 2s²


def template(shape: str, center: tuple[float, float], size: float, height: int, width: int) -> np.ndarray:
    """[H, W] float coverage in [0, 1] of `shape` centred at `center` = (x, y) pixels (pixel i spans [i, i+1))."""
    sub = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    ys = (np.arange(height)[:, None] + sub[None, :]).reshape(-1)  # [H·S]
    xs = (np.arange(width)[:, None] + sub[None, :]).reshape(-1)  # [W·S]
    hit = inside(shape, xs[None, :] - center[0], ys[:, None] - center[1], size)  # [H·S, W·S]
    return hit.reshape(height, SUPERSAMPLE, width, SUPERSAMPLE).mean(axis=(1, 3))


def border_median(image: np.ndarray) -> np.ndarray:
    """Median colour (0..1) of the outermost pixel ring."""
    ring = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])  # [n, 3]
    return np.median(ring, axis=0)


class ShapeMatch:
    """Options: `tolerance` (fraction of the colour-background distance within which a pixel counts as the
    target colour, partially; default 0.5) and `min_area` (smallest fitted shape, as a fraction of the image
    area; default 0.05). Holds plain values only, so it pickles to worker processes and Ray actors."""

    def __init__(self, *, tolerance: float = 0.5, min_area: float = 0.05):
        if not 0 < tolerance <= 1:
            raise ValueError(f"tolerance: {tolerance!r}; expected a fraction in (0, 1]")
        if not 0 <= min_area < 1:
            raise ValueError(f"min_area: {min_area!r}; expected a fraction in [0, 1)")
        self.tolerance = float(tolerance)
        self.min_area = float(min_area)

    def __call__(self, samples) -> list[float | None]:
        return [self.score_one(sample.image, sample.meta or {}) for sample in samples]

    def colour_mask(self, image: np.ndarray, rgb: np.ndarray, background: np.ndarray) -> np.ndarray | None:
        """[H, W] closeness to `rgb` in [0, 1] (colours in 0..1); None when rgb ≈ background."""
        contrast = float(np.linalg.norm(rgb - background))
        if contrast / np.sqrt(3) < MIN_CONTRAST:
            return None
        distance = np.linalg.norm(image - rgb, axis=-1)  # [H, W]
        return np.clip(1.0 - distance / (self.tolerance * contrast), 0.0, 1.0)

    def score_one(self, image, meta) -> float | None:
        shape, rgb = meta.get("shape"), meta.get("rgb")
        if image is None or shape not in SHAPES or rgb is None or len(rgb) != 3:
            return None
        pixels = np.asarray(image, dtype=np.float64) / 255.0  # [H, W, 3]
        if pixels.ndim != 3 or pixels.shape[2] != 3 or min(pixels.shape[:2]) < 2:
            return None
        height, width = pixels.shape[:2]
        background = (np.asarray(meta["background"], dtype=np.float64) / 255.0 if meta.get("background") is not None
                      else border_median(pixels))
        mask = self.colour_mask(pixels, np.asarray(rgb, dtype=np.float64) / 255.0, background)
        if mask is None:
            return None
        area = float(mask.sum())
        if meta.get("center") is not None and meta.get("size") is not None:
            center, size = (float(meta["center"][0]), float(meta["center"][1])), float(meta["size"])
        elif area <= 0:
            return 0.0  # not a single pixel of the target colour
        else:
            ys, xs = np.mgrid[0:height, 0:width] + 0.5  # pixel centres
            size = size_for_area(shape, max(area, self.min_area * height * width))
            center_y = float((mask * ys).sum() / area)
            if shape == "triangle":  # its centroid lies size/3 below the centre of its bounding box
                center_y -= size / 3
            center = (float((mask * xs).sum() / area), center_y)
        target = template(shape, center, size, height, width)  # [H, W]
        union = float(np.maximum(mask, target).sum())
        return float(np.minimum(mask, target).sum() / union) if union > 0 else 0.0
