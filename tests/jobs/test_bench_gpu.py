"""`python -m jobs.bench gpu` on CPU with the tiny twin: what it reports, checked against independent counts
(timings are never asserted), and the 8B layout its builder makes on the meta device."""

from __future__ import annotations

import json

import pytest
import torch

from jobs.bench.__main__ import main as bench_main
from jobs.bench.gpu import backbone_config, bench_update, build_network, parameter_count, rollout_batch
from model.tiny import tiny_model

SMALL = ["--size", "tiny", "--device", "cpu", "--dtype", "fp32", "--batch", "3", "--prompt-length", "8",
         "--gen-length", "16", "--block-length", "8", "--steps", "4", "--groups", "2", "--samples", "2"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def weight_sum(network) -> float:
    return sum(float(p.detach().double().sum()) for p in network.parameters())


def test_cpu_run_reports_what_it_measured(tmp_path):
    out = tmp_path / "gpu.json"
    assert bench_main(["gpu", *SMALL, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report) == {"torch", "device", "device_name", "dtype", "size", "model", "build", "sampler", "modes",
                           "update", "lora", "sync"}
    assert report["lora"] is None and report["sync"] is None  # full fine-tuning
    assert [row["mode"] for row in report["modes"]] == ["none", "dual", "dual@0.9"]  # the default modes
    none, dual, fast = report["modes"]
    assert none["forwards"] == dual["forwards"] == 4 and 2 <= fast["forwards"] <= 16
    assert none["agreement"] == 1.0 and all(row["tokens_per_s"] * row["sampler_s"] == pytest.approx(3 * 16)
                                            for row in report["modes"])
    assert (report["device"], report["dtype"], report["size"]) == ("cpu", "fp32", "tiny")
    assert report["build"]["params"] == sum(p.numel() for p in tiny_model().network.parameters())
    assert report["build"]["allocated_gib"] is None  # no CUDA memory counters on CPU
    assert [row["temperature"] for row in report["sampler"]] == [0.0, 0.9]
    for row in report["sampler"]:
        assert row["generated_tokens"] == 3 * 16  # batch x gen_length, none left as [MASK]
        assert row["tokens_per_s"] * row["wall_s"] == pytest.approx(3 * 16)
        assert row["n_forwards"] == 4  # one per step: 2 blocks x 2 steps
        assert row["overhead_ratio"] > 0 and row["inner_ratio"] > 0 and row["peak_gib"] is None
    update = report["update"]
    assert (update["rows"], update["seq_len"], update["mu"]) == (4, 8 + 16, 2)
    assert update["weights_changed"] and update["checksum_before"] != update["checksum_after"]
    assert update["grad_norm"] > 0 and "AdamW" in update["optimizer"] and "float32" in update["optimizer"]


def test_skip_update_builds_no_reference_and_leaves_update_empty(tmp_path):
    out = tmp_path / "gpu.json"
    assert bench_main(["gpu", *SMALL, "--temperatures", "0", "--skip-update", "--modes", "", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["update"] is None and len(report["sampler"]) == 1 and report["modes"] == []


def test_builder_matches_the_tiny_twin_and_the_update_moves_the_weights():
    config = backbone_config("tiny")
    network = build_network(config, device="cpu", dtype=torch.float32, seed=0)
    twin = tiny_model(seed=0).network
    assert network.state_dict().keys() == twin.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(network.state_dict().values(), twin.state_dict().values()))
    ref = build_network(config, device="cpu", dtype=torch.float32, seed=1).requires_grad_(False)
    ref_before = [p.clone() for p in ref.parameters()]
    batch = rollout_batch(config, groups=2, samples=2, prompt_length=6, gen_length=8, steps=4)
    assert batch.scored_mask.sum() == 4 * 8  # no EOS drawn: every response token is scored
    before = [p.detach().clone() for p in network.parameters()]
    first_sum = weight_sum(network)
    result = bench_update(network, ref, batch, device=torch.device("cpu"), mu=2)
    assert any(not torch.equal(a, p) for a, p in zip(before, network.parameters()))
    assert all(torch.equal(a, p) for a, p in zip(ref_before, ref.parameters()))  # π_ref stays frozen
    assert result["checksum_after"] == pytest.approx(weight_sum(network), abs=1e-9)
    assert first_sum != result["checksum_before"] != result["checksum_after"]  # warm-up and timed update both step
    assert not network.gradient_checkpointing and not network.training


def test_lora_run_trains_the_adapters_only_against_the_base_and_counts_the_sync(tmp_path):
    """`--lora 2` on the tiny twin (2 blocks, d_model 64, MLP 128, fp32): rank × (in + out) adapter values on each
    of the 7 block linears, 4 × 2 × 128 + 3 × 2 × 192 = 2,176 per block; the base never moves."""
    out = tmp_path / "gpu.json"
    assert bench_main(["gpu", *SMALL, "--lora", "2", "--temperatures", "0", "--modes", "", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    adapters, base = 2 * 2_176, sum(p.numel() for p in tiny_model().network.parameters())
    assert report["build"]["params"] == base  # built before the adapters
    assert report["lora"] == {"rank": 2, "alpha": 1.0, "adapter_params": adapters, "allocated_gib": None}
    update = report["update"]
    assert update["trainable_params"] == adapters and update["reference"] == "the policy with adapters disabled"
    assert update["weights_changed"]
    sync = report["sync"]
    assert (sync["tensors"], sync["adapter_bytes"], sync["full_bytes"]) == (2 * 7 * 2, adapters * 4, base * 4)
    assert sync["fraction"] == pytest.approx(adapters / base)

    from actors.config import LoraConfig
    from model.lora import add_lora, is_adapter_key

    config = backbone_config("tiny")
    network = add_lora(build_network(config, device="cpu", dtype=torch.float32, seed=0), LoraConfig(rank=2, alpha=1.0))
    before = {name: p.detach().clone() for name, p in network.named_parameters()}
    batch = rollout_batch(config, groups=2, samples=2, prompt_length=6, gen_length=8, steps=4)
    bench_update(network, network, batch, device=torch.device("cpu"), mu=2)
    after = dict(network.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before if not is_adapter_key(n))  # the base, bit for bit
    assert any(not torch.equal(before[n], after[n]) for n in before if ".lora_B." in n)  # B moved from 0


def test_8b_layout_on_the_meta_device_has_the_published_parameter_count():
    network = build_network(backbone_config("8b"), device="meta", dtype=torch.bfloat16)
    assert all(p.is_meta and p.dtype == torch.bfloat16 for p in network.parameters())
    assert len(network.state_dict()) == 291
    assert parameter_count(network) == 8_015_581_184  # LLaDA-8B, docs/models.md §1.2
    assert network.state_dict()["model.transformer.wte.weight"].shape == (126464, 4096)
    assert network.state_dict()["model.transformer.blocks.31.ff_proj.weight"].shape == (12288, 4096)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--gen-length", "12"], "gen_length: 12 is not a multiple of block_length=8"),
        (["--steps", "3"], "steps: 3 is not a multiple of the number of blocks"),
        (["--samples", "0"], "--samples: 0 is not a positive integer"),
        (["--size", "70b"], "invalid choice: '70b'"),
        (["--lora", "-1"], "--lora: -1; give an adapter rank >= 1, or 0 for full fine-tuning"),
    ],
)
def test_bad_options_name_the_problem(capsys, extra, message):
    with pytest.raises(SystemExit):
        bench_main(["gpu", *SMALL, *extra])
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where CUDA is missing")
def test_cuda_device_without_cuda_is_an_error(capsys):
    with pytest.raises(SystemExit):
        bench_main(["gpu", *SMALL, "--device", "cuda"])
    assert "CUDA is not available here; use --device cpu" in capsys.readouterr().err
