"""model.load / model.save: round trips, dtypes, the published layout, and every bad input named."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch
from safetensors.torch import save_file

import model
from model.checkpoint import check, config_from_json, expected_shapes, save_state_dict
from model.tiny import tiny_backbone, tiny_mmada_model, tiny_model

IDS = torch.tensor([[586, 5, 17, 42, 300, 588, 588, 587], [587, 587, 586, 9, 8, 7, 588, 588]])
MASK = torch.tensor([[1] * 8, [0, 0] + [1] * 6], dtype=torch.bool)


def logits_of(network) -> torch.Tensor:
    with torch.no_grad():
        return network(IDS, MASK)


def files_in(directory) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


# ------------------------------------------------------------------------------------------ round trips


def test_save_then_load_gives_identical_logits_sharded(tmp_path):
    original = tiny_model(seed=1)
    path = model.save(original, tmp_path / "ckpt", max_shard_bytes=60_000)
    shards = [name for name in files_in(path) if name.endswith(".safetensors")]
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((path / "model.safetensors.index.json").read_text())
    state = original.network.state_dict()
    assert set(index["weight_map"]) == set(state) and set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in state.values())
    reloaded = model.load(path)
    assert reloaded.config == original.config and reloaded.path == path
    assert torch.equal(logits_of(reloaded.network), logits_of(original.network))
    assert reloaded.tokenizer("12 + 3")["input_ids"] == original.tokenizer("12 + 3")["input_ids"]


def test_save_then_load_single_file(tmp_path):
    original = tiny_model(seed=2, n_kv_heads=2)
    path = model.save(original, tmp_path / "ckpt", max_shard_bytes=None)
    assert "model.safetensors" in files_in(path) and "model.safetensors.index.json" not in files_in(path)
    reloaded = model.load(path)
    assert reloaded.config.kv_heads == 2
    assert torch.equal(logits_of(reloaded.network), logits_of(original.network))


def test_saved_config_uses_the_upstream_field_names(tmp_path):
    path = model.save(tiny_model(seed=0), tmp_path / "ckpt")
    raw = json.loads((path / "config.json").read_text())
    assert raw["architectures"] == ["LLaDAModelLM"] and raw["model_type"] == "llada"
    assert raw["torch_dtype"] == "float32"
    expected = {
        "d_model": 64, "n_heads": 4, "n_kv_heads": 4, "n_layers": 2, "mlp_hidden_size": 128, "vocab_size": 600,
        "embedding_size": 600, "max_sequence_length": 4096, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
        "mask_token_id": 588, "eos_token_id": 587, "pad_token_id": 587, "bos_token_id": 586, "rope": True,
        "rope_full_precision": True, "layer_norm_type": "rms", "activation_type": "silu", "include_bias": False,
        "weight_tying": False, "scale_logits": False, "block_type": "llama",
    }  # fmt: skip
    assert {key: raw[key] for key in expected} == expected
    assert files_in(path) == [
        "config.json",
        "configuration_unigrpo.py",  # transformers' remote code (model/hf_remote.py, tests/model/test_hf_export.py)
        "model-00001-of-00001.safetensors",
        "model.safetensors.index.json",
        "modeling_unigrpo.py",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    # tokenizer files in the form transformers 4.x reads (5.x writes its own class and key names)
    tokenizer_config = json.loads((path / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert "<|eot_id|>" in tokenizer_config["additional_special_tokens"]
    assert "588" in tokenizer_config["added_tokens_decoder"]


def test_bf16_load_gives_bf16_params_and_stored_dtype_is_kept(tmp_path):
    path = model.save(tiny_model(seed=3), tmp_path / "fp32")
    for dtype in (torch.bfloat16, "bf16", "bfloat16"):
        network = model.load(path, dtype=dtype, tokenizer=False).network
        assert {p.dtype for p in network.parameters()} == {torch.bfloat16}
        assert logits_of(network).dtype == torch.bfloat16
    bf16_path = model.save(tiny_model(seed=3, dtype=torch.bfloat16), tmp_path / "bf16")
    assert json.loads((bf16_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert {p.dtype for p in model.load(bf16_path, tokenizer=False).network.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.load(bf16_path, dtype="fp32", tokenizer=False).network.parameters()} == {
        torch.float32
    }


def test_without_torch_dtype_the_weights_dtype_is_kept(tmp_path, layout):
    fields = layout.published_config()
    del fields["torch_dtype"]
    state = layout.random_state_dict(fields, dtype=torch.bfloat16)
    network = model.load(layout.write_checkpoint(tmp_path / "c", fields, state), tokenizer=False).network
    assert network.transformer.wte.weight.dtype == torch.bfloat16
    assert torch.equal(network.transformer.wte.weight, state["model.transformer.wte.weight"])


def test_loaded_parameters_are_real_tensors_in_eval_mode(published_checkpoint):
    directory, _, state = published_checkpoint
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every field of the published config.json is known
        network = model.load(directory).network
    assert not network.training
    assert all(not p.is_meta and p.requires_grad for p in network.parameters())
    assert all(torch.equal(tensor, state[key]) for key, tensor in network.state_dict().items())


def test_save_replaces_an_existing_checkpoint_and_leaves_no_temporary_files(tmp_path):
    model.save(tiny_model(seed=4), tmp_path / "ckpt")
    second = tiny_model(seed=5)
    model.save(second, tmp_path / "ckpt", max_shard_bytes=None)
    assert files_in(tmp_path) == ["ckpt"]
    assert "model.safetensors.index.json" not in files_in(tmp_path / "ckpt")
    assert torch.equal(logits_of(model.load(tmp_path / "ckpt").network), logits_of(second.network))


def test_save_state_dict_takes_a_gathered_state_dict_and_pair_or_bare_network(tmp_path):
    loaded = tiny_model(seed=6)
    gathered = {key: tensor.clone().to(torch.bfloat16) for key, tensor in loaded.network.state_dict().items()}
    save_state_dict(gathered, loaded.config, loaded.tokenizer, tmp_path / "gathered")
    reloaded = model.load(tmp_path / "gathered")
    assert reloaded.network.transformer.ff_out.weight.dtype == torch.bfloat16
    assert torch.equal(reloaded.network.transformer.ff_out.weight, gathered["model.transformer.ff_out.weight"])
    model.save((loaded.network, loaded.tokenizer), tmp_path / "pair")
    assert torch.equal(logits_of(model.load(tmp_path / "pair").network), logits_of(loaded.network))
    model.save(loaded.network, tmp_path / "bare")
    assert "tokenizer.json" not in files_in(tmp_path / "bare")
    assert torch.equal(logits_of(model.load(tmp_path / "bare", tokenizer=False).network), logits_of(loaded.network))


def test_mmada_checkpoint_loads_through_model_load(tmp_path, layout):
    # MMaDA-8B's fields scaled down: text rows 600 (126464), codebook 64 (8192), new vocab 664 (134656).
    fields = layout.published_config(
        model_type="mmada",
        architectures=["MMadaModelLM"],
        new_vocab_size=664,
        llm_vocab_size=600,
        codebook_size=64,
        num_vq_tokens=16,
        num_new_special_tokens=0,
    )
    state = layout.random_state_dict({**fields, "embedding_size": 664})  # wte/ff_out resized to 664 rows
    loaded = model.load(layout.write_checkpoint(tmp_path / "mmada", fields, state))
    assert loaded.config.model_type == "mmada" and loaded.config.num_embeddings == 664
    assert loaded.config.mmada == {
        "new_vocab_size": 664, "llm_vocab_size": 600, "codebook_size": 64, "num_vq_tokens": 16,
        "num_new_special_tokens": 0,
    }  # fmt: skip
    assert logits_of(loaded.network).shape == (2, 8, 664)
    resaved = model.load(model.save(loaded, tmp_path / "resaved"))
    assert json.loads((tmp_path / "resaved" / "config.json").read_text())["architectures"] == ["MMadaModelLM"]
    assert torch.equal(logits_of(resaved.network), logits_of(loaded.network))


def test_tiny_mmada_round_trip(tmp_path):
    original = tiny_mmada_model(seed=7)
    reloaded = model.load(model.save(original, tmp_path / "ckpt"))
    assert reloaded.config == original.config
    assert torch.equal(logits_of(reloaded.network), logits_of(original.network))


def test_published_8b_layouts_have_the_published_parameter_counts(layout):
    llada = layout.published_config(
        d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288, vocab_size=126464,
        embedding_size=126464, mask_token_id=126336, eos_token_id=126081, pad_token_id=126081, bos_token_id=126080,
    )  # fmt: skip
    assert config_from_json(llada).bos_token_id == 126080  # the published configs carry it: read as is
    shapes = expected_shapes(config_from_json(llada))
    assert shapes == layout.published_shapes(llada)
    assert len(shapes) == 291 and sum(math_prod(s) for s in shapes.values()) == 8_015_581_184
    mmada = {**llada, "model_type": "mmada", "vocab_size": 134656, "embedding_size": 134656}
    assert sum(math_prod(s) for s in expected_shapes(config_from_json(mmada)).values()) == 8_082_690_048


def math_prod(shape) -> int:
    result = 1
    for size in shape:
        result *= size
    return result


def test_config_fallbacks(layout):
    fields = layout.published_config(multi_query_attention=True, n_kv_heads=None, mlp_ratio=3)
    del fields["mlp_hidden_size"]
    config = config_from_json(fields)
    assert config.kv_heads == 1 and config.mlp_hidden_size == 3 * 64
    with pytest.raises(ValueError, match="multi_query_attention=true means one key/value head, but n_kv_heads=4"):
        config_from_json(layout.published_config(multi_query_attention=True))
    del fields["mlp_ratio"]
    with pytest.raises(ValueError, match="missing the required field 'mlp_hidden_size' \\(or 'mlp_ratio'\\)"):
        config_from_json(fields)


# ------------------------------------------------------------------------------------------ bad inputs


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"checkpoint directory {tmp_path / 'nope'} does not exist")):
        model.load(tmp_path / "nope")


def test_missing_config(published_checkpoint):
    directory, _, _ = published_checkpoint
    (directory / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{directory} has no config.json")):
        model.load(directory)


def test_unknown_model_type_lists_the_supported_ones(published_checkpoint, layout):
    directory, _, _ = published_checkpoint
    (directory / "config.json").write_text(json.dumps(layout.published_config(model_type="gpt2")))
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported; supported: llada, mmada"):
        model.load(directory)
    fields = layout.published_config()
    del fields["model_type"]
    (directory / "config.json").write_text(json.dumps(fields))
    with pytest.raises(ValueError, match="config.json has no model_type; supported model types: llada, mmada"):
        model.load(directory)


@pytest.mark.parametrize(
    "field, value",
    [
        ("weight_tying", True),
        ("include_bias", True),
        ("include_qkv_bias", True),
        ("block_type", "sequential"),
        ("activation_type", "swiglu"),
        ("layer_norm_type", "default"),
        ("rope", False),
        ("rope_full_precision", False),
        ("scale_logits", True),
        ("alibi", True),
        ("input_emb_norm", True),
        ("attention_dropout", 0.1),
    ],
)
def test_unsupported_field_value_is_named(published_checkpoint, layout, field, value):
    directory, _, _ = published_checkpoint
    (directory / "config.json").write_text(json.dumps(layout.published_config(**{field: value})))
    with pytest.raises(ValueError, match=re.escape(f"{field}={value!r} is not implemented")):
        model.load(directory)


def test_unknown_architecture_and_missing_or_bad_size_fields(published_checkpoint, layout):
    directory, _, _ = published_checkpoint
    config_path = directory / "config.json"
    config_path.write_text(json.dumps(layout.published_config(architectures=["LlamaForCausalLM"])))
    with pytest.raises(ValueError, match="architectures entry 'LlamaForCausalLM' is not supported"):
        model.load(directory)
    fields = layout.published_config()
    del fields["d_model"]
    config_path.write_text(json.dumps(fields))
    with pytest.raises(ValueError, match="config.json is missing the required field 'd_model'"):
        model.load(directory)
    config_path.write_text(json.dumps(layout.published_config(n_layers="2")))
    with pytest.raises(ValueError, match="n_layers='2' must be a positive integer"):
        model.load(directory)
    config_path.write_text(json.dumps(layout.published_config(n_heads=5)))
    with pytest.raises(ValueError, match="config.json: d_model=64 is not divisible by n_heads=5"):
        model.load(directory)


def test_token_id_outside_the_vocabulary(published_checkpoint, layout):
    directory, _, _ = published_checkpoint
    config_path = directory / "config.json"
    fields = layout.published_config()
    del fields["eos_token_id"]
    config_path.write_text(json.dumps(fields))
    with pytest.raises(ValueError, match=re.escape(f"{config_path}: eos_token_id=126081 (the LLaDA default: the field "
                                                   "is absent) is not a token id of the vocabulary: expected an "
                                                   "integer in 0..599")):
        model.load(directory)
    for value in (126080, "586", True):  # LLaDA-8B's id in a 600-row vocabulary; a string; a bool
        config_path.write_text(json.dumps(layout.published_config(bos_token_id=value)))
        with pytest.raises(ValueError, match=re.escape(f"{config_path}: bos_token_id={value!r} is not a token id")):
            model.load(directory)


# --------------------------------------------------------- bos_token_id of checkpoints the upstream code wrote


def without_bos(layout, form: str, **overrides) -> dict:
    """config.json as transformers' save_pretrained writes it for a config without a BOS: the key left out (a
    value equal to PretrainedConfig's default None is not written) or, from other writers, null."""
    fields = layout.published_config(**overrides)
    if form == "absent":
        del fields["bos_token_id"]
    else:
        fields["bos_token_id"] = None
    return fields


