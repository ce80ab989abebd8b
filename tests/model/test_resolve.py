"""model/resolve.py: every model name resolves (tiny twins to the weights of their factories, checkpoints written
by hand in the published layout, the shipped demo policy) and every bad argument is an error naming the key."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from model.resolve import DEMO_POLICY, ModelSpecError, checkpoint_dir, load_model, model_parts, tiny_twin


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("spec", ["tiny", "tiny-mmada"])
def test_tiny_parts_are_a_picklable_seeded_factory_of_model_tiny(spec):
    from model.tiny import tiny_mmada_model, tiny_model

    factory = tiny_model if spec == "tiny" else tiny_mmada_model
    parts = model_parts(spec, key="model.path", seed=3, size={"d_model": 32, "n_layers": 1})
    expected = factory(3, d_model=32, n_layers=1)
    rebuilt = pickle.loads(pickle.dumps(parts.source))()  # what a worker process builds
    assert same_weights(rebuilt.network, expected.network)
    assert parts.config == expected.config and parts.config.d_model == 32 and parts.config.n_layers == 1
    assert len(parts.tokenizer) == 600  # the tiny tokenizer
    assert not same_weights(model_parts(spec, key="k", seed=4, size={"d_model": 32, "n_layers": 1}).source().network,
                            expected.network)


def test_rope_theta_keeps_the_weights_of_jobs_sft_tiny_and_changes_only_the_base():
    """jobs.sft built its tiny policy as random_network(BackboneConfig(...its fields...), seed=init_seed)."""
    from model.network import BackboneConfig
    from model.templates import special_ids
    from model.tiny import random_network
    from model.tokenizer import load_tiny_tokenizer

    tokenizer = load_tiny_tokenizer()
    ids = special_ids(tokenizer)
    old_config = BackboneConfig(d_model=32, n_heads=4, n_layers=2, mlp_hidden_size=48, vocab_size=len(tokenizer),
                                embedding_size=len(tokenizer), rope_theta=10000.0, mask_token_id=ids.mask,
                                eos_token_id=ids.eos, pad_token_id=ids.pad, bos_token_id=ids.bos)
    old = random_network(old_config, seed=5)
    new = tiny_twin("tiny", 5, rope_theta=10000.0, d_model=32, n_heads=4, n_layers=2, mlp_hidden_size=48)
    assert same_weights(new.network, old)
    assert new.config.rope_theta == 10000.0 == new.network.config.rope_theta
    tokens = torch.tensor([[ids.bos, 40, 41, 42, ids.mask, ids.mask]])
    with torch.no_grad():  # the base reaches the forward pass: the same weights at 500000 give other logits
        assert torch.allclose(new.network(tokens), old(tokens))
        assert not torch.allclose(new.network(tokens), tiny_twin("tiny", 5, d_model=32, n_heads=4, n_layers=2,
                                                                  mlp_hidden_size=48).network(tokens))


def test_a_checkpoint_directory_resolves_without_and_with_its_weights(tmp_path, layout):
    fields = layout.published_config()
    state = layout.random_state_dict(fields, seed=1)
    directory = layout.write_checkpoint(tmp_path / "ckpt", fields, state)
    parts = model_parts(directory, key="--model", seed=9, size={"d_model": 999})  # seed/size: tiny twins only
    assert parts.source == str(directory) and isinstance(parts.source, str)
    assert parts.config.d_model == fields["d_model"] and parts.config.vocab_size == layout.vocab
    assert parts.tokenizer.convert_tokens_to_ids("<|mdm_mask|>") == layout.specials["mask_token_id"]
    loaded = load_model(str(directory), key="--model", dtype="bf16")
    assert loaded.path == directory
    loaded_state = loaded.network.state_dict()
    for name, tensor in state.items():
        assert loaded_state[name].dtype == torch.bfloat16
        assert torch.equal(loaded_state[name], tensor.to(torch.bfloat16)), name


def test_demo_is_the_shipped_policy():
    assert checkpoint_dir("demo", key="--model") == DEMO_POLICY
    parts = model_parts("demo", key="--model")
    shipped = json.loads((DEMO_POLICY / "config.json").read_text())
    assert parts.source == str(DEMO_POLICY)
    assert (parts.config.d_model, parts.config.n_layers, parts.config.rope_theta) == (128, 4, 10000.0)
    assert parts.config.mask_token_id == shipped["mask_token_id"] == 588
    loaded = load_model("demo", key="--model")
    assert loaded.path == DEMO_POLICY and loaded.network.config == parts.config


def test_tiny_load_model_honours_seed_and_dtype():
    from model.tiny import tiny_model

    assert checkpoint_dir("tiny", key="k") is None
    loaded = load_model("tiny", key="--model", seed=2, dtype="bf16")
    assert all(p.dtype == torch.bfloat16 for p in loaded.network.parameters())
    expected = tiny_model(2)
    assert same_weights(loaded.network, expected.network.to(torch.bfloat16))
    assert same_weights(load_model("tiny", key="--model", seed=2).network, tiny_model(2).network)


def test_bad_arguments_name_the_key_and_what_is_right(tmp_path):
    with pytest.raises(ModelSpecError) as missing:
        model_parts(str(tmp_path / "nowhere"), key="--model")
    assert str(missing.value) == (f"--model: {str(tmp_path / 'nowhere')!r} is neither a checkpoint directory nor one "
                                  "of 'demo' / 'tiny' / 'tiny-mmada'")
    with pytest.raises(ModelSpecError) as empty:
        load_model(tmp_path, key="model.path")
    assert str(empty.value) == (f"model.path: {str(tmp_path)!r} has no config.json; give a checkpoint directory in "
                                "the published format, or 'demo' / 'tiny' / 'tiny-mmada'")
    (tmp_path / "config.json").write_text('{"d_model": 64}')  # no model_type: config_from_json refuses it
    with pytest.raises(ModelSpecError, match=r"^model\.path: cannot read the checkpoint in .*no model_type"):
        model_parts(tmp_path, key="model.path")
    with pytest.raises(ModelSpecError, match=r"^--model: cannot load a checkpoint from .*model_type"):
        load_model(tmp_path, key="--model")
