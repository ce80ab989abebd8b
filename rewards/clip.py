"""`clip`: CLIP score 100 · max(cos(E_image, E_text), 0) per sample, batched, from local weights.

Text: `Sample.prompt` (text-to-image, the default) or `Sample.response` (captioning), chosen by `text_field`.
Image: `Sample.image` (HxWx3 uint8 RGB). Unscorable (`None`): no or malformed image, empty text, non-finite
score, or the batch's time budget ran out before its micro-batch. The score scale is the "CLIP score"
convention of torchmetrics' `CLIPScore` (0..100); the reward weight in the config multiplies this scale.

Two backends:
- `open_clip` (the spec's default: ViT-L-14 with OpenAI weights): `create_model_and_transforms(model_name,
  pretrained=<local file>)` plus open_clip's own eval preprocessing and bundled tokenizer. OpenAI weights were
  trained with QuickGELU, which a file path does not switch on: `force_quick_gelu` (default True) does; set
  it False for weights trained with plain GELU (LAION, DataComp), or use a `-quickgelu` model name.
  open_clip imports torchvision, which must never be installed in the core environment (it breaks
  transformers 5.x), so this backend runs in an environment like `.venv-vision` (see `.ci/vision_env.sh`)
  and open_clip is imported only when the backend is built. On CPU-only machines the registry's torchvision
  (a CUDA build) cannot load its compiled ops; `ensure_torchvision_importable` registers the two operator
  schemas its import needs (transforms work, compiled ops stay unavailable).
- `transformers`: `CLIPModel` from a local directory (config.json, weights, tokenizer files,
  preprocessor_config.json), in the core environment. Image preprocessing is done here with PIL + torch
  (`rewards.blip.inputs`) from the values in preprocessor_config.json, because transformers 5.x's default
  `CLIPImageProcessor` needs torchvision; it reproduces the PIL image processor's numbers (tested).

Deviations from torchmetrics' CLIPScore: per-sample scores rather than the batch mean; text longer than the
model's context is truncated (torchmetrics raises); `None` for unscorable samples.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from rewards.base import Sample, Scored
from rewards.blip.inputs import preprocess, score_image_text, torch_dtype
from rewards.blip.loader import MODEL_LOAD_LOCK
from rewards.registry import register

Backend = Literal["open_clip", "transformers"]
TextField = Literal["prompt", "response"]
Dtype = Literal["float32", "bfloat16", "float16"]
BACKENDS = ("open_clip", "transformers")
TEXT_FIELDS = ("prompt", "response")

_torchvision_schemas = None  # the torch.library fragment holding the stub schemas, kept alive once made


def ensure_torchvision_importable() -> None:
    """Make `import torchvision` work when its compiled library cannot load (CUDA wheel, CPU torch).

    torchvision's import registers fake kernels for `torchvision::nms`/`qnms`, which fails when `_C.so` did not
    load and define them. Defining the two schemas first lets the import finish; transforms then work and
    compiled ops (nms, roi_align...) raise if called. Does nothing when torchvision is absent, already
    imported, or its library loads (a matching CUDA/CPU build).
    """
    global _torchvision_schemas
    if _torchvision_schemas is not None or "torchvision" in sys.modules:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    for library in glob.glob(os.path.join(os.path.dirname(spec.origin), "_C*.so")):
        try:
            torch.ops.load_library(library)
            return
        except OSError:
            break
    try:
        torch.ops.torchvision.nms  # noqa: B018 - defined by someone else already
        return
    except (AttributeError, RuntimeError):
        pass
    fragment = torch.library.Library("torchvision", "FRAGMENT")
    fragment.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    fragment.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _torchvision_schemas = fragment


class OpenClipBackend:
    """open_clip model + eval transform + tokenizer from `model_name` and a local weight file."""

    def __init__(self, path: str, model_name: str, force_quick_gelu: bool, device: str, dtype: torch.dtype):
        if model_name.startswith("hf-hub:"):
            raise ValueError(
                f"model_name: {model_name!r} would download; give an architecture name and `path`"
            )
        weights = Path(path).resolve()  # absolute, so it can't be taken for a pretrained tag like 'openai'
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: open_clip weight file not found (path option)")
        ensure_torchvision_importable()
        try:
            import open_clip
        except ImportError as exc:
            raise ImportError(
                "clip backend 'open_clip' needs open_clip_torch (and torchvision), which live in the isolated "
                "vision environment (bash .ci/vision_env.sh), never in the core .venv; "
                f"or use backend='transformers' ({exc})"
            ) from exc
        if model_name not in open_clip.list_models():
            raise ValueError(
                f"model_name: {model_name!r} is not an open_clip architecture; e.g. ViT-L-14, ViT-B-32 "
                "(open_clip.list_models() lists them)"
            )
        model, _, self.transform = open_clip.create_model_and_transforms(
            model_name, pretrained=str(weights), force_quick_gelu=force_quick_gelu, device=device
        )
        self.model = model.to(dtype=dtype).eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.device, self.dtype = torch.device(device), dtype

    @torch.inference_mode()
    def embed(self, images: list, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = torch.stack([self.transform(image) for image in images])  # [B, 3, S, S]
        tokens = self.tokenizer(texts)  # [B, context_length]
        image_emb = self.model.encode_image(pixels.to(self.device, self.dtype))  # [B, E]
        text_emb = self.model.encode_text(tokens.to(self.device))  # [B, E]
        return image_emb, text_emb


class TransformersClipBackend:
    """transformers `CLIPModel` + tokenizer from a directory; pixels from preprocessor_config.json values."""

    PREPROCESSOR_FILE = "preprocessor_config.json"

    def __init__(self, path: str, device: str, dtype: torch.dtype):
        directory = Path(path)
        if not (directory / "config.json").is_file():
            raise FileNotFoundError(
                f"{directory}: no config.json; expected a CLIPModel saved with save_pretrained"
            )
        self.pixels_config = read_preprocessor_config(directory / self.PREPROCESSOR_FILE)
        from transformers import AutoTokenizer, CLIPModel

        try:
            model = CLIPModel.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ValueError(f"{directory}: cannot load a CLIPModel: {exc}") from exc
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError, TypeError) as exc:
            raise ValueError(f"{directory}: cannot load the CLIP tokenizer: {exc}") from exc
        self.model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.max_length = min(
            self.tokenizer.model_max_length, model.config.text_config.max_position_embeddings
        )
        self.device, self.dtype = torch.device(device), dtype

    @torch.inference_mode()
    def embed(self, images: list, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = preprocess(images, rounding="floor", **self.pixels_config)  # [B, 3, S, S]
        tokens = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        # The towers + projections directly: get_*_features returns a tensor in 4.x and an output object in 5.x.
        vision = self.model.vision_model(pixel_values=pixels.to(self.device, self.dtype))
        image_emb = self.model.visual_projection(vision.pooler_output)  # [B, E]
        text = self.model.text_model(
            input_ids=tokens["input_ids"].to(self.device),
            attention_mask=tokens["attention_mask"].to(self.device),
        )
        text_emb = self.model.text_projection(text.pooler_output)  # [B, E]
        return image_emb, text_emb


def read_preprocessor_config(path: Path) -> dict:
    """preprocess() keyword arguments from a CLIP preprocessor_config.json (4.x and 5.x layouts)."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the CLIP image preprocessing config: {exc}") from exc
    for flag in ("do_resize", "do_center_crop", "do_normalize"):
        if raw.get(flag, True) is not True:
            raise ValueError(
                f"{path}: {flag}={raw[flag]!r} is not supported; CLIP preprocessing does all three"
            )
    if raw.get("resample", 3) != 3:
        raise ValueError(
            f"{path}: resample={raw['resample']!r}; only 3 (bicubic, what CLIP uses) is supported"
        )
    if not math.isclose(raw.get("rescale_factor", 1 / 255), 1 / 255, rel_tol=1e-6):
        raise ValueError(f"{path}: rescale_factor={raw['rescale_factor']!r}; expected 1/255")
    size, crop = raw.get("size", 224), raw.get("crop_size", 224)
    resize_to = size.get("shortest_edge") if isinstance(size, dict) else size
    crop_to = crop if isinstance(crop, int) else (crop or {}).get("height")
    if not isinstance(crop, int) and (crop or {}).get("height") != (crop or {}).get("width"):
        raise ValueError(f"{path}: crop_size={crop!r}; only square crops are supported")
    if not isinstance(resize_to, int) or not isinstance(crop_to, int) or crop_to > resize_to:
        raise ValueError(
            f"{path}: size={size!r}, crop_size={crop!r}; expected a shortest_edge size >= a square crop size"
        )
    mean, std = raw.get("image_mean"), raw.get("image_std")
    for key, value in (("image_mean", mean), ("image_std", std)):
        if not (
            isinstance(value, list) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value)
        ):
            raise ValueError(f"{path}: {key}={value!r}; expected three numbers")
    return {"resize_to": resize_to, "crop_to": crop_to, "mean": tuple(mean), "std": tuple(std)}


