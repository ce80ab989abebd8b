"""`python -m jobs.bench sampler --lora RANK`: a rollout worker's LoRA policy, unmerged vs merged (docs/lora.md).

On the same prompts, weights and seed, per size of `jobs.bench.sampler.SIZES`:
- unmerged: the adapted network as a LoRA worker holds it (peft's `lora.Linear` in every adapted layer's
  forward: base(x) + (alpha / rank) · B(A(x)));
- merged: a plain network whose adapted weights hold W_base + (alpha / rank) · B A (`model.lora.merged_state_dict`);
- re-merge: what a merged worker would pay per weight sync to stay exact: copy back its kept base weights
  and add the new (alpha / rank) · B A into every adapted layer.
Reported: sampler wall time (median over the repeats after a warmup), tokens/s, merged ÷ unmerged speed, the
re-merge time, and the bytes an adapter-only sync moves against a full one at this size and at LLaDA-8B's
shape (meta device: shapes only).
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch

from actors.config import LoraConfig
from model.lora import ADAPTER, BASE_SUFFIX, adapter_state, add_lora, merged_state_dict, sync_bytes
from model.network import BackboneConfig, MaskedDiffusionLM
from model.sampling import generate_text

LLADA_8B = dict(d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288, vocab_size=126464,
                embedding_size=126464)  # docs/models.md §1.2


def lora_pair(network: torch.nn.Module, rank: int) -> tuple[torch.nn.Module, torch.nn.Module, LoraConfig]:
    """(unmerged adapted copy of `network` with trained-looking adapters, merged plain copy, the LoraConfig)."""
    lora = LoraConfig(rank=rank, alpha=2.0 * rank)
    adapted = add_lora(copy.deepcopy(network), lora).eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in adapter_state(adapted).items():
            if ".lora_B." in name:  # B = 0 would leave merged == base
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.01)
    merged = copy.deepcopy(network).eval().requires_grad_(False)
    merged.load_state_dict(merged_state_dict(adapted.state_dict(), lora))
    return adapted, merged, lora


def remerge_seconds(adapted: torch.nn.Module, merged: torch.nn.Module, lora: LoraConfig) -> float:
    """Wall time of one exact re-merge into `merged`: W.copy_(W_base); W += s · B A, every adapted layer."""
    state, targets = adapted.state_dict(), merged.state_dict()
    start = time.perf_counter()
    with torch.no_grad():
        for name, base in state.items():
            if name.endswith(BASE_SUFFIX):
                layer = name[: -len(BASE_SUFFIX)]
                weight = targets[f"{layer}.weight"]
                weight.copy_(base)
                weight.addmm_(state[f"{layer}.lora_B.{ADAPTER}.weight"], state[f"{layer}.lora_A.{ADAPTER}.weight"],
                              alpha=lora.alpha / lora.rank)
    return time.perf_counter() - start


def timed(network, prompts, knobs: dict, repeats: int) -> float:
    generate_text(network, prompts, **{**knobs, "gen_length": knobs["block_length"], "steps": 2})  # warmup
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            generate_text(network, prompts, **knobs)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def compare_lora(shape: dict[str, int], network, mask_id: int, pad_id: int, prompts, rank: int,
                 temperature: float) -> dict[str, Any]:
    """One size: unmerged vs merged sampler time, re-merge time, sync bytes."""
    adapted, merged, lora = lora_pair(network, rank)
    knobs = dict(gen_length=shape["gen_length"], steps=shape["steps"], block_length=shape["block_length"],
                 temperature=temperature, mask_id=mask_id, pad_id=pad_id)
    unmerged_s = timed(adapted, prompts, knobs, shape["repeats"])
    merged_s = timed(merged, prompts, knobs, shape["repeats"])
    remerge_s = statistics.median(remerge_seconds(adapted, merged, lora) for _ in range(3))
    adapter_bytes, full_bytes = sync_bytes(network, lora, next(network.parameters()).dtype)
    tokens = len(prompts) * shape["gen_length"]
    return dict(rank=rank, temperature=temperature, unmerged_s=unmerged_s, merged_s=merged_s,
                unmerged_tokens_per_s=tokens / unmerged_s, merged_tokens_per_s=tokens / merged_s,
                merged_speedup=unmerged_s / merged_s, remerge_s=remerge_s, adapter_sync_bytes=adapter_bytes,
                full_sync_bytes=full_bytes)


def llada_8b_sync_bytes(rank: int) -> dict[str, Any]:
    """Adapter-only vs full sync bytes at LLaDA-8B's shape, bf16, every block linear adapted."""
    with torch.device("meta"):
        network = MaskedDiffusionLM(BackboneConfig(**LLADA_8B))
    adapter_bytes, full_bytes = sync_bytes(network, LoraConfig(rank=rank, alpha=2.0 * rank))
    return dict(rank=rank, adapter_sync_bytes=adapter_bytes, full_sync_bytes=full_bytes,
                ratio=adapter_bytes / full_bytes)


def print_row(size: str, row: dict[str, Any]) -> None:
    print(f"{size:>5} r={row['rank']:<4} temp {row['temperature']:<4g} unmerged {row['unmerged_s']:8.3f} s "
          f"({row['unmerged_tokens_per_s']:8.1f} tok/s)  merged {row['merged_s']:8.3f} s "
          f"({row['merged_tokens_per_s']:8.1f} tok/s)  merged speed-up {row['merged_speedup']:5.2f}x  "
          f"re-merge {1e3 * row['remerge_s']:8.2f} ms  sync {row['adapter_sync_bytes']:,} of "
          f"{row['full_sync_bytes']:,} bytes", flush=True)