@pytest.mark.parametrize("form", ["absent", "null"])
def test_bos_token_id_comes_from_the_tokenizer(tmp_path, layout, form):
    """The issue's probe: no bos_token_id in config.json and a 600-row vocabulary loads, with the tokenizer's BOS
    (<|startoftext|>, id 586 in the tiny tokenizer's files) instead of LLaDA-8B's 126080."""
    fields = without_bos(layout, form)
    state = layout.random_state_dict(fields)
    directory = layout.write_checkpoint(tmp_path / "upstream", fields, state)
    loaded = model.load(directory)
    assert loaded.config.bos_token_id == layout.specials["bos_token_id"] == 586
    assert check(directory).config.bos_token_id == 586
    assert all(torch.equal(tensor, state[key]) for key, tensor in loaded.network.state_dict().items())
    saved = model.save(loaded, tmp_path / "saved")
    assert json.loads((saved / "config.json").read_text())["bos_token_id"] == 586  # written out from now on


def test_bos_token_id_comes_from_generation_config_before_the_tokenizer(tmp_path, layout):
    fields = without_bos(layout, "absent")
    directory = layout.write_checkpoint(tmp_path / "upstream", fields, layout.random_state_dict(fields))
    generation = {"_from_model_config": True, "bos_token_id": 5, "eos_token_id": 587, "pad_token_id": 587,
                  "transformers_version": "4.46.3"}  # as GenerationConfig.save_pretrained writes it
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2))
    assert model.load(directory).config.bos_token_id == 5
    fields["bos_token_id"] = 7  # config.json's own comes first
    (directory / "config.json").write_text(json.dumps(fields))
    assert model.load(directory, tokenizer=False).config.bos_token_id == 7
    del fields["bos_token_id"]
    (directory / "config.json").write_text(json.dumps(fields))
    generation_path = directory / "generation_config.json"
    generation_path.write_text(json.dumps({**generation, "bos_token_id": 600}))
    with pytest.raises(ValueError, match=re.escape(f"{generation_path}: bos_token_id=600 is not a token id of the "
                                                   "vocabulary: expected an integer in 0..599")):
        model.load(directory)
    generation_path.write_text(json.dumps({**generation, "bos_token_id": None}))  # null: the tokenizer's
    assert model.load(directory, tokenizer=False).config.bos_token_id == 586


