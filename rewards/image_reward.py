"""`image_reward`: ImageReward-v1.0 human-preference score of (prompt, generated image), batched, native.

The network is our own plain-PyTorch BLIP (`rewards.blip`), loaded from a local directory holding the
package's `ImageReward.pt`, `med_config.json` and the bert-base-uncased `vocab.txt`; it runs in the core
environment (no torchvision, no diffusers, no clip; transformers 4.x or 5.x, used for the tokenizer only).
Scores equal the PyPI `image-reward` 1.5 package's `ImageReward.score(prompt, image)` on the same weights:
`tests/rewards/vision/test_vision_env.py` runs the package in the isolated vision environment and this code in
the core one on full-size (447M) random weights, and requires max abs diff ≤ 1e-4 in fp32 (measured: 8e-7).

Per sample: text = `Sample.prompt`, image = `Sample.image` (HxWx3 uint8 RGB). Unscorable (`None`): no image,
a malformed image (see `rewards.blip.inputs.check_image`), an empty prompt, a non-finite score, or the
batch's time budget ran out before its micro-batch.

Deviations from the package, and why:
- batched: `batch_size` pairs per forward pass instead of one image at a time (same numbers, see the bench
  `python -m jobs.bench rewards` for the speed-up);
- prompts are padded to the longest in the batch rather than always to 35 tokens (truncation at 35 as the
  package; padding keys are masked, the score only reads [CLS], so the numbers do not change);
- text that is not valid UTF-8 (lone surrogates) has the bad code points replaced before tokenizing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

from rewards.base import Sample, Scored
from rewards.blip import loader
from rewards.blip.inputs import preprocess, score_image_text, torch_dtype
from rewards.registry import register

Dtype = Literal["float32", "bfloat16", "float16"]


@register("image_reward")
class ImageRewardScorer:
    """ImageReward-v1.0 from the directory `path` (`ImageReward.pt`, `med_config.json`, `vocab.txt`).

    The model loads on first use (so constructing, pickling and config checks stay cheap); pickling sends
    only the options.
    """

    isolation = "thread"  # holds a model (possibly on the caller's GPU); bounds its time per micro-batch

    def __init__(self, path: str, device: str = "cpu", dtype: Dtype = "float32", batch_size: int = 8) -> None:
        torch_dtype(dtype)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: {batch_size!r}; expected an integer >= 1")
        if not isinstance(path, str) or not path:
            raise ValueError(f"path: {path!r}; expected the directory holding ImageReward.pt")
        self.path = path  # directory with ImageReward.pt, med_config.json, vocab.txt
        self.device = device  # torch device string the network runs on
        self.dtype = dtype  # network dtype; the head always runs in fp32
        self.batch_size = batch_size  # (prompt, image) pairs per forward pass
        self._loaded = None

    def _model(self):
        with loader.MODEL_LOAD_LOCK:  # one load at a time in the process (see its docstring)
            if self._loaded is None:
                self._loaded = loader.load_image_reward(
                    self.path, device=self.device, dtype=torch_dtype(self.dtype)
                )
        return self._loaded

    def __call__(self, samples: list[Sample]) -> list[float | None]:
        return [scored.value for scored in self.score_detailed(samples)]

    def score_detailed(self, samples: Sequence[Sample], *, timeout_s: float | None = None) -> list[Scored]:
        return score_image_text(samples, text_field="prompt", batch_size=self.batch_size, timeout_s=timeout_s,
                                score_chunk=lambda chunk: score_pairs(self._model(), chunk))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_loaded": None}

    def __repr__(self) -> str:
        return f"ImageRewardScorer(path={self.path!r}, device={self.device!r}, dtype={self.dtype!r})"


@torch.inference_mode()
def score_pairs(loaded, pairs: list[tuple[int, str, object]]) -> list[float]:
    """(index, prompt, checked PIL image) pairs -> ImageReward scores, one forward pass."""
    network = loaded.network
    size = network.vision_config.image_size
    device, dtype = network.blip.visual_encoder.cls_token.device, network.blip.visual_encoder.cls_token.dtype
    pixels = preprocess([image for _, _, image in pairs], resize_to=size, crop_to=size, rounding="round")
    tokens = loaded.tokenizer(
        [text for _, text, _ in pairs],
        padding="longest",
        truncation=True,
        max_length=loader.MAX_TEXT_LENGTH,
        return_tensors="pt",
    )
    rewards = network(
        pixels.to(device=device, dtype=dtype),  # [B, 3, S, S]
        tokens["input_ids"].to(device),  # [B, T]
        tokens["attention_mask"].to(device),  # [B, T]
    )  # [B]
    return rewards.float().cpu().tolist()
