"""LoRA through peft (model/lora.py): the update against a hand computation, the reference, exports, bad values.

The reference for the adapters' gradient is the chain rule through the merged weight: for an adapted layer
W = W_base + s · B A (s = alpha / rank), dL/dB = s · G A^T and dL/dA = s · B^T G, with G = dL/dW computed by
autograd on a plain network (no peft) that holds the merged weights.
"""

from __future__ import annotations

import pytest
import torch

from actors.config import LORA_TARGETS, LoraConfig
from jobs.config import load_config
from model.lora import (
    ADAPTER,
    adapter_state,
    adapters_disabled,
    add_lora,
    block_linears,
    is_adapter_key,
    merged_state_dict,
    save_adapter,
    sync_bytes,
)
from rl.advantages import group_advantages
from rl.config import AlgoConfig
from rl.update import PlainEngine, score_views, unigrpo_update
from tests.rl.conftest import text_batch, tiny_net

LORA = LoraConfig(rank=4, alpha=12.0)  # scaling s = 3
LR = 0.5


def adapted(seed: int = 0, lora: LoraConfig = LORA) -> torch.nn.Module:
    """The 2-layer fp64 tiny net with adapters whose B is nonzero (at B = 0 the gradient of A is 0)."""
    network = add_lora(tiny_net(seed), lora)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, tensor in adapter_state(network).items():
            if ".lora_B." in name:
                tensor.copy_(torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype) * 0.1)
    return network


def update_batch():
    batch = text_batch({"a": 2, "b": 2}, rewards=[1.0, 0.0, 0.2, 0.9], seed=4)
    return batch, group_advantages(batch.total, batch.uid)


def test_adapters_wrap_every_block_linear_and_never_the_lm_head():
    network = add_lora(tiny_net(0), LORA)
    trainable = [name for name, p in network.named_parameters() if p.requires_grad]
    expected = [f"model.transformer.blocks.{i}.{layer}.lora_{ab}.{ADAPTER}.weight"
                for i in range(2) for layer in LORA_TARGETS for ab in "AB"]
    assert trainable == expected  # 2 blocks x 7 linears x (A, B); the frozen base holds the rest
    assert "model.transformer.ff_out.weight" in network.state_dict()  # the LM head keeps its key: no adapter
    assert block_linears(network) == sorted(LORA_TARGETS)
    a = network.model.transformer.blocks[0].q_proj.lora_A[ADAPTER].weight
    assert a.shape == (4, 32) and a.dtype == torch.float64
    assert all(not t.any() for n, t in adapter_state(network).items() if ".lora_B." in n)  # starts as the base
    again = add_lora(tiny_net(0), LORA)  # same seed, same adapters: every rank and worker agrees
    assert all(torch.equal(t, adapter_state(again)[n]) for n, t in adapter_state(network).items())


def test_a_lora_update_equals_the_chain_rule_through_the_merged_weight_and_keeps_the_base_bit_for_bit():
    batch, advantages = update_batch()
    cfg = AlgoConfig(group_size=2, mu=1, beta=0.05)
    network = adapted()
    before = {name: tensor.detach().clone() for name, tensor in network.state_dict().items()}

    plain = tiny_net(0)  # the merged policy without peft; its gradient G = dL/dW per weight
    plain.load_state_dict(merged_state_dict(before, LORA))
    grads: dict[str, torch.Tensor] = {}
    for name, param in plain.named_parameters():
        param.register_hook(lambda g, name=name: grads.__setitem__(name, grads.get(name, 0) + g))
    expected_stats = unigrpo_update(PlainEngine(plain, torch.optim.SGD(plain.parameters(), lr=0.0), None),
                                    tiny_net(0), batch, advantages, cfg, step=1, run_seed=3, micro_batch_size=2)

    trainable = [p for p in network.parameters() if p.requires_grad]
    engine = PlainEngine(network, torch.optim.SGD(trainable, lr=LR), None)
    stats = unigrpo_update(engine, network, batch, advantages, cfg, step=1, run_seed=3, micro_batch_size=2)
    assert stats["kl_ref"] != 0 and stats["kl_ref"] == pytest.approx(expected_stats["kl_ref"], rel=1e-9)  # ref: base
    assert stats["pg_loss"] == pytest.approx(expected_stats["pg_loss"], rel=1e-9)

    after = network.state_dict()
    s = LORA.alpha / LORA.rank
    moved = 0
    for name, value in after.items():
        if not is_adapter_key(name):
            assert torch.equal(value, before[name]), f"{name}: the frozen base moved"
            continue
        layer = name.split(".lora_")[0]
        a, b = before[f"{layer}.lora_A.{ADAPTER}.weight"], before[f"{layer}.lora_B.{ADAPTER}.weight"]
        g = grads[f"{layer}.weight"]  # [out, in]
        gradient = s * g @ a.T if ".lora_B." in name else s * b.T @ g  # [out, r] / [r, in]
        torch.testing.assert_close(value, before[name] - LR * gradient, rtol=0, atol=1e-12, msg=name)
        moved += int(not torch.equal(value, before[name]))
    assert moved == 28  # every adapter tensor moved


