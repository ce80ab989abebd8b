"""Coloured shapes: a toy text-to-image task small enough for a tiny model, and the images its tokenizer learns.

    python -m jobs.tasks.shapes --out data/shapes --train 240 --heldout 48 --seed 0

writes `train.jsonl` and `heldout.jsonl` in the dataset format of `jobs.data`, one prompt per row:

    {"uid": "shapes-train-00000", "task": "t2i", "prompt": "a red square", "colour": "red",
     "rgb": [255, 0, 0], "shape": "square", "background": [255, 255, 255]}

`colour`, `rgb`, `shape` and `background` stay in the record's `meta`, so a reward can score a generated
image from the row alone (`classify_image` below is one way to do it). There are only
len(COLOURS) * len(SHAPES) = 12 prompts: each split cycles through all of them in a seed-shuffled order
(the task measures whether RL makes the images match their prompt, not generalisation to new words).

Images (`render`, `shape_images`): one filled shape of a PALETTE colour on a plain BACKGROUND, IMAGE_SIZE
(32) pixels square, hard edges. Shape `size` s is the side of its bounding box, drawn in [MIN_SIZE,
MAX_SIZE], placed with at least MARGIN pixels to the border. A pixel belongs to the shape when its centre
(row + 0.5, col + 0.5) lies inside:
    square    the s x s box                                      (area s^2)
    circle    the disc of radius s/2 centred in the box          (area pi s^2 / 4)
    triangle  apex at the top middle, base along the bottom side (area s^2 / 2)
Image i of a stream is a pure function of (seed, i): numpy's default_rng([seed, i]) draws its colour, shape,
size and position, so streams can be cut anywhere and regenerated exactly.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TASK = "t2i"
IMAGE_SIZE = 32
BACKGROUND = (255, 255, 255)
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 160, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 220, 0),
}
COLOURS = tuple(PALETTE)
SHAPES = ("square", "circle", "triangle")
MIN_SIZE, MAX_SIZE, MARGIN = 12, 22, 2
FOREGROUND_DISTANCE = 96.0  # RGB distance from the background above which classify_image counts a pixel as shape


@dataclass(frozen=True)
class ShapeSpec:
    """One image: `shape` of PALETTE[`colour`], bounding box `size` x `size` at (`top`, `left`)."""

    colour: str
    shape: str
    size: int
    top: int
    left: int

    @property
    def prompt(self) -> str:
        return prompt_of(self.colour, self.shape)


def prompt_of(colour: str, shape: str) -> str:
    return f"a {colour} {shape}"


def _check_image_size(image_size: int) -> None:
    if image_size < MAX_SIZE + 2 * MARGIN:
        raise ValueError(f"image_size={image_size} is too small: shapes up to {MAX_SIZE} px need "
                         f">= {MAX_SIZE + 2 * MARGIN} px with the {MARGIN} px margin")


def draw_spec(rng: np.random.Generator, image_size: int = IMAGE_SIZE) -> ShapeSpec:
    """A uniformly random colour, shape, size in [MIN_SIZE, MAX_SIZE] and position inside the margin."""
    _check_image_size(image_size)
    colour = COLOURS[int(rng.integers(len(COLOURS)))]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    size = int(rng.integers(MIN_SIZE, MAX_SIZE + 1))
    top, left = (int(v) for v in rng.integers(MARGIN, image_size - MARGIN - size + 1, size=2))
    return ShapeSpec(colour, shape, size, top, left)


def shape_mask(spec: ShapeSpec, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """[image_size, image_size] bool: the pixels whose centre lies inside the shape (module docstring)."""
    if spec.shape not in SHAPES:
        raise ValueError(f"unknown shape {spec.shape!r}; valid: {', '.join(SHAPES)}")
    return _region(spec.shape, image_size, spec.top, spec.left, spec.size, spec.size)


def _region(shape: str, image_size: int, top: int, left: int, height: int, width: int) -> np.ndarray:
    """[image_size, image_size] bool: pixel centres inside `shape` fitted to the height x width box at (top, left).

    Written without divisions so that the square-box case is exact (pixel centres on the circle count in).
    """
    y = np.arange(image_size)[:, None] + 0.5 - top  # [H, 1], from the box's top edge
    x = np.arange(image_size)[None, :] + 0.5 - left  # [1, W], from the box's left edge
    in_box = (y >= 0) & (y <= height) & (x >= 0) & (x <= width)
    if shape == "square":
        return in_box
    if shape == "circle":  # ellipse inscribed in the box
        return (y - height / 2) ** 2 * width**2 + (x - width / 2) ** 2 * height**2 <= (height * width / 2) ** 2
    return in_box & (2 * height * np.abs(x - width / 2) <= y * width)  # triangle, apex at the top middle


def render(spec: ShapeSpec, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """[image_size, image_size, 3] uint8: BACKGROUND with the shape filled in PALETTE[spec.colour]."""
    if spec.colour not in PALETTE:
        raise ValueError(f"unknown colour {spec.colour!r}; valid: {', '.join(COLOURS)}")
    image = np.empty((image_size, image_size, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    image[shape_mask(spec, image_size)] = PALETTE[spec.colour]
    return image


def shape_images(count: int, *, seed: int = 0, start: int = 0,
                 image_size: int = IMAGE_SIZE) -> tuple[np.ndarray, list[ShapeSpec]]:
    """Images start .. start+count-1 of stream `seed`: ([count, H, W, 3] uint8, their specs)."""
    if count < 0 or start < 0:
        raise ValueError(f"count={count} and start={start} must be >= 0")
    specs = [draw_spec(np.random.default_rng([seed, start + i]), image_size) for i in range(count)]
    images = np.stack([render(spec, image_size) for spec in specs]) if specs else \
        np.empty((0, image_size, image_size, 3), np.uint8)
    return images, specs


def nearest_colour(rgb) -> str:
    """The PALETTE name nearest (Euclidean RGB) to `rgb`."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return min(COLOURS, key=lambda name: float(np.sum((rgb - np.asarray(PALETTE[name])) ** 2)))


