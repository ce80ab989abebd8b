"""Load ImageReward-v1.0 from a local directory, offline, into the native network.

The directory holds what the PyPI package downloads:
- `ImageReward.pt`: the package's `ImageReward` state dict (`blip.visual_encoder.*`, `blip.text_encoder.*`,
  `mlp.layers.*`, plus the unused `blip.vision_proj.*` / `blip.text_proj.*`);
- `med_config.json`: BLIP's BERT config;
- the bert-base-uncased vocabulary: `vocab.txt` (or a saved fast tokenizer, `tokenizer.json`).

Deviations from the package's `ImageReward.load`, and why:
- nothing is downloaded: the tokenizer is built from the local vocabulary (the package always fetches
  `bert-base-uncased`), then `[DEC]` and `[ENC]` are added exactly as BLIP's `init_tokenizer` does (30524);
- weights load with `weights_only=True` (no pickle code execution) into a network built on the meta device
  and then given uninitialised storage (`to_empty`): no time spent drawing 447M random numbers. The weights
  are copied in, not assigned: `load_state_dict(assign=True)` re-registers parameters, and transformers 4.x
  with accelerate patches `nn.Module.register_parameter` process-wide while it loads a model (in any thread),
  which would put ours back on the meta device;
- a missing or mis-shaped key is an error naming the key and file (the package loads with `strict=False` and
  would silently score with random weights); keys the scorer does not use are ignored, as the package does,
  and listed in `LoadedImageReward.ignored_keys`;
- the ViT geometry is read off the weight shapes (see `VisionConfig.from_state_dict`) so tests can use a tiny
  random twin; for the real file it is ViT-L/16 at 224 px.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from rewards.blip.med import TextConfig
from rewards.blip.model import ImageRewardNetwork
from rewards.blip.vit import VisionConfig

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "ImageReward.pt"
MED_CONFIG_FILE = "med_config.json"
VOCAB_FILES = ("tokenizer.json", "vocab.txt")
MAX_TEXT_LENGTH = 35  # the package tokenizes prompts with max_length=35, truncation on
DEC_TOKEN, ENC_TOKEN = "[DEC]", "[ENC]"

MODEL_LOAD_LOCK = threading.Lock()
"""Held by the vision rewards (`image_reward`, `clip`) while they load a model. RewardService runs terms in
concurrent threads, and transformers 4.x's `from_pretrained` patches torch process-wide while it builds a
model (accelerate's `init_empty_weights`), so two loads at once can leave one model on the meta device."""


@dataclass
class LoadedImageReward:
    network: ImageRewardNetwork  # eval mode, no grad; head in fp32
    tokenizer: object  # transformers fast BERT tokenizer with [DEC] and [ENC]
    path: Path  # the directory it came from
    ignored_keys: tuple[str, ...]  # keys of the weight file the scorer does not use


def build_tokenizer(directory: Path, vocab_size: int):
    """bert-base-uncased tokenizer from local files + BLIP's [DEC]/[ENC]; its length must be `vocab_size`."""
    from transformers import BertTokenizerFast  # imported here: importing transformers takes seconds

    found = [name for name in VOCAB_FILES if (directory / name).is_file()]
    if not found:
        raise FileNotFoundError(
            f"{directory}: no tokenizer vocabulary; expected one of {', '.join(VOCAB_FILES)} "
            "(bert-base-uncased's vocab.txt, 30522 lines)"
        )
    try:
        tokenizer = BertTokenizerFast.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"{directory / found[0]}: cannot build a BERT tokenizer: {exc}") from exc
    tokenizer.add_special_tokens({"bos_token": DEC_TOKEN})
    tokenizer.add_special_tokens({"additional_special_tokens": [ENC_TOKEN]})
    if len(tokenizer) != vocab_size:
        raise ValueError(
            f"{directory / found[0]}: tokenizer has {len(tokenizer)} tokens with {DEC_TOKEN} and {ENC_TOKEN}; "
            f"{MED_CONFIG_FILE} says vocab_size={vocab_size} (bert-base-uncased's 30522 + 2 = 30524)"
        )
    return tokenizer


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ImageReward weight file not found (the package's {WEIGHTS_FILE})")
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or non-tensor pickles
        raise ValueError(f"{path}: cannot read a tensor state dict: {exc}") from exc
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ValueError(f"{path}: expected a flat state dict of tensors, got {type(weights).__name__}")
    return weights


def load_image_reward(
    directory: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> LoadedImageReward:
    """Read the three files from `directory` and return the ready-to-score network and tokenizer."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"{directory}: ImageReward directory not found; expected {WEIGHTS_FILE}, {MED_CONFIG_FILE}, vocab.txt"
        )
    weights_path = directory / WEIGHTS_FILE
    weights = read_weights(weights_path)
    vision = VisionConfig.from_state_dict(weights, "blip.visual_encoder.", str(weights_path))
    med_path = directory / MED_CONFIG_FILE
    if not med_path.is_file():
        raise FileNotFoundError(
            f"{med_path}: not found; BLIP's med config is needed to build the text encoder"
        )
    text = TextConfig.from_med_config(med_path, encoder_width=vision.width)

    with torch.device("meta"):
        network = ImageRewardNetwork(vision, text)
    expected = network.state_dict()
    missing = [key for key in expected if key not in weights]
    if missing:
        raise ValueError(
            f"{weights_path}: missing {len(missing)} key(s) the scorer needs, e.g. {missing[:5]}; "
            f"is this ImageReward's state dict, with {MED_CONFIG_FILE} matching it?"
        )
    for key, reference in expected.items():
        if tuple(weights[key].shape) != tuple(reference.shape):
            raise ValueError(
                f"{weights_path}: {key} has shape {tuple(weights[key].shape)}; expected {tuple(reference.shape)} "
                f"from {MED_CONFIG_FILE} and the ViT geometry {vision}"
            )
    ignored = tuple(sorted(key for key in weights if key not in expected))
    if ignored:
        logger.info("%s: %d key(s) not used for scoring, e.g. %s", weights_path, len(ignored), ignored[:3])
    network.to_empty(device=device)  # fp32 storage on the target device, filled by the copy below
    network.load_state_dict({key: weights[key] for key in expected}, strict=True)
    del weights
    network.to(dtype=dtype)
    network.mlp.float()  # the head is tiny and runs in fp32 (the package casts its input with .float())
    network.eval().requires_grad_(False)
    tokenizer = build_tokenizer(directory, text.vocab_size)
    return LoadedImageReward(network=network, tokenizer=tokenizer, path=directory, ignored_keys=ignored)
