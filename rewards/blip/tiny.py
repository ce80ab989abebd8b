"""Tiny random-weight twins of the vision reward models, written to disk in the published formats.

For tests and benches: nothing is downloaded, each builds in well under a second on CPU.
- `write_tiny_image_reward(dir)`: `ImageReward.pt` (the package's key names, including the unused
  `vision_proj`/`text_proj`/`position_ids` entries the real file has), `med_config.json`, a small `vocab.txt`.
- `write_tiny_clip(dir)`: a transformers `CLIPModel` (`save_pretrained`), a byte-level BPE CLIP tokenizer
  (vocab.json + merges.txt) and `preprocessor_config.json`.

The ImageReward weights are drawn by `randomise` and `redraw_head` rather than the package's init (its head,
std 1/769, makes every score ≈ −0.16 whatever the input; its N(0, 0.02) matrices make scores nearly
input-independent), so scores depend on every parameter and on the input: a test comparing two
implementations on these weights can fail. The parity test applies the same two functions to the package's
own module (the parameter names are the same).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
from torch import nn

from rewards.blip.inputs import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from rewards.blip.med import TextConfig
from rewards.blip.model import ImageRewardNetwork
from rewards.blip.vit import VisionConfig

TINY_WORDS = (
    "a an the of on in with and photo picture painting image cat dog bird car tree house red green blue "
    "yellow black white small big cute old sunset beach city night sky water"
).split()
TINY_VISION = VisionConfig(image_size=32, patch_size=8, width=128, depth=2, num_heads=2)


def tiny_bert_vocab() -> list[str]:
    """A bert-style WordPiece vocabulary: specials, characters, ##suffix characters, a few words."""
    characters = list(string.ascii_lowercase + string.digits + string.punctuation)
    tokens = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *characters,
        *(f"##{c}" for c in characters),
        *TINY_WORDS,
    ]
    return list(dict.fromkeys(tokens))  # "a" is a character and a word: keep the first


def randomise(module: nn.Module, generator: torch.Generator) -> None:
    """Draw every parameter so that each one visibly moves the output.

    Matrices N(0, 1/fan_in) (the package's N(0, 0.02) leaves the residual streams dominated by the
    embeddings, and scores nearly input-independent), class/position embeddings N(0, 0.5²), LayerNorm
    weights 1 ± 0.1, every bias and LayerNorm shift N(0, 0.1²).
    """
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            is_norm = "LayerNorm" in name or ".norm" in name or name.startswith("norm")
            if is_norm and name.endswith("weight"):
                param.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias") or param.ndim == 1:
                param.copy_(0.1 * noise)
            elif name.endswith(("cls_token", "pos_embed")):
                param.copy_(0.5 * noise)
            else:
                param.copy_(noise / param[0].numel() ** 0.5)


def redraw_head(head: nn.Module, generator: torch.Generator) -> None:
    """Head Linear weights N(0, 1/fan_in) so the reward varies with the input (see module docstring)."""
    with torch.no_grad():
        for layer in head.modules():
            if isinstance(layer, nn.Linear):
                layer.weight.copy_(
                    torch.randn(layer.weight.shape, generator=generator) / layer.in_features**0.5
                )
                layer.bias.copy_(0.1 * torch.randn(layer.bias.shape, generator=generator))


def write_tiny_image_reward(
    directory: str | Path, *, seed: int = 0, vision: VisionConfig = TINY_VISION, text_layers: int = 2
) -> Path:
    """Write a random ImageReward twin (ViT `vision`, a 64-wide BERT with `text_layers` layers) to `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = tiny_bert_vocab()
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    med_config = {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": 64,
        "initializer_range": 0.02,
        "intermediate_size": 128,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 64,
        "model_type": "bert",
        "num_attention_heads": 4,
        "num_hidden_layers": text_layers,
        "pad_token_id": 0,
        "type_vocab_size": 2,
        "vocab_size": len(vocab) + 2,  # + [DEC] + [ENC]
        "encoder_width": 768,  # overridden by the ViT width, as BLIP_Pretrain does
        "add_cross_attention": True,
    }
    (directory / "med_config.json").write_text(json.dumps(med_config, indent=2))
    text = TextConfig.from_med_config(directory / "med_config.json", encoder_width=vision.width)
    generator = torch.Generator().manual_seed(seed)
    network = ImageRewardNetwork(vision, text)
    randomise(network.blip, generator)
    redraw_head(network.mlp, generator)
    weights = dict(network.state_dict())
    # Entries the real file carries and the scorer does not use (the package loads them into BLIP_Pretrain).
    weights["blip.vision_proj.weight"] = torch.randn(256, vision.width, generator=generator) * 0.02
    weights["blip.vision_proj.bias"] = torch.zeros(256)
    weights["blip.text_proj.weight"] = torch.randn(256, text.hidden_size, generator=generator) * 0.02
    weights["blip.text_proj.bias"] = torch.zeros(256)
    weights["blip.text_encoder.embeddings.position_ids"] = torch.arange(text.max_position_embeddings)[None]
    torch.save(weights, directory / "ImageReward.pt")
    return directory


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def write_tiny_clip(
    directory: str | Path, *, seed: int = 0, image_size: int = 32, context_length: int = 16
) -> Path:
    """Write a random transformers CLIPModel with a byte-level BPE CLIP tokenizer to `directory`."""
    from transformers import CLIPConfig, CLIPModel

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    merges = [("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>"), ("t", "h"), ("th", "e</w>")]
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(vocab_list)}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": context_length,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
            }
        )
    )
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": context_length,
            "bos_token_id": vocab["<|startoftext|>"],
            "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": image_size,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    CLIPModel(config).eval().save_pretrained(str(directory))
    (directory / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "CLIPImageProcessor",
                "do_resize": True,
                "size": {"shortest_edge": image_size},
                "resample": 3,
                "do_center_crop": True,
                "crop_size": {"height": image_size, "width": image_size},
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "image_mean": list(OPENAI_CLIP_MEAN),
                "image_std": list(OPENAI_CLIP_STD),
                "do_convert_rgb": True,
            }
        )
    )
    return directory