def classify_image(image: np.ndarray, background=BACKGROUND) -> tuple[str, str] | None:
    """(colour, shape) seen in an H x W x 3 uint8 image, or None when no shape stands out of the background.

    Foreground: pixels farther than FOREGROUND_DISTANCE from `background` (None if fewer than 9). Colour: the
    palette colour nearest to their mean. Shape: each of SHAPES fitted to the foreground's bounding box (the
    rule of shape_mask, stretched to the box), the one with the highest intersection-over-union wins.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1]:
        raise ValueError(f"classify_image: expected a square H x W x 3 image, got shape {image.shape}")
    distance = np.linalg.norm(image.astype(np.float64) - np.asarray(background, np.float64), axis=2)
    foreground = distance > FOREGROUND_DISTANCE  # [H, W]
    if foreground.sum() < 9:
        return None
    rows, cols = np.nonzero(foreground)
    box = (int(rows.min()), int(cols.min()), int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1))
    templates = {shape: _region(shape, image.shape[0], *box) for shape in SHAPES}
    overlap = {shape: (foreground & t).sum() / (foreground | t).sum() for shape, t in templates.items()}
    return nearest_colour(image[foreground].mean(axis=0)), max(SHAPES, key=overlap.__getitem__)


# -------------------------------------------------------------------------------------------- dataset


def generate(num_train: int, num_heldout: int, *, seed: int = 0) -> dict[str, list[dict]]:
    """{"train": rows, "heldout": rows}: each split cycles through the 12 prompts, shuffled per cycle."""
    if num_train < 0 or num_heldout < 0:
        raise ValueError(f"sizes must be >= 0; got train={num_train}, heldout={num_heldout}")
    combos = [(colour, shape) for colour in COLOURS for shape in SHAPES]
    splits: dict[str, list[dict]] = {}
    for split_index, (split, size) in enumerate((("train", num_train), ("heldout", num_heldout))):
        rng = np.random.default_rng([seed, split_index])
        order: list[tuple[str, str]] = []
        while len(order) < size:
            order += [combos[i] for i in rng.permutation(len(combos))]
        splits[split] = [
            {"uid": f"shapes-{split}-{row:05d}", "task": TASK, "prompt": prompt_of(colour, shape), "colour": colour,
             "rgb": list(PALETTE[colour]), "shape": shape, "background": list(BACKGROUND)}
            for row, (colour, shape) in enumerate(order[:size])
        ]
    return splits


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.tasks.shapes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory (train.jsonl, heldout.jsonl)")
    parser.add_argument("--train", type=int, default=240, help="training prompts (rows)")
    parser.add_argument("--heldout", type=int, default=48, help="held-out prompts (rows)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    out = Path(args.out)
    for split, rows in generate(args.train, args.heldout, seed=args.seed).items():
        write_jsonl(rows, out / f"{split}.jsonl")
        print(f"wrote {len(rows)} prompts to {out / f'{split}.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
