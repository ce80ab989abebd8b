"""rewards.blip.inputs: image checks, resize/crop geometry, normalisation, text cleaning, dtype names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rewards.blip.inputs import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    centre_crop,
    check_image,
    clean_text,
    preprocess,
    resize_shorter_side,
    to_normalised_tensor,
    torch_dtype,
)


def column_image(height: int, width: int) -> np.ndarray:
    """Red channel = column index, green = row index (so a crop's offset can be read off its pixels)."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs % 256, ys % 256, np.zeros_like(xs)], axis=-1).astype(np.uint8)


@pytest.mark.parametrize(
    "image, reason",
    [
        (None, "no image"),
        ([[1, 2, 3]], "image is a list"),
        (np.zeros((4, 4, 3), dtype=np.float32), "dtype is float32"),
        (np.zeros((4, 4), dtype=np.uint8), "shape is (4, 4)"),
        (np.zeros((4, 4, 4), dtype=np.uint8), "shape is (4, 4, 4)"),
        (np.zeros((0, 4, 3), dtype=np.uint8), "no pixels"),
        (np.zeros((1, 40, 3), dtype=np.uint8), "aspect ratio"),
    ],
)
def test_check_image_rejects_with_a_reason(image, reason):
    checked, why = check_image(image)
    assert checked is None
    assert reason in why


def test_check_image_accepts_arrays_and_pil_images():
    array = column_image(5, 7)
    checked, why = check_image(array[:, ::-1])  # non-contiguous view
    assert why == "" and checked.size == (7, 5) and checked.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(checked), array[:, ::-1])
    rgba = Image.fromarray(np.dstack([array, np.full((5, 7), 9, np.uint8)]))
    checked, _ = check_image(rgba)
    np.testing.assert_array_equal(np.asarray(checked), array)


def test_resize_shorter_side_geometry():
    # landscape 100x50 -> shorter side 224, longer int(224 * 100 / 50) = 448
    assert resize_shorter_side(Image.new("RGB", (100, 50)), 224).size == (448, 224)
    # portrait 33 wide, 70 high, to 32: int(32 * 70 / 33) = int(67.87) = 67
    assert resize_shorter_side(Image.new("RGB", (33, 70)), 32).size == (32, 67)
    same = Image.fromarray(column_image(32, 40))
    np.testing.assert_array_equal(np.asarray(resize_shorter_side(same, 32)), np.asarray(same))


def test_centre_crop_rounding_torchvision_vs_transformers():
    image = Image.fromarray(column_image(224, 263))  # width excess 39: 19.5 rounds (half to even) to 20
    round_crop = np.asarray(centre_crop(image, 224, "round"))
    floor_crop = np.asarray(centre_crop(image, 224, "floor"))
    assert round_crop[0, 0, 0] == 20 and floor_crop[0, 0, 0] == 19
    assert round_crop.shape == floor_crop.shape == (224, 224, 3)
    image = Image.fromarray(column_image(224, 261))  # excess 37: 18.5 rounds to 18, floor 18
    assert np.asarray(centre_crop(image, 224, "round"))[0, 0, 0] == 18
    with pytest.raises(ValueError, match="smaller than the crop"):
        centre_crop(Image.new("RGB", (10, 300)), 224, "round")


def test_normalisation_by_hand():
    pixel = np.zeros((1, 1, 3), dtype=np.uint8)
    pixel[0, 0] = (255, 0, 51)
    out = to_normalised_tensor([Image.fromarray(pixel)], OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    # (1 - 0.48145466) / 0.26862954 = 1.930336; (0 - 0.4578275) / 0.26130258 = -1.752099;
    # (0.2 - 0.40821073) / 0.27577711 = -0.755003
    assert out.shape == (1, 3, 1, 1) and out.dtype == torch.float32
    torch.testing.assert_close(
        out.flatten(), torch.tensor([1.930336, -1.752099, -0.755003]), atol=1e-5, rtol=0
    )


def test_preprocess_shape_and_batch():
    images = [check_image(column_image(h, w))[0] for h, w in [(40, 50), (32, 32), (70, 33)]]
    pixels = preprocess(images, resize_to=32, crop_to=32, rounding="round")
    assert pixels.shape == (3, 3, 32, 32)
    alone = preprocess(images[2:], resize_to=32, crop_to=32, rounding="round")
    torch.testing.assert_close(pixels[2:], alone, atol=0, rtol=0)


def test_clean_text_and_dtype_names():
    assert clean_text("") is None and clean_text("  \n") is None and clean_text(None) is None
    assert clean_text(b"bytes") is None
    assert clean_text("ok\udcff") == "ok?"  # a lone surrogate (invalid UTF-8) is replaced
    assert torch_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ValueError, match="expected one of float32, bfloat16, float16"):
        torch_dtype("fp8")