@register("clip")
class ClipScore:
    """CLIP score of (image, prompt or response); see the module docstring for the backends.

    The model loads on first use; pickling sends only the options.
    """

    isolation = "thread"  # holds a model (possibly on the caller's GPU); bounds its time per micro-batch

    def __init__(
        self,
        path: str,
        backend: Backend = "open_clip",
        model_name: str = "ViT-L-14",
        force_quick_gelu: bool = True,
        text_field: TextField = "prompt",
        device: str = "cpu",
        dtype: Dtype = "float32",
        batch_size: int = 16,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend: {backend!r}; expected one of {', '.join(BACKENDS)}")
        if text_field not in TEXT_FIELDS:
            raise ValueError(f"text_field: {text_field!r}; expected one of {', '.join(TEXT_FIELDS)}")
        if not isinstance(path, str) or not path:
            raise ValueError(
                f"path: {path!r}; expected a weight file (open_clip) or model directory (transformers)"
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: {batch_size!r}; expected an integer >= 1")
        torch_dtype(dtype)
        self.path = path  # open_clip: local weight file; transformers: CLIPModel directory
        self.backend = backend  # which library runs the model
        self.model_name = model_name  # open_clip architecture name (open_clip backend only)
        self.force_quick_gelu = force_quick_gelu  # QuickGELU for OpenAI weights (open_clip backend only)
        self.text_field = text_field  # prompt (text-to-image) or response (captioning)
        self.device = device  # torch device string the model runs on
        self.dtype = dtype  # model dtype; cosine and score are computed in fp32
        self.batch_size = batch_size  # (image, text) pairs per forward pass
        self._backend = None

    def _model(self):
        with MODEL_LOAD_LOCK:  # one load at a time in the process (see its docstring)
            if self._backend is None:
                self._backend = self._build_backend()
        return self._backend

    def _build_backend(self) -> OpenClipBackend | TransformersClipBackend:
        dtype = torch_dtype(self.dtype)
        if self.backend == "open_clip":
            return OpenClipBackend(self.path, self.model_name, self.force_quick_gelu, self.device, dtype)
        return TransformersClipBackend(self.path, self.device, dtype)

    def __call__(self, samples: list[Sample]) -> list[float | None]:
        return [scored.value for scored in self.score_detailed(samples)]

    def score_detailed(self, samples: Sequence[Sample], *, timeout_s: float | None = None) -> list[Scored]:
        def score_chunk(chunk):
            image_emb, text_emb = self._model().embed([image for _, _, image in chunk], [text for _, text, _ in chunk])
            return clip_score(image_emb, text_emb).tolist()

        return score_image_text(samples, text_field=self.text_field, batch_size=self.batch_size,
                                timeout_s=timeout_s, score_chunk=score_chunk)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_backend": None}

    def __repr__(self) -> str:
        return f"ClipScore(backend={self.backend!r}, path={self.path!r}, text_field={self.text_field!r})"


def clip_score(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """100 · max(cos, 0) per row: image_emb [B, E], text_emb [B, E] -> [B] fp32."""
    cosine = F.cosine_similarity(image_emb.float(), text_emb.float(), dim=-1)  # [B]
    return 100.0 * cosine.clamp(min=0.0)
