"""The `clip` built-in with the transformers backend (core environment, no torchvision), and its errors.

Expected scores come from a different route through transformers: the PIL image processor's pixels
(`CLIPImageProcessorPil` in 5.x, the numpy/PIL `CLIPImageProcessor` in 4.x), the tokenizer, and the full
`CLIPModel(...)` forward's normalised `image_embeds`/`text_embeds`.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys

import pytest
import torch
from PIL import Image

import rewards
from rewards.base import Sample
from rewards.clip import ClipScore, OpenClipBackend, clip_score, ensure_torchvision_importable

from .conftest import random_image

TEXTS = ["a cat", "the dog", "red sky at night", "x", "cat cat dog", "1234 {}"]
SHAPES = [(40, 50), (32, 32), (70, 33), (33, 70), (5, 7), (64, 64)]


def reference_cosines(model_dir, texts, images):
    import transformers
    from transformers import AutoTokenizer, CLIPModel

    processor_class = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    processor = processor_class.from_pretrained(str(model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = CLIPModel.from_pretrained(str(model_dir)).eval()
    out = []
    for text, image in zip(texts, images):
        pixels = processor(images=[image], return_tensors="pt")["pixel_values"]
        tokens = tokenizer([text], return_tensors="pt", truncation=True, max_length=16)
        with torch.no_grad():
            result = model(input_ids=tokens["input_ids"], pixel_values=pixels)
        out.append((result.image_embeds * result.text_embeds).sum().item())  # both are unit vectors
    return out


def test_scores_match_clipmodel_forward(tiny_clip_dir):
    images = [random_image(h, w, seed) for seed, (h, w) in enumerate(SHAPES)]
    samples = [Sample(task="t2i", prompt=t, response="", image=im) for t, im in zip(TEXTS, images)]
    reward = rewards.get("clip", path=str(tiny_clip_dir), backend="transformers", batch_size=4)
    cosines = reference_cosines(tiny_clip_dir, TEXTS, images)
    assert reward(samples) == pytest.approx([100 * max(c, 0.0) for c in cosines], abs=1e-4)
    image_emb, text_emb = reward._model().embed([Image.fromarray(im) for im in images], TEXTS)
    assert torch.nn.functional.cosine_similarity(image_emb, text_emb).tolist() == pytest.approx(
        cosines, abs=1e-5
    )
    # non-vacuous: scores above the clamp (the clamp itself is test_clip_score_formula_by_hand)
    assert sum(c > 0 for c in cosines) >= 2, "pick another tiny_clip_dir seed: these pairs all clamp to 0"


def test_text_field_response_is_the_caption(tiny_clip_dir):
    image = random_image(40, 50, 0)
    as_prompt = ClipScore(str(tiny_clip_dir), backend="transformers")
    as_response = ClipScore(str(tiny_clip_dir), backend="transformers", text_field="response")
    captioning = Sample(
        task="captioning", prompt="Describe the image.", response="red sky at night", image=image
    )
    t2i = Sample(task="t2i", prompt="red sky at night", response="", image=image)
    assert as_response([captioning]) == pytest.approx(as_prompt([t2i]), abs=1e-6)
    assert as_response.score_detailed([t2i])[0].reason == "empty_text: the response is empty"


def test_long_text_is_truncated_not_an_error(tiny_clip_dir):
    image = random_image(40, 50, 0)
    reward = ClipScore(str(tiny_clip_dir), backend="transformers")
    (long_score,) = reward([Sample(task="t2i", prompt="cat " * 25_000, response="", image=image)])
    assert isinstance(long_score, float) and 0.0 <= long_score <= 100.0


def test_clip_score_formula_by_hand():
    image = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    text = torch.tensor([[1.0, 1.0], [-1.0, 0.0], [0.0, 5.0], [1.0, 0.0]])
    # cos = 1/sqrt(2) -> 70.7107; cos = -1 -> clamped to 0; cos = 1 -> 100; zero vector -> cos 0 -> 0
    assert clip_score(image, text).tolist() == pytest.approx([70.710678, 0.0, 100.0, 0.0], abs=1e-4)


def test_pickles_without_the_model(tiny_clip_dir):
    import pickle

    reward = ClipScore(str(tiny_clip_dir), backend="transformers")
    samples = [Sample(task="t2i", prompt="a cat", response="", image=random_image(40, 50, 0))]
    before = reward(samples)
    payload = pickle.dumps(reward)
    assert len(payload) < 2000
    assert pickle.loads(payload)(samples) == before


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "options, message",
    [
        ({"path": "x", "backend": "onnx"}, "backend: 'onnx'; expected one of open_clip, transformers"),
        ({"path": "x", "text_field": "answer"}, "text_field: 'answer'; expected one of prompt, response"),
        ({"path": ""}, "path: ''"),
        ({"path": "x", "batch_size": -1}, "batch_size: -1"),
        ({"path": "x", "dtype": "half"}, "dtype: 'half' is not a dtype"),
    ],
)
def test_option_errors(options, message):
    with pytest.raises(ValueError, match=message):
        ClipScore(**options)


def test_missing_model_directory(tmp_path):
    reward = ClipScore(str(tmp_path), backend="transformers")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        reward([Sample(task="t2i", prompt="a", response="", image=random_image(8, 8, 0))])


@pytest.mark.parametrize(
    "edit, message",
    [
        (None, "cannot read the CLIP image preprocessing config"),
        ({"do_center_crop": False}, "do_center_crop=False is not supported"),
        ({"resample": 2}, "resample=2; only 3"),
        ({"rescale_factor": 1.0}, "rescale_factor=1.0; expected 1/255"),
        ({"crop_size": {"height": 64, "width": 64}}, "expected a shortest_edge size >= a square crop size"),
        ({"crop_size": {"height": 32, "width": 16}}, "only square crops are supported"),
        ({"image_mean": [0.5, 0.5]}, "image_mean=\\[0.5, 0.5\\]; expected three numbers"),
    ],
)
def test_preprocessor_config_errors(tmp_path, tiny_clip_dir, edit, message):
    target = tmp_path / "clip"
    shutil.copytree(tiny_clip_dir, target)
    config_path = target / "preprocessor_config.json"
    if edit is None:
        config_path.unlink()
    else:
        config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **edit}))
    reward = ClipScore(str(target), backend="transformers")
    with pytest.raises(ValueError, match=message):
        reward([Sample(task="t2i", prompt="a", response="", image=random_image(8, 8, 0))])


def test_preprocessor_config_old_integer_layout(tmp_path):
    from rewards.clip import read_preprocessor_config

    path = tmp_path / "preprocessor_config.json"
    path.write_text(
        json.dumps({"size": 224, "crop_size": 224, "image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    )
    assert read_preprocessor_config(path) == {
        "resize_to": 224,
        "crop_to": 224,
        "mean": (0.5,) * 3,
        "std": (0.5,) * 3,
    }


def test_open_clip_backend_errors_before_importing(tmp_path):
    with pytest.raises(FileNotFoundError, match="open_clip weight file not found"):
        OpenClipBackend(str(tmp_path / "none.safetensors"), "ViT-L-14", True, "cpu", torch.float32)
    with pytest.raises(ValueError, match="would download"):
        OpenClipBackend("x", "hf-hub:org/model", True, "cpu", torch.float32)


@pytest.mark.skipif(importlib.util.find_spec("open_clip") is not None, reason="open_clip is installed here")
def test_open_clip_backend_in_the_core_env_says_where_it_runs(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    with pytest.raises(ImportError, match="isolated vision environment"):
        OpenClipBackend(str(weights), "ViT-L-14", True, "cpu", torch.float32)
    assert "torchvision" not in sys.modules  # the core env never imports it


def test_ensure_torchvision_importable_is_a_no_op_without_torchvision():
    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed here (vision env): covered by test_vision_env.py")
    ensure_torchvision_importable()
    assert "torchvision" not in sys.modules
