"""LoRA adapters on the block linears of a `MaskedDiffusionLM`, through peft (docs/lora.md).

peft's `inject_adapter_in_model` replaces each chosen `nn.Linear` of our own module in place by a peft
`lora.Linear` (`base_layer` + `lora_A` + `lora_B`), so the network keeps its class and its methods
(`hidden_states`, `lm_head`: what the sampler and the update call) and only the adapted layers' keys change
(`...q_proj.weight` becomes `...q_proj.base_layer.weight`, plus `...q_proj.lora_A.default.weight` and
`...q_proj.lora_B.default.weight`). Adapters are named by full module path, so the LM head (also called
`ff_out`, at `model.transformer.ff_out`) never gets one. The base is frozen, the adapters trainable.

What else lives here: the reference policy is the same network under `adapters_disabled` (no second copy);
`adapter_state` names the adapter tensors (what a weight sync sends); `merged_state_dict` turns a full state
of the adapted network into the published keys (W + (alpha / rank) · B A); `save_adapter` writes the
adapter in PEFT's own layout, which `peft.PeftModel.from_pretrained(base, directory)` loads.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

ADAPTER = "default"  # peft's adapter name: the one adapter we train
TARGETS_KEY = "learner.lora.target_modules"
BASE_SUFFIX = ".base_layer.weight"  # key suffix of an adapted layer's frozen weight
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"  # PEFT's file names
PEFT_PREFIX = "base_model.model."  # key prefix of a PeftModel's adapter file (PeftModel -> LoraModel -> ours)


def block_linears(network: nn.Module) -> list[str]:
    """The names of the `nn.Linear` layers every block of `network` has (the valid adapter targets)."""
    blocks = getattr(getattr(getattr(network, "model", None), "transformer", None), "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or not len(blocks):
        raise ValueError(f"{TARGETS_KEY}: {type(network).__name__} has no transformer blocks "
                         "(model.transformer.blocks); LoRA needs a LLaDA / MMaDA network")
    per_block = [{name for name, child in block.named_children()  # an adapted layer wraps its Linear as base_layer
                  if isinstance(getattr(child, "base_layer", child), nn.Linear)} for block in blocks]
    return sorted(set.intersection(*per_block))


def target_paths(network: nn.Module, target_modules: tuple[str, ...] | list[str]) -> list[str]:
    """Full module paths of the layers to adapt; raises naming the key and the valid names when a block
    lacks one (a checkpoint without that layer, or a name that is no block linear)."""
    valid = block_linears(network)
    missing = [name for name in target_modules if name not in valid]
    if missing:
        raise ValueError(f"{TARGETS_KEY}: {missing} not found as a linear layer of every "
                         f"block of this model (model.transformer.blocks.<i>.<name>); valid names: {', '.join(valid)}")
    blocks = network.model.transformer.blocks
    return [f"model.transformer.blocks.{i}.{name}" for i in range(len(blocks)) for name in target_modules]


def peft_config(lora: Any, paths: list[str]) -> Any:
    """peft's LoraConfig for `lora` (`actors.config.LoraConfig`: rank, alpha, dropout) on the layers `paths`."""
    from peft import LoraConfig

    return LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
                      target_modules=list(paths), init_lora_weights=True)


def add_lora(network: nn.Module, lora: Any, *, seed: int = 0) -> nn.Module:
    """Inject adapters into `network` in place and freeze everything else; returns `network`.

    A = kaiming-uniform drawn right after `torch.manual_seed(seed)` inside `fork_rng` (every learner rank and
    rollout worker builds the same adapters; the global RNG state is restored after), B = 0: the adapted
    network starts equal to the base."""
    from peft import inject_adapter_in_model

    if has_lora(network):
        raise ValueError("add_lora: this network already has adapters (learner.lora is applied once per network)")
    config = peft_config(lora, target_paths(network, lora.target_modules))
    network.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, network, adapter_name=ADAPTER)
    for name, param in network.named_parameters():
        param.requires_grad_(is_adapter_key(name))
    network.lora = lora
    return network


