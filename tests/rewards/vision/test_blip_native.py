"""Native BLIP / ImageReward network and loader (core environment, tiny random twin).

The numbers are checked against `reference_image_reward` below: a plain, one-sample-at-a-time transcription
of the package's formulas (`ImageReward/models/BLIP/vit.py`, `med.py`, `ImageReward.py`) straight from the
state-dict tensors, with explicit per-head softmax and BERT's additive −10000 padding mask over the package's
fixed 35-token padding. The parity with the real package is `test_vision_env.py` (vision environment).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rewards.blip import REWARD_MEAN, REWARD_STD, TextConfig, TextEncoder, VisionConfig, VisionTransformer
from rewards.blip.inputs import check_image, preprocess
from rewards.blip.loader import MAX_TEXT_LENGTH, load_image_reward
from rewards.blip.tiny import TINY_VISION

from .conftest import random_image

PROMPTS = ["a photo of a cute cat", "red car on the beach at sunset, 4k!", "dog"]


def reference_image_reward(
    weights, vision: VisionConfig, text: TextConfig, pixels, input_ids, attention_mask
):
    """pixels [3, S, S], input_ids/attention_mask [35] -> reward (0-dim): the package's math, one sample."""

    def lin(x, name):
        return x @ weights[f"{name}.weight"].T + weights[f"{name}.bias"]

    def norm(x, name, eps):
        return F.layer_norm(x, x.shape[-1:], weights[f"{name}.weight"], weights[f"{name}.bias"], eps)

    def attention(q, k, v, heads, additive_mask):
        width = q.shape[-1] // heads
        outs = []
        for h in range(heads):
            cols = slice(h * width, (h + 1) * width)
            scores = q[:, cols] @ k[:, cols].T / math.sqrt(width) + additive_mask
            outs.append(torch.softmax(scores, dim=-1) @ v[:, cols])
        return torch.cat(outs, dim=-1)

    p = "blip.visual_encoder."
    patches = F.conv2d(
        pixels[None],
        weights[f"{p}patch_embed.proj.weight"],
        weights[f"{p}patch_embed.proj.bias"],
        stride=vision.patch_size,
    )[0]  # [D, g, g]
    x = torch.cat([weights[f"{p}cls_token"][0], patches.flatten(1).T]) + weights[f"{p}pos_embed"][0]
    for i in range(vision.depth):
        b = f"{p}blocks.{i}."
        q, k, v = lin(norm(x, f"{b}norm1", 1e-6), f"{b}attn.qkv").chunk(3, dim=-1)
        x = x + lin(attention(q, k, v, vision.num_heads, 0.0), f"{b}attn.proj")
        x = x + lin(F.gelu(lin(norm(x, f"{b}norm2", 1e-6), f"{b}mlp.fc1")), f"{b}mlp.fc2")
    image_tokens = norm(x, f"{p}norm", 1e-6)

    t, eps = "blip.text_encoder.", text.layer_norm_eps
    positions = torch.arange(input_ids.shape[0])
    x = weights[f"{t}embeddings.word_embeddings.weight"][input_ids]
    x = norm(
        x + weights[f"{t}embeddings.position_embeddings.weight"][positions], f"{t}embeddings.LayerNorm", eps
    )
    padding = (1.0 - attention_mask.float()) * -10000.0  # BERT's extended attention mask
    for i in range(text.num_hidden_layers):
        lay = f"{t}encoder.layer.{i}."
        s = f"{lay}attention."
        a = attention(
            lin(x, f"{s}self.query"),
            lin(x, f"{s}self.key"),
            lin(x, f"{s}self.value"),
            text.num_attention_heads,
            padding,
        )
        x = norm(lin(a, f"{s}output.dense") + x, f"{s}output.LayerNorm", eps)
        c = f"{lay}crossattention."
        a = attention(
            lin(x, f"{c}self.query"),
            lin(image_tokens, f"{c}self.key"),
            lin(image_tokens, f"{c}self.value"),
            text.num_attention_heads,
            0.0,
        )
        x = norm(lin(a, f"{c}output.dense") + x, f"{c}output.LayerNorm", eps)
        h = F.gelu(lin(x, f"{lay}intermediate.dense"))
        x = norm(lin(h, f"{lay}output.dense") + x, f"{lay}output.LayerNorm", eps)
    head = x[0]
    for index in (0, 2, 4, 6, 7):  # the Linear layers of the package's MLP; 1, 3, 5 are Dropout
        head = lin(head, f"mlp.layers.{index}")
    return (head[0] - 0.16717362830052426) / 1.0333394966054072


def pixels_of(shapes):
    images = [check_image(random_image(h, w, seed))[0] for seed, (h, w) in enumerate(shapes)]
    return preprocess(images, resize_to=32, crop_to=32, rounding="round")


