"""jobs/tasks/shapes.py and the shipped toy tokenizer (jobs/tasks/train_shapes_vq.py, model/assets/shapes_vq/).

Images are checked against geometry worked out here: the square's exact extent, the circle's and the
triangle's pixel counts against their areas (pi s^2 / 4, s^2 / 2) and a brute-force loop over pixel
centres. The shipped tokenizer must reconstruct held-out shapes in their colour.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import model
from jobs.data import PromptDataset
from jobs.tasks.shapes import (
    BACKGROUND,
    COLOURS,
    IMAGE_SIZE,
    MARGIN,
    MAX_SIZE,
    MIN_SIZE,
    PALETTE,
    SHAPES,
    ShapeSpec,
    classify_image,
    generate,
    main,
    render,
    shape_images,
    shape_mask,
)
from jobs.tasks.train_shapes_vq import (
    ASSET_DIR,
    TOY_CONFIG,
    TrainSettings,
    evaluate,
    learning_rate,
    lfq_entropy,
    straight_through_sign,
    train,
)
from model.magvit import MagvitConfig

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "data" / "shapes"


def brute_force_count(spec: ShapeSpec) -> int:
    """Pixels whose centre is inside the shape, by a plain loop over the box (module docstring's rule)."""
    s, count = spec.size, 0
    for r in range(spec.top - 1, spec.top + s + 1):
        for c in range(spec.left - 1, spec.left + s + 1):
            y, x = r + 0.5 - spec.top, c + 0.5 - spec.left
            if spec.shape == "square":
                count += 0 <= y <= s and 0 <= x <= s
            elif spec.shape == "circle":
                count += math.hypot(y - s / 2, x - s / 2) <= s / 2
            else:
                count += 0 <= y <= s and abs(x - s / 2) <= y / 2
    return count


def test_stream_is_deterministic_and_cuttable():
    images, specs = shape_images(6, seed=3)
    again, specs_again = shape_images(6, seed=3)
    assert np.array_equal(images, again) and specs == specs_again
    tail, tail_specs = shape_images(2, seed=3, start=4)
    assert np.array_equal(tail, images[4:]) and tail_specs == specs[4:]
    other, _ = shape_images(6, seed=4)
    assert not np.array_equal(other, images)
    assert images.shape == (6, IMAGE_SIZE, IMAGE_SIZE, 3) and images.dtype == np.uint8
    assert shape_images(0)[0].shape == (0, IMAGE_SIZE, IMAGE_SIZE, 3)


def test_images_show_the_stated_colour_and_shape():
    images, specs = shape_images(300, seed=0)
    seen = set()
    for image, spec in zip(images, specs):
        seen.add((spec.colour, spec.shape))
        assert MIN_SIZE <= spec.size <= MAX_SIZE
        coloured = np.all(image == np.array(PALETTE[spec.colour], np.uint8), axis=2)
        assert np.all(image[~coloured] == np.array(BACKGROUND, np.uint8))  # two colours only
        rows, cols = np.nonzero(coloured)
        assert rows.min() >= MARGIN and cols.min() >= MARGIN  # inside the margin
        assert rows.max() < IMAGE_SIZE - MARGIN and cols.max() < IMAGE_SIZE - MARGIN
        count, s = int(coloured.sum()), spec.size
        assert count == brute_force_count(spec)
        if spec.shape == "square":
            assert (rows.min(), cols.min(), rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == \
                (spec.top, spec.left, s, s)
        elif spec.shape == "circle":
            assert abs(count - math.pi * s * s / 4) <= 2 * s  # lattice error ~ the perimeter
            box = coloured[spec.top:spec.top + s, spec.left:spec.left + s]
            assert np.array_equal(box, box[::-1]) and np.array_equal(box, box[:, ::-1]) and np.array_equal(box, box.T)
        else:
            assert abs(count - s * s / 2) <= s
            widths = coloured.sum(axis=1)[spec.top:spec.top + s]
            assert np.all(np.diff(widths) >= 0) and widths[0] <= 2 and widths[-1] >= s - 1  # apex up, base at bottom
    assert seen == {(c, s) for c in COLOURS for s in SHAPES}  # every combination occurs


def test_hand_computed_small_shapes():
    square = render(ShapeSpec("blue", "square", 12, top=2, left=3))
    expected = np.zeros((IMAGE_SIZE, IMAGE_SIZE), bool)
    expected[2:14, 3:15] = True
    assert np.array_equal(np.all(square == (0, 0, 255), axis=2), expected)
    # triangle of size 12 at (0, 0): row r (centre y = r + 0.5) keeps columns with |x - 6| <= y / 2
    mask = shape_mask(ShapeSpec("red", "triangle", 12, 0, 0))
    assert mask[0].sum() == 0 and mask[1].sum() == 2 and mask[11].sum() == 12  # y 0.5: none; 1.5: 5.5, 6.5; 11.5: all
    assert mask[:, 6].sum() == 11  # the centre column (x 6.5) is inside on every row but the first
    # row widths 0, 2, 2, 4, 4, 6, 6, 8, 8, 10, 10, 12: 72 = 12^2 / 2 exactly here
    assert mask.sum(axis=1)[:12].tolist() == [0, 2, 2, 4, 4, 6, 6, 8, 8, 10, 10, 12] and int(mask.sum()) == 72
    circle = shape_mask(ShapeSpec("red", "circle", 12, 0, 0))
    # top row (y 0.5): (0.5 - 6)^2 + (4.5 - 6)^2 = 32.5 <= 36 is in, (3.5 - 6)^2 makes it 36.5: out -> columns 4..7
    assert circle[0].nonzero()[0].tolist() == [4, 5, 6, 7]
    assert circle[5, 0] and not circle[0, 0] and int(circle.sum()) == 112  # 112 of area 113.1


def test_classify_image():
    images, specs = shape_images(300, seed=1)
    assert [classify_image(image) for image in images] == [(s.colour, s.shape) for s in specs]
    blank = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 255, np.uint8)
    assert classify_image(blank) is None
    for bad in (blank[..., 0], blank[:, :16]):
        with pytest.raises(ValueError, match=r"expected a square H x W x 3 image, got shape \(32, (32|16)"):
            classify_image(bad)
    # blurred-looking variants: a square with its corner pixels gone, a circle one pixel wider than tall
    square = render(ShapeSpec("green", "square", 14, 5, 6))
    square[[5, 5, 18, 18], [6, 19, 6, 19]] = BACKGROUND
    assert classify_image(square) == ("green", "square")
    wide = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 255, np.uint8)
    wide[shape_mask(ShapeSpec("blue", "circle", 14, 5, 6)) | shape_mask(ShapeSpec("blue", "circle", 14, 5, 7))] = (0, 0, 255)
    assert classify_image(wide) == ("blue", "circle")
    dim_red = render(ShapeSpec("red", "triangle", 16, 4, 4))
    dim_red[dim_red[..., 1] == 0] = (200, 40, 30)  # off-palette red is still nearest to red
    assert classify_image(dim_red) == ("red", "triangle")