def is_adapter_key(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def has_lora(network: nn.Module) -> bool:
    return getattr(network, "lora", None) is not None


def lora_scaling(lora: Any) -> float:
    return lora.alpha / lora.rank


def sync_bytes(network: nn.Module, lora: Any, dtype: torch.dtype = torch.bfloat16) -> tuple[int, int]:
    """(bytes of an adapter-only weight sync, bytes of a full one) for `network` without adapters (it may live
    on the meta device: shapes only) at `dtype`: each adapted [out, in] layer sends rank · (in + out) values."""
    size = torch.empty((), dtype=dtype).element_size()
    full = sum(tensor.numel() for tensor in network.state_dict().values()) * size
    adapters = 0
    for path in target_paths(network, lora.target_modules):
        layer = network.get_submodule(path)
        adapters += lora.rank * (layer.in_features + layer.out_features)
    return adapters * size, full


@contextlib.contextmanager
def adapters_disabled(network: nn.Module) -> Iterator[nn.Module]:
    """Inside the block `network` computes as its base (the reference policy); a network without adapters is
    left as it is. peft's own switch: adapters are skipped in the forward, and made trainable again after."""
    layers = []
    if has_lora(network):  # peft is imported only for a network that has adapters
        from peft.tuners.lora import LoraLayer

        layers = [module for module in network.modules() if isinstance(module, LoraLayer)]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield network
    finally:
        for layer in layers:
            layer.enable_adapters(True)


def adapter_state(network: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors (lora_A, lora_B of every adapted layer) by key, in state-dict order (live tensors)."""
    return {name: tensor for name, tensor in network.state_dict(keep_vars=True).items() if is_adapter_key(name)}


def merged_state_dict(state: Mapping[str, torch.Tensor], lora: Any) -> dict[str, torch.Tensor]:
    """A full state of the adapted network -> the published keys, each adapted weight merged:
    W [out, in] = W_base + (alpha / rank) · B [out, r] @ A [r, in], computed in fp32 at least, cast to W's dtype.
    A state without adapter keys is returned as it is."""
    scaling = lora_scaling(lora)
    merged: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if is_adapter_key(name):
            continue
        if name.endswith(BASE_SUFFIX):
            layer = name[: -len(BASE_SUFFIX)]
            wide = torch.promote_types(tensor.dtype, torch.float32)  # bf16 merges in fp32, fp64 stays fp64
            lora_a = state[f"{layer}.lora_A.{ADAPTER}.weight"].to(wide)  # [r, in]
            lora_b = state[f"{layer}.lora_B.{ADAPTER}.weight"].to(wide)  # [out, r]
            merged[f"{layer}.weight"] = (tensor.to(wide) + scaling * (lora_b @ lora_a)).to(tensor.dtype)
        else:
            merged[name] = tensor
    return merged


def peft_adapter_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Adapter tensors under the keys of PEFT's adapter file (`base_model.model.<layer>.lora_A.weight`)."""
    return {PEFT_PREFIX + name.replace(f".{ADAPTER}.", "."): tensor.detach().to("cpu").contiguous()
            for name, tensor in state.items() if is_adapter_key(name)}


def save_adapter(state: Mapping[str, torch.Tensor], lora: Any, path: str | Path) -> Path:
    """Write `adapter_config.json` + `adapter_model.safetensors` (PEFT's layout) into `path`, atomically.

    state: the adapted network's tensors (at least its adapter keys; the adapted layers are read from them)."""
    from safetensors.torch import save_file

    from model.checkpoint import _move_into_place

    path = Path(path)
    tensors = peft_adapter_state(state)
    if not tensors:
        raise ValueError(f"save_adapter({path}): the state has no adapter tensors (keys with .lora_A. / .lora_B.)")
    layers = sorted({name.split(".lora_")[0] for name in state if is_adapter_key(name)})
    config = peft_config(lora, layers).to_dict()
    config["target_modules"] = layers  # a set in peft's dict: JSON needs a list
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        (staging / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, default=str) + "\n")
        save_file(tensors, str(staging / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        _move_into_place(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path