def test_reference_logprobs_with_adapters_disabled_equal_the_base_bit_for_bit():
    batch, _ = update_batch()
    network, base = adapted(), tiny_net(0)
    from rl.estimators import build_views

    views = build_views(batch, AlgoConfig(group_size=2), iteration=1, step=1, run_seed=0, mask_token_id=47)
    rows = torch.arange(batch.num_rows)
    with torch.no_grad():
        expected = score_views(base, batch, views, rows, chunk_size=64)[0]
        adapted_logp = score_views(network, batch, views, rows, chunk_size=64)[0]
        with adapters_disabled(network):
            reference = score_views(network, batch, views, rows, chunk_size=64)[0]
    assert torch.equal(reference, expected)
    assert not torch.equal(adapted_logp, expected)  # the adapters do change the policy
    assert sum(p.requires_grad for p in network.parameters()) == 28  # trainable again after the block


def test_merged_export_and_peft_adapter_give_the_same_logits(tmp_path):
    from peft import PeftModel

    import model
    from model.checkpoint import save_state_dict
    from model.tiny import tiny_model

    loaded = tiny_model(0)
    network = add_lora(tiny_model(0).network, LORA)
    with torch.no_grad():
        for name, tensor in adapter_state(network).items():
            if ".lora_B." in name:
                tensor.fill_(0.05)
    ids = torch.randint(0, 500, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        policy = network(ids)  # [2, 9, V]
    save_state_dict(merged_state_dict(network.state_dict(), LORA), loaded.network.config, loaded.tokenizer,
                    tmp_path / "export")  # the published keys (save_state_dict checks them)
    save_adapter(network.state_dict(), LORA, tmp_path / "export" / "adapter")
    merged = model.load(tmp_path / "export").network
    peft_model = PeftModel.from_pretrained(tiny_model(0).network, tmp_path / "export" / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(merged(ids), policy, rtol=0, atol=1e-5)
        torch.testing.assert_close(peft_model(ids), policy, rtol=0, atol=0)  # the same unmerged forward
        torch.testing.assert_close(peft_model(ids), merged(ids), rtol=0, atol=1e-5)
    assert peft_model.peft_config["default"].r == 4 and peft_model.peft_config["default"].lora_alpha == 12.0


def test_mmada_networks_take_adapters_too():
    from model.tiny import tiny_mmada_model

    network = add_lora(tiny_mmada_model(0).network, LoraConfig(rank=2, target_modules=("q_proj", "v_proj")))
    assert len(adapter_state(network)) == 2 * network.config.n_layers * 2


def test_adapter_only_sync_is_under_5_percent_of_a_full_one_at_rank_128_on_the_llada_8b_shape():
    from model.network import BackboneConfig, MaskedDiffusionLM

    tiny = adapted()  # the formula against the tensors peft actually makes (fp64: 8 bytes a value)
    adapters, full = sync_bytes(tiny_net(0), LORA, torch.float64)
    assert adapters == sum(t.numel() * 8 for t in adapter_state(tiny).values())
    assert full == sum(t.numel() * 8 for n, t in tiny.state_dict().items() if not is_adapter_key(n))
    llada_8b = BackboneConfig(d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288,
                              vocab_size=126464, embedding_size=126464)
    with torch.device("meta"):
        network = MaskedDiffusionLM(llada_8b)  # shapes, no weights
    adapters, full = sync_bytes(network, LoraConfig(rank=128, alpha=256.0))
    # per block: q, k, v, attn_out 128 x (4096 + 4096) each, ff_proj, up_proj, ff_out 128 x (4096 + 12288) each
    per_block = 4 * 128 * 8192 + 3 * 128 * 16384  # 10,485,760 values
    assert adapters == 32 * per_block * 2 and full == 8_015_581_184 * 2  # bf16
    assert adapters / full == pytest.approx(0.04186, abs=1e-5)  # 0.67 GB of 16.0 GB: the target is <= 5 %


def test_a_model_lacking_a_target_layer_fails_naming_the_key_and_the_valid_names():
    network = tiny_net(0)
    del network.model.transformer.blocks[1].up_proj  # a checkpoint whose blocks lack up_proj
    with pytest.raises(ValueError, match=r"learner\.lora\.target_modules: \['up_proj'\] not found .*valid names: "
                                         r"attn_out, ff_out, ff_proj, k_proj, q_proj, v_proj$"):
        add_lora(network, LORA)
    with pytest.raises(ValueError, match=r"learner\.lora\.target_modules: Linear has no transformer blocks"):
        add_lora(torch.nn.Linear(2, 2), LORA)
    with pytest.raises(ValueError, match="already has adapters"):
        add_lora(add_lora(tiny_net(0), LORA), LORA)
    with pytest.raises(ValueError, match="the state has no adapter tensors"):
        save_adapter(tiny_net(0).state_dict(), LORA, "/nonexistent/adapter")


@pytest.mark.parametrize("setting,message", [
    ("learner.lora.rank=0", r"learner\.lora\.rank: 0; need a positive adapter rank"),
    ("learner.lora.alpha=0", r"learner\.lora\.alpha: 0(\.0)? must be positive"),
    ("learner.lora.dropout=1.0", r"learner\.lora\.dropout: 1\.0 must lie in \[0, 1\)"),
    ("learner.lora.target_modules=[q_proj, lm_head]", r"learner\.lora\.target_modules: \['q_proj', 'lm_head'\]; use "
                                                      r"a non-empty list of q_proj, k_proj"),
])
def test_bad_lora_settings_fail_at_config_load_naming_the_key(setting, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [setting])