def test_cli_writes_rows_the_dataset_loads(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "shapes"), "--train", "24", "--heldout", "13", "--seed", "5"]) == 0
    assert "wrote 24 prompts" in capsys.readouterr().out
    train_set = PromptDataset(tmp_path / "shapes" / "train.jsonl")
    heldout = PromptDataset(tmp_path / "shapes" / "heldout.jsonl")
    assert len(train_set) == 24 and len(heldout) == 13 and not train_set.problems
    for record in train_set.records + heldout.records:
        colour, shape = record.meta["colour"], record.meta["shape"]
        assert record.task == "t2i" and record.prompt == f"a {colour} {shape}" and record.answer is None
        assert record.meta["rgb"] == list(PALETTE[colour]) and record.meta["background"] == [255, 255, 255]
    combos = [(r.meta["colour"], r.meta["shape"]) for r in train_set.records]
    assert sorted(combos) == sorted([(c, s) for c in COLOURS for s in SHAPES] * 2)  # each prompt twice
    assert len(set(combos[:12])) == 12  # every cycle holds all 12
    rows = generate(24, 13, seed=5)
    assert [json.loads(line) for line in (tmp_path / "shapes" / "train.jsonl").read_text().splitlines()] == rows["train"]
    assert generate(24, 13, seed=6)["train"] != rows["train"]


def test_checked_in_files_are_what_the_documented_command_writes():
    """python -m jobs.tasks.shapes --out data/shapes --train 240 --heldout 48 --seed 0"""
    for split, rows in generate(240, 48, seed=0).items():
        assert [json.loads(line) for line in (DATA / f"{split}.jsonl").read_text().splitlines()] == rows


