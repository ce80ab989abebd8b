"""The memory planner (`python -m jobs.bench memory`): parameter counts of the published shapes, ZeRO's
partitioning, the activation formula against torch's measured CPU peak on the tiny model, and the two GPU
measurements of docs/gpu.md."""

from __future__ import annotations

import json

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from jobs.bench.gpu import LLADA_8B
from jobs.bench.memory import (
    GIB,
    MEASUREMENTS,
    LearnerSetup,
    PlanError,
    activation_bytes,
    block_saved_bytes,
    gpu_bench_predictions,
    learner_rows,
    lora_parameter_count,
    main,
    parameter_count,
    published_shapes,
    resolve_shape,
    sampler_bytes,
    worker_rows,
)
from model.checkpoint import config_to_json
from model.tiny import tiny_model
from rl.logprobs import token_logprobs

D, LAYERS, MLP, VOCAB = 4096, 32, 12288, 126464  # LLaDA-8B's published shape (docs/models.md §1.1)


def test_parameter_counts_of_the_published_shapes():
    per_block = 4 * D * D + 3 * D * MLP + 2 * D  # q, k, v, attn_out; ff_proj, up_proj, ff_out; two RMSNorms
    assert parameter_count(LLADA_8B) == 2 * VOCAB * D + LAYERS * per_block + D == 8_015_581_184
    mmada = published_shapes()["mmada-8b"]
    assert parameter_count(mmada) == 2 * 134656 * D + LAYERS * per_block + D == 8_082_690_048  # docs/models.md §1.4
    assert mmada.mmada["codebook_size"] == 8192 and mmada.mmada["num_vq_tokens"] == 1024