def test_no_bos_anywhere_stays_none(tmp_path, layout):
    """Neither file names one and the tokenizer has no bos_token: None, and the model loads and runs."""
    fields = without_bos(layout, "absent")
    state = layout.random_state_dict(fields)
    bare = layout.write_checkpoint(tmp_path / "bare", fields, state, tokenizer=False)
    assert check(bare).config.bos_token_id is None
    network = model.load(bare, tokenizer=False).network
    assert network.config.bos_token_id is None and logits_of(network).shape == (2, 8, 600)
    resaved = model.save(network, tmp_path / "resaved")
    assert json.loads((resaved / "config.json").read_text())["bos_token_id"] is None  # written as upstream: null
    assert check(resaved).config == network.config
    no_bos_token = layout.write_checkpoint(tmp_path / "no_bos_token", fields, state)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        tokenizer_fields = json.loads((no_bos_token / name).read_text())
        del tokenizer_fields["bos_token"]
        (no_bos_token / name).write_text(json.dumps(tokenizer_fields))
    loaded = model.load(no_bos_token)
    assert loaded.config.bos_token_id is None and loaded.tokenizer.bos_token is None


def test_a_tokenizer_bos_outside_the_embedding_names_the_tokenizer(tmp_path, layout):
    """A 586-row checkpoint whose config.json names no BOS, with the tiny tokenizer (its BOS is id 586)."""
    fields = without_bos(layout, "absent", vocab_size=586, embedding_size=586, mask_token_id=1, eos_token_id=2,
                         pad_token_id=2)
    directory = layout.write_checkpoint(tmp_path / "small", fields, layout.random_state_dict(fields))
    with pytest.raises(ValueError, match=re.escape(f"the tokenizer in {directory}: bos_token '<|startoftext|>' "
                                                   "(id 586) is not a token id of the vocabulary: expected an "
                                                   "integer in 0..585")):
        check(directory)


