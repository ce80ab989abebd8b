"""model/image_processing.py: resize / crop / normalise and the uint8 mapping, against hand-computed values.

Sizes and crop offsets follow torchvision's rule worked out by hand here (short side -> R, long side
int(R * long / short), offset int(round((size - R) / 2)) with Python's half-to-even rounding); the
resampled values themselves are Pillow's bicubic filter, compared with Pillow called directly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model.image_processing import preprocess_image, resized_size, to_uint8


def ramp(height: int, width: int) -> np.ndarray:
    """A uint8 image whose every pixel differs: value (7*row + 3*col + 40*channel) mod 256."""
    rows, cols, chans = np.meshgrid(np.arange(height), np.arange(width), np.arange(3), indexing="ij")
    return ((7 * rows + 3 * cols + 40 * chans) % 256).astype(np.uint8)


def test_no_resize_is_exact_normalisation():
    image = np.array([[[0, 51, 255], [255, 0, 204]], [[10, 20, 30], [127, 128, 1]]], dtype=np.uint8)  # 2x2
    pixels = preprocess_image(image, 2)
    assert pixels.shape == (3, 2, 2) and pixels.dtype == torch.float32
    assert pixels[:, 0, 0].tolist() == pytest.approx([-1.0, 51 / 127.5 - 1, 1.0])  # -0.6 for 51
    assert pixels[:, 0, 1].tolist() == pytest.approx([1.0, -1.0, 0.6])
    assert pixels[:, 1, 1].tolist() == pytest.approx([127 / 127.5 - 1, 128 / 127.5 - 1, 1 / 127.5 - 1], abs=1e-6)


@pytest.mark.parametrize("height, width, rows, cols", [
    (2, 4, slice(0, 2), slice(1, 3)),  # offset (4-2)/2 = 1
    (2, 5, slice(0, 2), slice(2, 4)),  # offset round(1.5) = 2
    (2, 3, slice(0, 2), slice(0, 2)),  # offset round(0.5) = 0 (half to even, as torchvision)
    (7, 2, slice(2, 4), slice(0, 2)),  # offset round(2.5) = 2
])
def test_centre_crop_offsets(height, width, rows, cols):
    image = ramp(height, width)
    expected = torch.from_numpy(image[rows, cols].astype(np.float32) / 127.5 - 1).permute(2, 0, 1)
    torch.testing.assert_close(preprocess_image(image, 2), expected)


def test_resize_sizes_by_hand():
    assert resized_size(11, 7, 5) == (7, 5)  # width int(5*11/7) = int(7.857)
    assert resized_size(6, 9, 4) == (4, 6)  # tall: height int(4*9/6) = 6
    assert resized_size(8, 8, 4) == (4, 4)
    assert resized_size(3, 100, 32) == (32, 1066)  # int(1066.67)


def test_bicubic_resize_then_crop_matches_pillow():
    image = ramp(7, 11)  # H 7, W 11 -> 7 x 5 (w x h), crop left int(round(1.0)) = 1
    resized = np.asarray(Image.fromarray(image).resize((7, 5), resample=Image.Resampling.BICUBIC))
    expected = torch.from_numpy(resized[:, 1:6].astype(np.float32) / 127.5 - 1).permute(2, 0, 1)
    torch.testing.assert_close(preprocess_image(image, 5), expected)
    tall = ramp(9, 6)  # -> 4 x 6 (w x h), crop top 1
    resized = np.asarray(Image.fromarray(tall).resize((4, 6), resample=Image.Resampling.BICUBIC))
    expected = torch.from_numpy(resized[1:5].astype(np.float32) / 127.5 - 1).permute(2, 0, 1)
    torch.testing.assert_close(preprocess_image(tall, 4), expected)


def test_constant_image_stays_constant_after_resize():
    image = np.zeros((6, 9, 3), dtype=np.uint8) + np.array([10, 200, 30], dtype=np.uint8)
    pixels = preprocess_image(image, 4)
    assert pixels.shape == (3, 4, 4)
    for channel, value in enumerate((10, 200, 30)):
        assert torch.allclose(pixels[channel], torch.full((4, 4), value / 127.5 - 1))


def test_inputs_pil_path_and_modes(tmp_path):
    image = ramp(4, 4)
    from_array = preprocess_image(image, 4)
    torch.testing.assert_close(preprocess_image(Image.fromarray(image), 4), from_array)
    Image.fromarray(image).save(tmp_path / "ramp.png")
    torch.testing.assert_close(preprocess_image(tmp_path / "ramp.png", 4), from_array)
    torch.testing.assert_close(preprocess_image(str(tmp_path / "ramp.png"), 4), from_array)
    rgba = np.concatenate([image, np.full((4, 4, 1), 7, np.uint8)], axis=2)
    torch.testing.assert_close(preprocess_image(Image.fromarray(rgba, "RGBA"), 4), from_array)  # alpha dropped
    grey = preprocess_image(Image.fromarray(image[..., 0], "L"), 4)
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    torch.testing.assert_close(grey[0], from_array[0])


def test_preprocess_errors(tmp_path):
    with pytest.raises(ValueError, match=r"H x W x 3 uint8, got shape \(4, 4, 3\) dtype float32"):
        preprocess_image(np.zeros((4, 4, 3), np.float32), 4)
    with pytest.raises(ValueError, match=r"got shape \(4, 4\)"):
        preprocess_image(np.zeros((4, 4), np.uint8), 4)
    with pytest.raises(FileNotFoundError, match="missing.png does not exist"):
        preprocess_image(tmp_path / "missing.png", 4)
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ValueError, match="text.png: not an image Pillow can read"):
        preprocess_image(tmp_path / "text.png", 4)
    with pytest.raises(TypeError, match="not list"):
        preprocess_image([[1, 2, 3]], 4)
    for resolution in (0, True, 2.0):
        with pytest.raises(ValueError, match="resolution=.* must be a positive integer"):
            preprocess_image(ramp(4, 4), resolution)


def test_to_uint8_values_by_hand():
    values = torch.tensor([-1.0, 1.0, 0.0, -2.0, 2.0, 0.5, -0.5, 0.999])
    # (x+1)/2 clamped, *255, rounded: 0, 255, 127.5 -> 128 (half to even), 0, 255, 191.25, 63.75, 254.87
    pixels = values.reshape(1, 8).expand(3, 1, 8).clone()
    pixels[1] = 0.0
    array = to_uint8(pixels)
    assert isinstance(array, np.ndarray) and array.shape == (1, 8, 3) and array.dtype == np.uint8
    assert array[0, :, 0].tolist() == [0, 255, 128, 0, 255, 191, 64, 255]
    assert array[0, :, 1].tolist() == [128] * 8  # channel order: H x W x 3 with the channel last
    batch = to_uint8(torch.stack([pixels, -pixels]).to(torch.bfloat16))
    assert isinstance(batch, list) and len(batch) == 2
    assert batch[1][0, :, 0].tolist() == [255, 0, 128, 255, 0, 64, 191, 0]


def test_round_trip_is_exact():
    image = ramp(8, 8)
    assert np.array_equal(to_uint8(preprocess_image(image, 8)), image)


def test_to_uint8_errors():
    with pytest.raises(ValueError, match=r"\[3, H, W\] or \[B, 3, H, W\] tensor, got \(4, 2, 2\)"):
        to_uint8(torch.zeros(4, 2, 2))
    with pytest.raises(ValueError, match="got ndarray"):
        to_uint8(np.zeros((3, 2, 2)))
    with pytest.raises(TypeError, match="floating point"):
        to_uint8(torch.zeros(3, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN or infinite"):
        to_uint8(torch.full((3, 2, 2), float("inf")))