def test_lora_adapters_count_rank_times_in_plus_out():
    attention = 4 * 128 * (D + D)  # q, k, v, attn_out: A [128, 4096] + B [4096, 128]
    mlp = 2 * 128 * (D + MLP) + 128 * (MLP + D)  # ff_proj, up_proj [12288, 4096]; ff_out [4096, 12288]
    every = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")
    assert lora_parameter_count(LLADA_8B, 128, every) == LAYERS * (attention + mlp) == 335_544_320
    assert lora_parameter_count(LLADA_8B, 8, ("q_proj", "v_proj")) == LAYERS * 2 * 8 * 2 * D


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_zero_partitions_optimizer_then_gradients_then_weights(stage):
    """Full fine-tuning of 8B in bf16 on 8 ranks; the ZeRO paper's accounting per rank (Ψ parameters, N ranks):
    stage 0: 2Ψ + 2Ψ + 12Ψ; 1: 2Ψ + 2Ψ + 12Ψ/N; 2: 2Ψ + (2Ψ + 12Ψ)/N; 3: (2Ψ + 2Ψ + 12Ψ)/N; plus the reference."""
    psi, n = 8_015_581_184, 8
    setup = LearnerSetup(params=psi, trainable=psi, weight_bytes=2, trainable_bytes=2, optimizer_bytes=12, ranks=n,
                         zero_stage=stage, reference="copy", activations={"retained": 0, "peak": 0},
                         optimizer_how="fp32 master + 2 fp32 moments")
    rows = {r.what: r.bytes for r in learner_rows(setup)}
    expected = {0: (2 * psi, 2 * psi, 12 * psi), 1: (2 * psi, 2 * psi, 12 * psi // n),
                2: (2 * psi, 2 * psi // n, 12 * psi // n), 3: (2 * psi // n, 2 * psi // n, 12 * psi // n)}[stage]
    assert (rows["base weights"], rows["gradients"], rows["optimizer state"]) == expected
    assert rows["reference"] == 2 * psi


def test_lora_has_no_reference_copy_and_small_optimizer_state():
    setup = LearnerSetup(params=1000, trainable=10, weight_bytes=2, trainable_bytes=4, optimizer_bytes=12, ranks=1,
                         zero_stage=0, reference="adapters_off", activations={"retained": 5, "peak": 7},
                         optimizer_how="x")
    rows = {r.what: r.bytes for r in learner_rows(setup)}
    assert rows == {"base weights": 2000, "trainable (LoRA adapters)": 40, "gradients": 40, "optimizer state": 120,
                    "reference": 0, "activations (peak of a micro-batch)": 7}


def test_lora_rows_match_the_learner_network():
    """The plan's base and adapter bytes equal the tensors of the learner's own LoRA network (model/lora.py on the
    tiny twin in bf16: peft's adapters take the base's dtype)."""
    from actors.config import LoraConfig
    from jobs.bench.memory import plan_for
    from jobs.config import load_config
    from model.lora import add_lora, is_adapter_key

    cfg = load_config(None, ["data.train=x.jsonl", "model.path=tiny", "learner.dtype=bf16", "learner.lora.rank=4"])
    rows = {r.what: r.bytes for r in plan_for(cfg).learner}
    network = add_lora(tiny_model(dtype=torch.bfloat16).network, LoraConfig(rank=4))
    sizes = {adapter: sum(p.numel() * p.element_size() for name, p in network.named_parameters()
                          if is_adapter_key(name) == adapter) for adapter in (True, False)}
    assert rows["trainable (LoRA adapters)"] == rows["gradients"] == sizes[True]
    assert rows["base weights"] == sizes[False]
    assert rows["optimizer state"] == 12 * sizes[True] // 2  # fp32 master + 2 moments per bf16 adapter value


@pytest.mark.parametrize("stage,reference", [(2, 2 * 8_015_581_184), (3, 2 * 8_015_581_184 // 8)])
def test_full_fine_tuning_reference_is_a_copy_or_partitioned_under_zero_3(stage, reference):
    from jobs.bench.memory import plan_for
    from jobs.config import CONFIG_DIR, load_config

    cfg = load_config(CONFIG_DIR / "llada8b_gsm8k_full_8gpu.yaml", [f"learner.zero_stage={stage}"])
    assert {r.what: r.bytes for r in plan_for(cfg).learner}["reference"] == reference


def test_block_activations_of_the_8b_shape_by_hand():
    """Per token and layer in bf16: two RMSNorms keep an fp32 input (4·d), the normalised and the scaled output
    (2·d each); q, k, v, SDPA's output (2·d each) and its log-sum-exp (4 × 32 heads); the MLP's gate, SiLU, up and
    product (2 × 12288 each)."""
    norms = 2 * (4 * D + 2 * D + 2 * D)
    attention = 4 * 2 * D + 4 * 32
    assert block_saved_bytes(LLADA_8B, 1, 2) == norms + attention + 4 * 2 * MLP == 196_736
    assert block_saved_bytes(LLADA_8B, 384, 2) == 384 * 196_736


def _allocated(run) -> tuple[object, int, int]:
    """(run(), the most bytes allocated at once above the start, the bytes still allocated at the end): torch's
    profiler records every CPU allocation and free; their running sum is what is allocated."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = run()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    current = peak = 0
    for event in events:
        current += event.nbytes()
        peak = max(peak, current)
    return out, peak, current


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_formula_matches_the_measured_cpu_peak(dtype, checkpointing):
    """A learner micro-batch on the tiny model (rl/logprobs.py's head, the update's path): what is allocated at the
    end of the forward pass (kept for backward) and the peak of forward + backward, above the weights, against
    `activation_bytes`. The weights' gradients are left out of the measured backward peak (the plan counts them
    apart): they are allocated once, while the peak is reached at the head's first chunk."""
    network = tiny_model(dtype=dtype).network.train()
    network.gradient_checkpointing = checkpointing
    rows, seq_len = 4, 96
    ids = torch.randint(0, 500, (rows, seq_len), generator=torch.Generator().manual_seed(0))
    scored = torch.zeros(rows, seq_len, dtype=torch.bool)
    scored[:, seq_len // 2:] = True  # the response half
    loss, forward_peak, retained = _allocated(
        lambda: token_logprobs(network, ids, None, ids, scored, [None] * rows, chunk_size=1024).sum())
    _, backward_peak, _ = _allocated(loss.backward)
    act = 2 if dtype == torch.bfloat16 else 4
    predicted = activation_bytes(network.config, rows=rows, seq_len=seq_len, scored=int(scored.sum()), act=act,
                                 checkpointing=checkpointing, chunk=1024)
    measured_peak = max(forward_peak, retained + backward_peak)
    assert predicted["peak"] == pytest.approx(measured_peak, rel=0.05)
    # the small per-token tensors (ids, positions, RoPE tables) are left out: a few % more with checkpointing
    assert predicted["retained"] == pytest.approx(retained, rel=0.15)


def test_the_two_gpu_measurements_are_predicted_within_15_percent():
    measured = json.loads(MEASUREMENTS.read_text())
    rows = {row["what"]: row for row in gpu_bench_predictions(measured)}
    assert set(rows) == {"update", "sampler τ 0", "sampler τ 0.9"}
    for row in rows.values():
        assert abs(row["error"]) < 0.15, row
    # the update: weights, π_ref, gradients and two bf16 moments are 5 × 2 bytes per parameter
    assert rows["update"]["predicted_gib"] > 10 * 8_015_581_184 / GIB


def test_a_lora_gpu_run_is_predicted_without_a_reference_and_with_adapter_state_only(tmp_path, capsys):
    """`jobs.bench gpu --lora 128`'s JSON: the base (2 Ψ) stays, the π_ref copy (2 Ψ), the full gradients (2 Ψ)
    and moments (4 Ψ) give way to the adapters' weights, gradients and moments (2 + 2 + 4 bytes each)."""
    measured = json.loads(MEASUREMENTS.read_text())
    full = {row["what"]: row["predicted_gib"] for row in gpu_bench_predictions(measured)}
    adapters = LAYERS * 128 * (4 * (D + D) + 3 * (D + MLP))  # q, k, v, attn_out; ff_proj, up_proj, ff_out
    lora = {row["what"]: row["predicted_gib"] for row in gpu_bench_predictions({**measured, "lora": {"rank": 128}})}
    psi = 8_015_581_184
    assert (lora["update"] - full["update"]) * GIB == pytest.approx(8 * adapters - 8 * psi, abs=1)
    assert (lora["sampler τ 0"] - full["sampler τ 0"]) * GIB == pytest.approx(2 * adapters, abs=1)
    path = tmp_path / "lora.json"
    path.write_text(json.dumps({**measured, "lora": {"rank": 128}}))
    assert main(["--gpu-bench", "--measured", str(path)]) == 0
    assert "update " in capsys.readouterr().out
    path.write_text(json.dumps({"sampler": []}))
    assert main(["--gpu-bench", "--measured", str(path)]) == 2
    assert f"error: --measured {path}: not a `python -m jobs.bench gpu --out` file" in capsys.readouterr().err


def test_sampler_kv_cache_adds_keys_and_values_of_every_layer():
    plain = sampler_bytes(LLADA_8B, rows=8, seq_len=384, block_length=32, act=2, temperature=0.0)
    cached = sampler_bytes(LLADA_8B, rows=8, seq_len=384, block_length=32, act=2, temperature=0.0, cache="dual")
    assert cached - plain == 8 * 384 * 2 * LAYERS * D * 2  # keys and values, [B, H, T, hd] per layer, bf16


def test_a_worker_that_evaluates_plans_for_the_larger_of_a_shard_and_a_heldout_batch():
    """The full-fine-tune recipe: shards of 64 × 8 / 8 = 64 rows, held-out batches of 128 at τ = 0 on the workers
    (eval.where's default); with eval.where: driver the workers sample shards only."""
    from jobs.config import CONFIG_DIR, load_config

    cfg = load_config(CONFIG_DIR / "llada8b_gsm8k_full_8gpu.yaml")
    assert (cfg.eval.batch_size, cfg.eval.where, cfg.rollout.sampler.block_length) == (128, "rollout_workers", 32)
    seq_len = 200 + cfg.rollout.sampler.gen_length  # a 200-token prompt
    shard = sampler_bytes(LLADA_8B, rows=64, seq_len=seq_len, block_length=32, act=2,
                          temperature=cfg.rollout.sampler.temperature)
    heldout = sampler_bytes(LLADA_8B, rows=128, seq_len=seq_len, block_length=32, act=2, temperature=0.0)
    assert heldout > shard
    weights, working = worker_rows(cfg, LLADA_8B, 200)
    assert weights.bytes == 8_015_581_184 * 2
    assert working.bytes == heldout and working.how.endswith("; held-out batches of 128")
    driver = load_config(CONFIG_DIR / "llada8b_gsm8k_full_8gpu.yaml", ["eval.where=driver"])
    assert worker_rows(driver, LLADA_8B, 200)[1].bytes == shard


def test_shapes_come_from_config_json_tiny_twins_or_published_names(tmp_path):
    config, where = resolve_shape("tiny", {"d_model": 32, "n_layers": 3})
    assert (config.d_model, config.n_layers) == (32, 3) and where == "the tiny twin"
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(config_to_json(LLADA_8B, torch.bfloat16)))
    config, where = resolve_shape(str(tmp_path / "ckpt"))
    assert parameter_count(config) == 8_015_581_184 and where.endswith("config.json")
    config, where = resolve_shape(str(tmp_path / "not_yet" / "MMaDA-8B-MixCoT"))
    assert config.model_type == "mmada" and "published MMaDA-8B-MixCoT shape" in where
    with pytest.raises(PlanError, match=r"model.path: '.*/my-model' has no config.json and its name is none of the "
                                         r"published checkpoints LLaDA-8B-Instruct"):
        resolve_shape(str(tmp_path / "my-model"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(PlanError, match="model.path: .*model_type 'gpt2' is not supported"):
        resolve_shape(str(tmp_path / "bad"))


def test_command_line(capsys):
    assert main(["--set", "model.path=tiny", "--set", "learner.gpus_per_rank=1", "--json", "--gpu-gib", "0.001"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["per_gpu_gib"].keys() == {"learner rank"} and plan["fits"] is False
    assert plan["learner_gib"] == pytest.approx(sum(row["gib"] for row in plan["learner"]))
    assert main(["--set", "model.path=/nowhere/unknown"]) == 2
    assert "model.path: '/nowhere/unknown' has no config.json" in capsys.readouterr().err
    assert main(["--gpu-bench"]) == 0
    assert "update" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--gpu-gib", "0"])