def test_unknown_config_field_warns(published_checkpoint, layout):
    directory, _, _ = published_checkpoint
    (directory / "config.json").write_text(json.dumps(layout.published_config(sliding_window=128)))
    with pytest.warns(UserWarning, match=r"ignoring unknown config field\(s\) \['sliding_window'\]"):
        model.load(directory, tokenizer=False)


def test_missing_shard_names_the_file_and_the_index(published_checkpoint):
    directory, _, _ = published_checkpoint
    (directory / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError) as error:
        model.load(directory)
    assert "shard model-00002-of-00002.safetensors" in str(error.value)
    assert str(directory / "model.safetensors.index.json") in str(error.value)


def test_index_entry_missing_from_its_shard(published_checkpoint):
    directory, _, _ = published_checkpoint
    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    index["weight_map"]["model.transformer.ln_f.weight"] = "model-00001-of-00002.safetensors"  # it is in 00002
    index_path.write_text(json.dumps(index))
    with pytest.raises(KeyError, match="puts weight model.transformer.ln_f.weight in model-00001-of-00002"):
        model.load(directory)


def test_missing_key_is_named(tmp_path, layout):
    fields = layout.published_config()
    state = layout.random_state_dict(fields)
    del state["model.transformer.blocks.1.up_proj.weight"]
    directory = layout.write_checkpoint(tmp_path / "c", fields, state)
    with pytest.raises(KeyError, match=r"missing 1 weight\(s\): model.transformer.blocks.1.up_proj.weight"):
        model.load(directory)


