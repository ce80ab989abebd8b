"""Fixtures for tests/model: random checkpoints written by hand in the published layout.

The layout (key names, shapes, config.json fields) is spelled out here from docs/models.md §1,
independently of model/checkpoint.py, so the loader is tested against the spec, not itself.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from model.tokenizer import TINY_TOKENIZER_DIR

TINY_VOCAB = 600  # len(tiny tokenizer)
TINY_SPECIALS = {"bos_token_id": 586, "eos_token_id": 587, "pad_token_id": 587, "mask_token_id": 588}


def published_config(**overrides) -> dict:
    """LLaDA-8B-Instruct's config.json (models.md §1) with tiny sizes; `overrides` replace fields."""
    fields = {
        "activation_type": "silu",
        "alibi": False,
        "alibi_bias_max": 8.0,
        "architectures": ["LLaDAModelLM"],
        "attention_dropout": 0.0,
        "attention_layer_norm": False,
        "attention_layer_norm_with_affine": True,
        "bias_for_layer_norm": False,
        "block_group_size": 1,
        "block_type": "llama",
        "d_model": 64,
        "embedding_dropout": 0.0,
        "embedding_size": TINY_VOCAB,
        "flash_attention": False,
        "include_bias": False,
        "include_qkv_bias": False,
        "init_device": "meta",
        "init_fn": "mitchell",
        "init_std": 0.02,
        "input_emb_norm": False,
        "layer_norm_type": "rms",
        "layer_norm_with_affine": True,
        "max_sequence_length": 4096,
        "mlp_hidden_size": 96,
        "mlp_ratio": 4,
        "model_type": "llada",
        "multi_query_attention": None,
        "n_heads": 4,
        "n_kv_heads": 4,
        "n_layers": 2,
        "precision": "amp_bf16",
        "residual_dropout": 0.0,
        "rms_norm_eps": 1e-05,
        "rope": True,
        "rope_full_precision": True,
        "rope_theta": 500000.0,
        "scale_logits": False,
        "torch_dtype": "float32",
        "transformers_version": "4.46.3",
        "use_cache": False,
        "vocab_size": TINY_VOCAB,
        "weight_tying": False,
        **TINY_SPECIALS,
    }
    fields.update(overrides)
    return fields


def published_shapes(fields: dict) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the published weights (models.md §1 table) for a config.json."""
    d, heads, layers = fields["d_model"], fields["n_heads"], fields["n_layers"]
    kv_heads = fields.get("n_kv_heads") or heads
    head_dim, hidden = d // heads, fields["mlp_hidden_size"]
    rows = fields.get("embedding_size") or fields["vocab_size"]
    shapes = {"model.transformer.wte.weight": (rows, d)}
    for i in range(layers):
        prefix = f"model.transformer.blocks.{i}."
        shapes[prefix + "attn_norm.weight"] = (d,)
        shapes[prefix + "q_proj.weight"] = (heads * head_dim, d)
        shapes[prefix + "k_proj.weight"] = (kv_heads * head_dim, d)
        shapes[prefix + "v_proj.weight"] = (kv_heads * head_dim, d)
        shapes[prefix + "attn_out.weight"] = (d, d)
        shapes[prefix + "ff_norm.weight"] = (d,)
        shapes[prefix + "ff_proj.weight"] = (hidden, d)
        shapes[prefix + "up_proj.weight"] = (hidden, d)
        shapes[prefix + "ff_out.weight"] = (d, hidden)
    shapes["model.transformer.ln_f.weight"] = (d,)
    shapes["model.transformer.ff_out.weight"] = (rows, d)
    return shapes


def random_state_dict(fields: dict, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Random weights large enough that every part of the forward pass shows in the logits.

    Embedding N(0, 1); projections N(0, 1/sqrt(fan_in)) so activations stay O(1); norm weights
    1 + N(0, 0.2) so that a norm whose weight is ignored changes the result.
    """
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in published_shapes(fields).items():
        if len(shape) == 1:
            tensor = 1.0 + 0.2 * torch.randn(shape, generator=generator)
        elif key.endswith("wte.weight"):
            tensor = torch.randn(shape, generator=generator)
        else:
            tensor = torch.randn(shape, generator=generator) / shape[1] ** 0.5
        state[key] = tensor.to(dtype)
    return state


def write_checkpoint(
    directory: Path,
    fields: dict,
    state: dict[str, torch.Tensor],
    *,
    shards: int | None = 2,
    tokenizer: bool = True,
) -> Path:
    """Write config.json, the weights (`shards` files + index, or None: one model.safetensors) and
    the tiny tokenizer's files, by hand in the published layout."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(fields, indent=2))
    keys = list(state)
    if shards is None:
        save_file({key: state[key].contiguous() for key in keys}, str(directory / "model.safetensors"))
    else:
        weight_map = {}
        for shard in range(shards):
            name = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
            part = keys[shard::shards]  # interleaved, so every shard holds a mix of layers
            save_file({key: state[key].contiguous() for key in part}, str(directory / name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(part, name))
        total = sum(t.numel() * t.element_size() for t in state.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    if tokenizer:
        for file in TINY_TOKENIZER_DIR.iterdir():
            shutil.copy(file, directory / file.name)
    return directory


@pytest.fixture
def published_checkpoint(tmp_path):
    """(directory, config fields, state dict) of a random tiny LLaDA checkpoint, 2 shards + index."""
    fields = published_config()
    state = random_state_dict(fields)
    return write_checkpoint(tmp_path / "ckpt", fields, state), fields, state


@pytest.fixture
def layout():
    """The helpers above, for test modules (importlib import mode cannot import conftest by name)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        published_config=published_config,
        published_shapes=published_shapes,
        random_state_dict=random_state_dict,
        write_checkpoint=write_checkpoint,
        vocab=TINY_VOCAB,
        specials=TINY_SPECIALS,
    )