def test_errors():
    with pytest.raises(ValueError, match="sizes must be >= 0"):
        generate(-1, 2)
    with pytest.raises(ValueError, match="unknown colour 'pink'; valid: red, green, blue, yellow"):
        render(ShapeSpec("pink", "square", 12, 2, 2))
    with pytest.raises(ValueError, match="unknown shape 'star'; valid: square, circle, triangle"):
        shape_mask(ShapeSpec("red", "star", 12, 2, 2))
    with pytest.raises(ValueError, match="image_size=20 is too small"):
        shape_images(1, image_size=20)
    with pytest.raises(ValueError, match="count=-1 and start=0 must be >= 0"):
        shape_images(-1)
    with pytest.raises(ValueError, match="steps=0"):
        TrainSettings(steps=0)
    with pytest.raises(ValueError, match="lr=0"):
        TrainSettings(lr=0)
    with pytest.raises(ValueError, match="do not split into x64 cells"):
        train(TrainSettings(steps=1), config=MagvitConfig(ch=4, z_channels=2, encoder_ch_mult=(1,) * 7,
              encoder_num_res_blocks=(1,) * 7, decoder_ch_mult=(1,) * 7, decoder_num_res_blocks=(1,) * 7, num_groups=2))


def test_straight_through_sign_and_schedule():
    latents = torch.tensor([-0.5, 0.0, 2.0], requires_grad=True)
    signs = straight_through_sign(latents)
    assert signs.tolist() == [-1.0, -1.0, 1.0]  # 0 -> -1, as the LFQ
    (signs * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert latents.grad.tolist() == [1.0, 2.0, 3.0]  # identity backward
    settings = TrainSettings(steps=110, warmup=10, lr=1.0)
    assert learning_rate(0, settings) == pytest.approx(0.1)  # (0 + 1) / 10
    assert learning_rate(10, settings) == pytest.approx(1.0)  # cosine start
    assert learning_rate(60, settings) == pytest.approx(0.55)  # half way: 0.1 + 0.9 * 0.5
    assert learning_rate(110, settings) == pytest.approx(0.1)


def test_lfq_entropy_by_hand():
    embedding = torch.tensor([[-1.0], [1.0]])  # 1 bit: p(code 1) = softmax(-2z, 2z)[1] = sigmoid(4z)
    latents = torch.tensor([0.5, -0.5]).reshape(2, 1, 1, 1)  # two positions, opposite signs
    p = 1 / (1 + math.exp(-2.0))
    per_position = -(p * math.log(p) + (1 - p) * math.log(1 - p))  # 0.3653
    assert lfq_entropy(latents, embedding).item() == pytest.approx(per_position - math.log(2), abs=1e-6)  # -0.3278
    codes = torch.tensor([[float(2 * ((k >> (2 - c)) & 1) - 1) for c in range(3)] for k in range(8)])
    assert lfq_entropy(torch.zeros(2, 3, 2, 2), codes).item() == pytest.approx(0.0, abs=1e-6)  # log 8 - log 8
    same = torch.full((2, 3, 1, 1), 4.0)  # every position sure of code 7: 0 - 0
    assert lfq_entropy(same, codes).item() == pytest.approx(0.0, abs=1e-5)


def test_training_is_deterministic_under_a_seed():
    config = MagvitConfig(ch=4, z_channels=3, encoder_ch_mult=(1, 1), encoder_num_res_blocks=(1, 1),
                          decoder_ch_mult=(1, 1), decoder_num_res_blocks=(1, 1), num_groups=2)
    settings = TrainSettings(steps=3, batch_size=2, warmup=1)
    first, history = train(settings, config, log=lambda _: None)
    again, _ = train(settings, config, log=lambda _: None)
    assert [step for step, *_ in history] == [0, 2]
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    other, _ = train(TrainSettings(steps=3, batch_size=2, warmup=1, seed=1), config, log=lambda _: None)
    assert not torch.equal(other.decoder.conv_out.weight, first.decoder.conv_out.weight)


def test_shipped_tokenizer_reconstructs_held_out_shapes():
    files = {p.name: p.stat().st_size for p in ASSET_DIR.iterdir()}
    assert {"config.json", "model.safetensors"} <= set(files) and sum(files.values()) < 2_000_000
    tokenizer = model.load_image_tokenizer(ASSET_DIR)
    assert tokenizer.config == TOY_CONFIG and (tokenizer.num_codes, tokenizer.downsample) == (64, 4)
    images, _ = shape_images(2, seed=0, start=7)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert tokenizer.encode(pixels).shape == (2, 64)
    metrics = evaluate(tokenizer, count=200, seed=0)
    assert metrics["colour_accuracy"] >= 0.95
    assert metrics["shape_accuracy"] >= 0.95
    assert metrics["mean_abs_error"] < 6.0  # uint8 levels; an all-white guess scores 35, the asset 3.2