def test_tied_checkpoint_without_head_is_a_missing_key(tmp_path, layout):
    fields = layout.published_config()
    state = layout.random_state_dict(fields)
    del state["model.transformer.ff_out.weight"]
    with pytest.raises(KeyError, match="model.transformer.ff_out.weight"):
        model.load(layout.write_checkpoint(tmp_path / "c", fields, state, shards=None))


def test_unexpected_key_is_named(tmp_path, layout):
    fields = layout.published_config()
    state = layout.random_state_dict(fields)
    state["model.transformer.blocks.0.attn_out.bias"] = torch.zeros(64)
    directory = layout.write_checkpoint(tmp_path / "c", fields, state, shards=None)
    with pytest.raises(KeyError, match=r"1 unexpected weight\(s\): model.transformer.blocks.0.attn_out.bias"):
        model.load(directory)


def test_wrong_shape_names_the_key_and_both_shapes(tmp_path, layout):
    fields = layout.published_config()
    state = layout.random_state_dict(fields)
    state["model.transformer.blocks.0.k_proj.weight"] = torch.zeros(32, 64)
    directory = layout.write_checkpoint(tmp_path / "c", fields, state)  # key #3 goes to shard 2 of 2
    message = (
        "weight model.transformer.blocks.0.k_proj.weight in model-00002-of-00002.safetensors has shape [32, 64], "
        "expected [64, 64]"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        model.load(directory)


def test_vocabulary_mismatch_is_a_wrong_shape(tmp_path, layout):
    fields = layout.published_config(vocab_size=640, embedding_size=640)
    state = layout.random_state_dict(layout.published_config())  # 600 rows
    with pytest.raises(ValueError, match=r"wte.weight in .* has shape \[600, 64\], expected \[640, 64\]"):
        model.load(layout.write_checkpoint(tmp_path / "c", fields, state))


def test_no_weight_files(tmp_path, layout):
    directory = tmp_path / "c"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(layout.published_config()))
    with pytest.raises(FileNotFoundError, match=f"no weights in {re.escape(str(directory))}: expected"):
        model.load(directory)
    torch.save({}, directory / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match=r"found \['pytorch_model.bin'\]: convert them to safetensors"):
        model.load(directory)


