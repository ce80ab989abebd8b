"""Exports load with transformers (model/hf_remote.py): `AutoModel.from_pretrained(export, trust_remote_code=True)`
on the tiny LLaDA and MMaDA twins gives our network's logits, from remote code that imports nothing of unigrpo,
and the export still loads with our loader, its config.json gaining only the `auto_map`."""

from __future__ import annotations

import ast
import inspect
import json
import warnings

import pytest
import torch
from transformers import AutoModel

import model
from model import network
from model.checkpoint import config_to_json
from model.hf_remote import CONFIG_FILE, MODELING_FILE
from model.resolve import tiny_twin

LAYOUTS = {  # a RoPE base, key/value heads and an embedding size other than the defaults, so each must be read
    "llada": lambda: tiny_twin("tiny", seed=4, rope_theta=10000.0, n_kv_heads=2),
    "mmada": lambda: tiny_twin("tiny-mmada", seed=5),
}
CLASSES = {"llada": ("UniGRPOConfig", "UniGRPOModel"), "mmada": ("UniGRPOMMaDAConfig", "UniGRPOMMaDAModel")}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_automodel_loads_an_export_with_our_logits(tmp_path, layout):
    ours = LAYOUTS[layout]()
    path = model.save(ours, tmp_path / "export", max_shard_bytes=60_000)  # sharded, as jobs.train exports
    loaded = AutoModel.from_pretrained(str(path), trust_remote_code=True)
    config_class, model_class = CLASSES[layout]
    assert (type(loaded.config).__name__, type(loaded).__name__, loaded.config.model_type) == (config_class,
                                                                                               model_class, layout)
    vocab = ours.config.num_embeddings
    ids = torch.randint(0, vocab, (2, 9), generator=torch.Generator().manual_seed(0))  # [B, T]
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, :3] = False  # left padding
    with torch.no_grad():
        theirs = loaded(input_ids=ids, attention_mask=mask).logits  # [B, T, V]
        expected = ours.network(ids, mask)
    assert theirs.shape == (2, 9, vocab) and theirs.dtype == torch.float32
    assert torch.equal(theirs, expected)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_the_export_keeps_its_upstream_config_and_loads_back(tmp_path, layout):
    ours = LAYOUTS[layout]()
    path = model.save(ours, tmp_path / "export", max_shard_bytes=None)
    raw = json.loads((path / "config.json").read_text())
    config_class, model_class = CLASSES[layout]
    assert raw.pop("auto_map") == {"AutoConfig": f"configuration_unigrpo.{config_class}",
                                   "AutoModel": f"modeling_unigrpo.{model_class}",
                                   "AutoModelForMaskedLM": f"modeling_unigrpo.{model_class}"}
    assert raw == config_to_json(ours.config, torch.float32)  # every upstream field as before
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # our loader knows `auto_map`: no "ignoring unknown field" warning
        back = model.load(path)
    assert back.config == ours.config


def test_the_remote_code_is_self_contained_and_carries_the_network_source(tmp_path):
    path = model.save(LAYOUTS["llada"](), tmp_path / "export")
    modeling = (path / MODELING_FILE).read_text()
    assert inspect.getsource(network) in modeling  # generated from model/network.py, not a copy in the repository
    for name in (CONFIG_FILE, MODELING_FILE):
        imported = set()
        for node in ast.walk(ast.parse((path / name).read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                imported.add("." * node.level + (node.module or "").split(".")[0])
        allowed = {"__future__", "dataclasses", "torch", "transformers", ".configuration_unigrpo"}
        assert imported <= allowed, f"{name} imports {sorted(imported - allowed)}"