def test_constants_are_the_packages():
    assert (REWARD_MEAN, REWARD_STD) == (0.16717362830052426, 1.0333394966054072)


def test_shapes():
    vision = VisionTransformer(TINY_VISION)
    tokens = vision(torch.zeros(2, 3, 32, 32))
    assert tokens.shape == (2, 1 + 16, 128)  # (32 / 8)^2 patches + class token
    text = TextEncoder(
        TextConfig(
            vocab_size=50,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=40,
            encoder_width=128,
        )
    )
    states = text(torch.ones(2, 7, dtype=torch.long), torch.ones(2, 7, dtype=torch.long), tokens)
    assert states.shape == (2, 7, 64)


def test_native_matches_reference_transcription(tiny_image_reward_dir):
    loaded = load_image_reward(tiny_image_reward_dir)
    weights = torch.load(tiny_image_reward_dir / "ImageReward.pt", weights_only=True)
    network = loaded.network
    pixels = pixels_of([(40, 50), (32, 32), (70, 33)])
    fixed = loaded.tokenizer(
        PROMPTS, padding="max_length", truncation=True, max_length=MAX_TEXT_LENGTH, return_tensors="pt"
    )  # what the package feeds
    expected = torch.stack(
        [
            reference_image_reward(
                weights,
                network.vision_config,
                network.text_config,
                pixels[i],
                fixed["input_ids"][i],
                fixed["attention_mask"][i],
            )
            for i in range(len(PROMPTS))
        ]
    )
    longest = loaded.tokenizer(PROMPTS, padding="longest", return_tensors="pt")  # what the scorer feeds
    with torch.no_grad():
        batched = network(pixels, longest["input_ids"], longest["attention_mask"])
        padded = network(pixels, fixed["input_ids"], fixed["attention_mask"])
    torch.testing.assert_close(batched, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(padded, expected, atol=1e-5, rtol=0)
    assert expected.std() > 1e-2, "scores barely depend on the input: the comparison would prove little"


def test_loader_reads_geometry_and_ignores_unused_keys(tiny_image_reward_dir):
    loaded = load_image_reward(tiny_image_reward_dir)
    assert loaded.network.vision_config == TINY_VISION
    assert loaded.network.text_config.encoder_width == TINY_VISION.width  # the file says 768: overridden
    assert len(loaded.tokenizer) == loaded.network.text_config.vocab_size
    assert loaded.tokenizer.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [
        len(loaded.tokenizer) - 2,
        len(loaded.tokenizer) - 1,
    ]
    assert loaded.ignored_keys == (
        "blip.text_encoder.embeddings.position_ids",
        "blip.text_proj.bias",
        "blip.text_proj.weight",
        "blip.vision_proj.bias",
        "blip.vision_proj.weight",
    )
    assert not any(p.requires_grad for p in loaded.network.parameters()) and not loaded.network.training


def test_bfloat16_keeps_the_head_in_fp32(tiny_image_reward_dir):
    loaded = load_image_reward(tiny_image_reward_dir, dtype=torch.bfloat16)
    assert loaded.network.blip.visual_encoder.cls_token.dtype == torch.bfloat16
    assert loaded.network.mlp.layers[0].weight.dtype == torch.float32
    full = load_image_reward(tiny_image_reward_dir)
    tokens = full.tokenizer(PROMPTS, padding="longest", return_tensors="pt")
    pixels = pixels_of([(40, 50), (32, 32), (70, 33)])
    with torch.no_grad():
        low = loaded.network(pixels.bfloat16(), tokens["input_ids"], tokens["attention_mask"])
        high = full.network(pixels, tokens["input_ids"], tokens["attention_mask"])
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, high, atol=0.1, rtol=0)


# ------------------------------------------------------------------------------------------ config errors
def test_vision_config_errors():
    with pytest.raises(ValueError, match="image_size: 30 is not a multiple of patch_size 8"):
        VisionConfig(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match="width: 100 is not divisible by num_heads 16"):
        VisionConfig(width=100)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda w: w.pop("blip.visual_encoder.pos_embed"), "missing key 'blip.visual_encoder.pos_embed'"),
        (
            lambda w: w.update({"blip.visual_encoder.pos_embed": torch.zeros(1, 16, 128)}),
            r"1 \+ a square number",
        ),
        (
            lambda w: w.update({"blip.visual_encoder.patch_embed.proj.weight": torch.zeros(128, 1, 8, 8)}),
            "expected \\[width, 3, P, P\\]",
        ),
        (
            lambda w: [w.pop(k) for k in list(w) if k.startswith("blip.visual_encoder.blocks.0.")],
            "expected 0..depth-1",
        ),
    ],
)
def test_vision_geometry_errors(tiny_image_reward_dir, edit, message):
    weights = torch.load(tiny_image_reward_dir / "ImageReward.pt", weights_only=True)
    edit(weights)
    with pytest.raises(ValueError, match=message):
        VisionConfig.from_state_dict(weights, "blip.visual_encoder.", "ImageReward.pt")