def test_missing_tokenizer_is_named_unless_not_wanted(published_checkpoint):
    directory, _, _ = published_checkpoint
    (directory / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no tokenizer in .*: missing tokenizer.json.*tokenizer=False"):
        model.load(directory)
    assert model.load(directory, tokenizer=False).tokenizer is None


def test_bad_dtype_and_bad_save_inputs(tmp_path, published_checkpoint):
    directory, _, _ = published_checkpoint
    with pytest.raises(ValueError, match=r"dtype 'int8' is not supported; use None, torch.float32"):
        model.load(directory, dtype="int8")
    with pytest.raises(TypeError, match="model.save takes a LoadedModel.*not dict"):
        model.save({}, tmp_path / "x")
    (tmp_path / "afile").write_text("")
    with pytest.raises(FileExistsError, match="it is a file"):
        model.save(tiny_model(), tmp_path / "afile")


def test_save_state_dict_checks_keys_and_writes_nothing_on_error(tmp_path):
    network = tiny_backbone(100, mask_token_id=1, eos_token_id=2)
    state = network.state_dict()
    del state["model.transformer.ln_f.weight"]
    with pytest.raises(KeyError, match="state dict to save is missing 1 weight.*ln_f.weight"):
        save_state_dict(state, network.config, None, tmp_path / "ckpt")
    assert files_in(tmp_path) == []
    state = {**network.state_dict(), "model.transformer.wte.weight": torch.zeros(99, 64)}
    with pytest.raises(ValueError, match=r"wte.weight in the state dict has shape \[99, 64\], expected \[100, 64\]"):
        save_state_dict(state, network.config, None, tmp_path / "ckpt")


def test_failure_while_writing_removes_the_staging_directory(tmp_path):
    loaded = tiny_model()

    class BrokenTokenizer:
        def save_pretrained(self, directory):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        model.save((loaded.network, BrokenTokenizer()), tmp_path / "ckpt")
    assert files_in(tmp_path) == []


def test_safetensors_file_written_without_metadata_still_loads(tmp_path, layout):
    fields = layout.published_config()
    state = layout.random_state_dict(fields)
    directory = tmp_path / "c"
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(fields))
    save_file(state, str(directory / "model.safetensors"))
    assert model.load(directory, tokenizer=False).config.vocab_size == 600