def test_vision_width_must_be_a_multiple_of_64():
    weights = {
        "blip.visual_encoder.patch_embed.proj.weight": torch.zeros(96, 3, 8, 8),
        "blip.visual_encoder.pos_embed": torch.zeros(1, 17, 96),
        "blip.visual_encoder.blocks.0.norm1.weight": torch.zeros(96),
    }
    with pytest.raises(ValueError, match="vision width 96 is not a multiple of the head width 64"):
        VisionConfig.from_state_dict(weights, "blip.visual_encoder.", "f.pt")


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "cannot read the med config"),
        ("[1, 2]", "expected a JSON object, got list"),
        (json.dumps({"hidden_act": "relu"}), "hidden_act='relu' is not supported"),
        (json.dumps({"position_embedding_type": "relative_key"}), "position_embedding_type='relative_key'"),
        (json.dumps({"add_cross_attention": False}), "add_cross_attention=False"),
        (json.dumps({"vocab_size": 10}), "missing key 'hidden_size'"),
    ],
)
def test_med_config_errors(tmp_path, content, message):
    path = tmp_path / "med_config.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        TextConfig.from_med_config(path, encoder_width=128)


@pytest.mark.parametrize(
    "key, value", [("hidden_size", "768"), ("num_hidden_layers", True), ("vocab_size", 3.5)]
)
def test_med_config_value_types(tmp_path, tiny_image_reward_dir, key, value):
    raw = json.loads((tiny_image_reward_dir / "med_config.json").read_text())
    raw[key] = value
    (tmp_path / "med_config.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=f"{key}={value!r} must be a number"):
        TextConfig.from_med_config(tmp_path / "med_config.json", encoder_width=128)


def test_text_config_heads_must_divide_width():
    with pytest.raises(ValueError, match="hidden_size: 64 is not divisible by num_attention_heads 5"):
        TextConfig(hidden_size=64, num_attention_heads=5)


# ------------------------------------------------------------------------------------------ loader errors
@pytest.fixture
def model_copy(tmp_path, tiny_image_reward_dir) -> Path:
    target = tmp_path / "model"
    shutil.copytree(tiny_image_reward_dir, target)
    return target


def test_loader_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="ImageReward directory not found"):
        load_image_reward(tmp_path / "nope")


def test_loader_missing_weights(model_copy):
    (model_copy / "ImageReward.pt").unlink()
    with pytest.raises(FileNotFoundError, match="ImageReward.pt: ImageReward weight file not found"):
        load_image_reward(model_copy)


def test_loader_corrupt_weights(model_copy):
    (model_copy / "ImageReward.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="ImageReward.pt: cannot read a tensor state dict"):
        load_image_reward(model_copy)


def test_loader_weights_not_a_state_dict(model_copy):
    torch.save([torch.zeros(1)], model_copy / "ImageReward.pt")
    with pytest.raises(ValueError, match="expected a flat state dict of tensors, got list"):
        load_image_reward(model_copy)


def test_loader_missing_key(model_copy):
    weights = torch.load(model_copy / "ImageReward.pt", weights_only=True)
    del weights["mlp.layers.7.bias"]
    torch.save(weights, model_copy / "ImageReward.pt")
    with pytest.raises(
        ValueError, match=r"missing 1 key\(s\) the scorer needs, e.g. \['mlp.layers.7.bias'\]"
    ):
        load_image_reward(model_copy)


def test_loader_wrong_shape_names_key(model_copy):
    raw = json.loads((model_copy / "med_config.json").read_text())
    raw["intermediate_size"] = 256  # the file's MLP is 128 wide
    (model_copy / "med_config.json").write_text(json.dumps(raw))
    with pytest.raises(
        ValueError,
        match=r"encoder.layer.0.intermediate.dense.weight has shape \(128, 64\); "
        r"expected \(256, 64\)",
    ):
        load_image_reward(model_copy)


def test_loader_missing_med_config(model_copy):
    (model_copy / "med_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="med_config.json: not found"):
        load_image_reward(model_copy)


def test_loader_missing_vocabulary(model_copy):
    (model_copy / "vocab.txt").unlink()
    with pytest.raises(
        FileNotFoundError, match="no tokenizer vocabulary; expected one of tokenizer.json, vocab.txt"
    ):
        load_image_reward(model_copy)


def test_loader_vocabulary_size_mismatch(model_copy):
    vocab = (model_copy / "vocab.txt").read_text().splitlines()
    (model_copy / "vocab.txt").write_text("\n".join(vocab[:-1]) + "\n")
    with pytest.raises(
        ValueError,
        match=r"vocab.txt: tokenizer has \d+ tokens with \[DEC\] and \[ENC\]; "
        r"med_config.json says vocab_size=",
    ):
        load_image_reward(model_copy)
