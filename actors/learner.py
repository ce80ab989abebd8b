"""The learner group: n Ray actors forming one torch.distributed group, a DeepSpeed engine on each.

Each `LearnerRank` builds the policy from a `NetworkSource`, keeps the reference policy (a frozen copy, or with
`learner.lora` the same network with its adapters off), and wraps the policy in a DeepSpeed engine with ZeRO
stage 0-3 from `LearnerConfig`; `LearnerGroup` runs step functions on every rank with that rank's shard, sets the
step's learning rate, publishes weights, checkpoints, and counts the non-finite steps every rank skipped together.
Why a 2-rank ZeRO update equals a single-process one, the step-function contract and the learning-rate schedule:
docs/architecture.md §8; non-finite steps: docs/reliability.md §12; LoRA: docs/lora.md §2.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import logging
import os
import socket
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import ray
import torch
from torch import nn

from actors.cluster import bundle_strategy
from actors.config import CheckpointConfig, LearnerConfig
from actors.group import ActorGroup, gather
from actors.network_source import NetworkSource, build_network
from actors.rendezvous import open_listener, pin_interfaces, tcp_store
from actors.weight_sync import (
    BroadcastGroup,
    WeightManifest,
    bucket_payload,
    checksum,
    plan_buckets,
    stream_buckets,
)
from model.lora import is_adapter_key, merged_state_dict
from rl.lr_schedule import check_schedule, learning_rate, set_learning_rate
from rl.update import all_finite

CHECKPOINT_TAG = "learner"
log = logging.getLogger(__name__)

# -- step functions -----------------------------------------------------------------------------
StepFunction = Callable[..., dict[str, float]]


def resolve_step(fn: str | StepFunction) -> StepFunction:
    """A step function passed as itself, or as a "module:function" path the rank imports (for a function
    defined in a script run as `__main__`, which another process could not import by its pickled name)."""
    if callable(fn):
        return fn
    if isinstance(fn, str) and ":" in fn:
        module_name, _, attr = fn.partition(":")
        return getattr(importlib.import_module(module_name), attr)
    raise TypeError(f"step function {fn!r}: pass the function itself (e.g. actors.learner.unigrpo_step) or a "
                    "'module:function' path")


# -- learning-rate schedule -------------------------------------------------------------------------
def has_lr_schedule(cfg: LearnerConfig) -> bool:
    """False for the defaults (constant lr, no warm-up): the learner then never touches the optimizer's lr."""
    return cfg.lr_warmup_steps > 0 or cfg.lr_decay != "constant"


def scheduled_lr(cfg: LearnerConfig, rl_step: int, total_steps: int | None) -> float:
    """The learning rate of RL step `rl_step` (1-based, as the driver counts) of a run of `total_steps`."""
    if rl_step < 1:
        raise ValueError(f"rl_step: got {rl_step}; RL steps count from 1")
    return learning_rate(rl_step - 1, cfg.lr, total_steps=total_steps, warmup_steps=cfg.lr_warmup_steps,
                         decay=cfg.lr_decay, min_ratio=cfg.min_lr_ratio)


@dataclass(frozen=True)
class StepCounts:
    """A rank's optimizer steps during one `train_step` call."""

    steps: int  # `step()` calls
    skipped: int  # of those, skipped on every rank: a loss or gradient was not finite on some rank
    nonfinite_here: int  # of the skipped ones, those where this rank's own loss or gradients were not finite

    def since(self, before: StepCounts) -> StepCounts:
        return StepCounts(self.steps - before.steps, self.skipped - before.skipped,
                          self.nonfinite_here - before.nonfinite_here)


class NonFiniteUpdates(RuntimeError):
    """`learner.max_nonfinite_steps` RL steps in a row had their whole update skipped; raised by jobs.train once
    the last of them is checkpointed (the weights are those from before the first skipped step)."""

    exit_code = 3  # jobs.train's exit status: neither an input error (2) nor a signal (128 + n)

    def __init__(self, step: int, in_a_row: int, limit: int, checkpoint: Path):
        self.step, self.in_a_row, self.checkpoint = step, in_a_row, checkpoint
        super().__init__(
            f"step {step}: the update of the last {in_a_row} RL steps was skipped entirely (a NaN or inf loss or "
            f"gradient on a learner rank; learner.max_nonfinite_steps is {limit}); stopped after saving step {step} "
            f"to {checkpoint}, whose weights are those from before the first skipped step. The warnings above name "
            "the ranks; once the cause is fixed (learning rate, rewards, a plugin), rerun to resume from it")


@contextlib.contextmanager
def parameter_update_left_out(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Inside the block `optimizer.step()` does nothing (an instance attribute shadows the method)."""
    optimizer.step = lambda *args, **kwargs: None
    try:
        yield
    finally:
        del optimizer.step


class DeepSpeedEngineAdapter:
    """The `rl.update.Engine` protocol (`.module`, `backward(loss)`, `step()`) over a DeepSpeed engine.

    `loss` is this rank's share of a loss normalised by the global batch; see the module docstring, also for
    how a step with a non-finite loss or gradient on any rank is skipped on all of them (`skipped_steps`).
    """

    def __init__(self, engine: Any, world_size: int):
        self.engine, self.world_size = engine, world_size
        self.last_grad_norm: float | None = None
        self.steps = self.skipped_steps = self.nonfinite_here = 0  # counts since the engine was built
        self._finite: torch.Tensor | None = None  # 0-d bool: this rank's losses and gradients since the last step
        for param in engine.module.parameters():
            if param.requires_grad:
                param.register_hook(self._watch)

    def _watch(self, value: torch.Tensor) -> None:
        """A loss, or a gradient as backward produces it (before DeepSpeed reduces or partitions it)."""
        flag = all_finite(value)
        self._finite = flag if self._finite is None else self._finite & flag

    def counts(self) -> StepCounts:
        return StepCounts(self.steps, self.skipped_steps, self.nonfinite_here)

    @property
    def module(self) -> nn.Module:
        return self.engine.module

    def backward(self, loss: torch.Tensor) -> None:
        from deepspeed.runtime.base_optimizer import ZeROOptimizer
        from deepspeed.runtime.utils import register_output_backward_hooks

        self._watch(loss)
        scaled = loss * self.world_size  # undoes DeepSpeed's mean over the data-parallel ranks
        if isinstance(self.engine.optimizer, ZeROOptimizer):
            # `engine(...)` would do both of these, but the rl update calls `engine.module.hidden_states` /
            # `lm_head` directly: reset the per-backward hook state (under ZeRO-3 this also advances the
            # micro-step; without it each micro-batch's gradient overwrites the previous one), and run
            # DeepSpeed's backward prologue from a hook when backward starts, as its output hooks do.
            self.engine.optimizer.clear_backward_seen_flag()
            register_output_backward_hooks(scaled, preprocess_once_fn=self.engine._backward_prologue)
        self.engine.backward(scaled, scale_wrt_gas=False)

    def step(self) -> float | None:
        """Reduce the accumulated gradients, clip, optimizer step, zero the gradients; returns the global
        gradient norm before clipping when DeepSpeed computed one. Skipped on every rank (None) when a loss or
        gradient since the last step was not finite on any rank."""
        local = True if self._finite is None else bool(self._finite)
        self._finite = None
        flag = torch.tensor([int(local)], dtype=torch.int32, device=self.engine.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)  # the learner group
        self.steps += 1
        if flag.item():
            self.engine.step()
            norm = self.engine.get_global_grad_norm()
            self.last_grad_norm = None if norm is None else float(norm)
            return self.last_grad_norm
        with parameter_update_left_out(self.engine.basic_optimizer):
            self.engine.step()
        self.skipped_steps += 1
        self.nonfinite_here += not local
        self.last_grad_norm = None
        return None


@dataclass
class LearnerContext:
    """What a step function gets on each rank."""

    engine: DeepSpeedEngineAdapter
    ref_network: nn.Module
    rank: int
    world_size: int
    config: LearnerConfig
    device: torch.device


def unigrpo_step(ctx: LearnerContext, *, batch: Any, advantages: torch.Tensor, algo: Any, step: int,
                 run_seed: int, num_sequences_global: int) -> dict[str, float]:
    """One UniGRPO update (rl.update.unigrpo_update) on this rank's shard with the global normaliser."""
    from rl.update import unigrpo_update

    return unigrpo_update(ctx.engine, ctx.ref_network, batch, advantages, algo, step=step, run_seed=run_seed,
                          micro_batch_size=ctx.config.micro_batch_size,
                          num_sequences_global=num_sequences_global)


def deepspeed_config(cfg: LearnerConfig, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config for `cfg` (see the module docstring for the accumulation settings)."""
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": cfg.micro_batch_size * world_size,
        "managed_gradient_accumulation": False,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage, "overlap_comm": False},
        "bf16": {"enabled": cfg.dtype == "bf16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
    }
    if cfg.optimizer == "deepspeed_adamw":
        config["optimizer"] = {"type": "AdamW", "params": {
            "lr": cfg.lr, "betas": list(cfg.betas), "eps": cfg.eps, "weight_decay": cfg.weight_decay,
            "torch_adam": True}}
    return config


class LearnerRank:
    """One data-parallel rank; runs as a Ray actor (`LearnerGroup` creates them)."""

    def __init__(self, cfg: LearnerConfig, network_source: NetworkSource, rank: int, world_size: int):
        self.cfg, self.source, self.rank, self.world_size = cfg, network_source, rank, world_size
        self.on_gpu = cfg.gpus_per_rank > 0
        os.environ["DS_ACCELERATOR"] = "cuda" if self.on_gpu else "cpu"  # before deepspeed is imported
        self.device = torch.device("cuda", 0) if self.on_gpu else torch.device("cpu")
        self.engine: Any = None
        self.adapter: DeepSpeedEngineAdapter | None = None
        self.ref_network: nn.Module | None = None
        self.broadcast: BroadcastGroup | None = None
        self.node_ip = ray.util.get_node_ip_address()
        self._listeners: dict[int, socket.socket] = {}  # port -> a socket opened by `endpoint`, not yet used

    def endpoint(self) -> tuple[str, int]:
        """(node IP, port) of a socket listening on this rank's node IP, for the rendezvous (rank 0) or a
        broadcast group; the store that `setup` / `join_broadcast` makes on that port serves it."""
        listener = open_listener(self.node_ip)
        port = listener.getsockname()[1]
        self._listeners[port] = listener
        return self.node_ip, port

    def setup(self, master_addr: str, master_port: int) -> None:
        """Join the process group (all ranks at once) and build the engine and reference network."""
        import deepspeed

        if self.on_gpu:
            torch.cuda.set_device(self.device)
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(self.rank),
                          WORLD_SIZE=str(self.world_size), LOCAL_RANK="0")
        pin_interfaces(self.node_ip)
        backend, timeout = ("nccl" if self.on_gpu else "gloo"), timedelta(minutes=30)
        store = tcp_store(master_addr, master_port, self.rank, self.world_size, timeout,
                          self._listeners.pop(master_port, None))
        torch.distributed.init_process_group(backend, store=store, rank=self.rank, world_size=self.world_size,
                                             timeout=timeout)
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False, timeout=timeout,
                                   rank=self.rank, world_size=self.world_size)  # adopts the group above
        network, _ = build_network(self.source, self.cfg.dtype, self.cfg.lora)
        network = network.to(self.device)
        if self.cfg.lora is None:  # with LoRA the reference is the policy itself, adapters disabled (rl.update)
            self.ref_network = copy.deepcopy(network).eval().requires_grad_(False)
            if self.cfg.zero_stage == 3:
                self.ref_network = self._partitioned(self.ref_network)
        network.gradient_checkpointing = self.cfg.gradient_checkpointing
        network.train()
        trainable = [param for param in network.parameters() if param.requires_grad]  # LoRA: the adapters only
        optimizer = None
        if self.cfg.optimizer == "adamw":
            optimizer = torch.optim.AdamW(trainable, lr=self.cfg.lr, betas=self.cfg.betas,
                                          eps=self.cfg.eps, weight_decay=self.cfg.weight_decay)
        self.engine, *_ = deepspeed.initialize(model=network, optimizer=optimizer,
                                               model_parameters=trainable if self.cfg.lora else None,
                                               config=deepspeed_config(self.cfg, self.world_size))
        self.adapter = DeepSpeedEngineAdapter(self.engine, self.world_size)
        if self.cfg.lora is not None:
            self.ref_network = self.engine.module

    def _partitioned(self, reference: nn.Module) -> nn.Module:
        """ZeRO-3, full fine-tuning: the reference partitioned across the ranks as the policy is (each rank keeps
        1/n of it; its forward gathers one layer at a time), through a DeepSpeed engine without optimizer."""
        import deepspeed

        config = {key: value for key, value in deepspeed_config(self.cfg, self.world_size).items() if key != "optimizer"}
        engine, *_ = deepspeed.initialize(model=reference, config=config)
        return engine.module

    # -- training -------------------------------------------------------------------------------
    def train_step(self, step_fn: str | StepFunction, shard: Mapping[str, Any], common: Mapping[str, Any],
                   lr: float | None = None) -> tuple[dict[str, float], StepCounts]:
        """The step function's stats and this call's optimizer steps; `lr`: set on the optimizer before the step
        (None: left as it is)."""
        if lr is not None:
            set_learning_rate(self.engine.optimizer, lr)
        ctx = LearnerContext(self.adapter, self.ref_network, self.rank, self.world_size, self.cfg, self.device)
        self.engine.module.train()
        before = self.adapter.counts()
        stats = dict(resolve_step(step_fn)(ctx, **shard, **common))
        if self.adapter.last_grad_norm is not None:
            stats.setdefault("grad_norm", self.adapter.last_grad_norm)
        return stats, self.adapter.counts().since(before)

    def learning_rate(self) -> float:
        return float(self.engine.optimizer.param_groups[0]["lr"])

    # -- full weights ---------------------------------------------------------------------------
    # Which tensors: "all" (the module's parameters and persistent buffers), "synced" (what a weight sync sends:
    # all, or with LoRA the adapter tensors only), "base" (all but the adapters: with LoRA, the reference).
    def _wanted(self, which: str) -> Callable[[str], bool]:
        lora = self.cfg.lora is not None
        return {"all": lambda name: True,
                "synced": lambda name: not lora or is_adapter_key(name),
                "base": lambda name: not is_adapter_key(name)}[which]

    def _specs(self, which: str = "synced") -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
        module, wanted = self.engine.module, self._wanted(which)
        params = [(n, p.dtype, tuple(getattr(p, "ds_shape", p.shape))) for n, p in module.named_parameters()]
        specs = params + [(n, b.dtype, tuple(b.shape)) for n, b in self._buffers()]
        return [spec for spec in specs if wanted(spec[0])]

    def _buffers(self, module: nn.Module | None = None) -> list[tuple[str, torch.Tensor]]:
        module = self.engine.module if module is None else module
        names = set(module.state_dict(keep_vars=True))
        return [(n, b) for n, b in module.named_buffers() if n in names]

    def _full_tensors(self, which: str = "synced", module: nn.Module | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, full tensor) of the tensors `which` names of `module` (default: the policy), in `_specs` order;
        under ZeRO-3 every rank must iterate (gathers). The tensor is valid until the next item is requested."""
        module, wanted = self.engine.module if module is None else module, self._wanted(which)
        for name, param in module.named_parameters():
            if not wanted(name):
                continue
            if self.cfg.zero_stage == 3:
                import deepspeed

                with deepspeed.zero.GatheredParameters([param]):
                    yield name, param.detach()
            else:
                yield name, param.detach()
        yield from ((name, buffer) for name, buffer in self._buffers(module) if wanted(name))

    def _follow_gathers(self, which: str = "synced") -> None:
        """Ranks other than 0 take part in the ZeRO-3 gathers of a full-weights pass (nothing to do otherwise)."""
        if self.cfg.zero_stage == 3:
            for _ in self._full_tensors(which):
                pass

    def state_dict_for_sync(self) -> dict[str, torch.Tensor] | None:
        """The policy's full weights under the published keys as CPU tensors on rank 0 (what held-out evaluation
        and exports read; with LoRA merged, W + (alpha / rank) · B A: model/lora.py); None on other ranks, which
        help gather under ZeRO-3."""
        if self.rank != 0:
            return self._follow_gathers("all")
        state = {name: tensor.to("cpu", copy=True) for name, tensor in self._full_tensors("all")}
        return state if self.cfg.lora is None else merged_state_dict(state, self.cfg.lora)

    def adapter_state_dict(self) -> dict[str, torch.Tensor] | None:
        """With LoRA, the adapter tensors as CPU tensors on rank 0 (for the PEFT-format export; model/lora.py)."""
        if self.rank != 0:
            return self._follow_gathers("synced")
        return {name: tensor.to("cpu", copy=True) for name, tensor in self._full_tensors("synced")}

    def publish_weights(self, version: int, bucket_mb: float) -> tuple[WeightManifest, list[ray.ObjectRef]] | None:
        """Rank 0: pack the synced weights (LoRA: the adapters) into buckets in the object store; returns
        (manifest, refs)."""
        if self.rank != 0:
            return self._follow_gathers()
        manifest = plan_buckets(self._specs(), version, bucket_mb)
        stream = stream_buckets(manifest, self._full_tensors())
        return manifest, [ray.put(bucket_payload(version, spec, flat)) for spec, flat in stream]

    def join_broadcast(self, backend: str, host: str, port: int, world_size: int) -> None:
        """Rank 0 becomes rank 0 (the source) of a broadcast group with the rollout workers."""
        if self.rank != 0:
            raise RuntimeError(f"learner rank {self.rank} asked to join the broadcast group; only rank 0 sends")
        pin_interfaces(self.node_ip)
        self.broadcast = BroadcastGroup(backend, host, port, 0, world_size, listener=self._listeners.pop(port, None))

    def broadcast_weights(self, version: int, bucket_mb: float) -> WeightManifest:
        """All ranks (gathers under ZeRO-3); rank 0 broadcasts every bucket to the group."""
        manifest = plan_buckets(self._specs(), version, bucket_mb)
        if self.rank == 0:
            if self.broadcast is None:
                raise RuntimeError("broadcast_weights before join_broadcast")
            self.broadcast.send(manifest, self._full_tensors())
        else:
            self._follow_gathers()
        return manifest

    def weights_manifest(self, version: int, bucket_mb: float) -> WeightManifest:
        return plan_buckets(self._specs(), version, bucket_mb)

    def checksum(self) -> str:
        """sha256 of this rank's full weights, with LoRA the frozen base and the adapters under the adapted
        network's keys (all ranks at once under ZeRO-3)."""
        return checksum((name, tensor.to("cpu", copy=True)) for name, tensor in self._full_tensors("all"))

    def ref_checksum(self) -> str:
        """sha256 of the reference's weights: the frozen copy, or with LoRA the base (every tensor but the
        adapters); all ranks at once under ZeRO-3 (the reference is partitioned, gathered here)."""
        tensors = self._full_tensors("base", self.ref_network)  # no adapters: the reference's every tensor
        return checksum((name, tensor.to("cpu", copy=True)) for name, tensor in tensors)

    # -- checkpoints ------------------------------------------------------------------------------
    def save_checkpoint(self, directory: str) -> None:
        self.engine.save_checkpoint(directory, tag=CHECKPOINT_TAG, save_latest=False)

    def load_checkpoint(self, directory: str) -> None:
        if not (Path(directory) / CHECKPOINT_TAG).is_dir():
            raise FileNotFoundError(f"no learner state in {directory} (expected {CHECKPOINT_TAG}/)")
        path, _ = self.engine.load_checkpoint(directory, tag=CHECKPOINT_TAG, load_optimizer_states=True,
                                              load_lr_scheduler_states=False)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load the learner state from {directory}")


class LearnerGroup:
    """Driver-side handle on the n ranks (an `ActorGroup` whose ranks are never replaced: a rank's optimizer state
    cannot be rebuilt); every method runs on all ranks at once and waits at most `learner.call_timeout_s`
    (start-up: `learner.start_timeout_s`, checkpoints: `checkpoint.timeout_s`). A rank that raises, dies or
    overruns fails the call naming the rank, the call and the deadline's key (`actors.group.ActorCallError`,
    `ActorLost`: docs/reliability.md §14)."""

    def __init__(self, cfg: LearnerConfig, network_source: NetworkSource, *, total_steps: int | None = None,
                 placement_group: Any = None, checkpoint_timeout_s: float = CheckpointConfig.timeout_s):
        """`total_steps`: the run's RL steps (`run.steps`), where a decaying `learner.lr_decay` ends;
        `checkpoint_timeout_s`: `checkpoint.timeout_s`, the deadline of `save_checkpoint` / `load_checkpoint`."""
        if cfg.lr_decay != "constant" and total_steps is None:
            raise ValueError(f"learner.lr_decay: {cfg.lr_decay} decays towards the run's last step; "
                             "LearnerGroup needs total_steps")
        check_schedule(warmup_steps=cfg.lr_warmup_steps, decay=cfg.lr_decay, min_ratio=cfg.min_lr_ratio,
                       total_steps=total_steps)
        self.cfg, self.world_size, self.total_steps = cfg, cfg.num_ranks, total_steps
        self.checkpoint_timeout_s = checkpoint_timeout_s
        self.skipped_steps = 0  # optimizer steps skipped for a non-finite loss or gradient, since the group started
        self.skipped_updates_in_a_row = 0  # the latest train_step calls whose every optimizer step was skipped
        actor = ray.remote(LearnerRank)

        def start(rank: int, generation: int) -> Any:  # generation: always 0, a rank is never replaced
            options: dict[str, Any] = {"num_cpus": cfg.cpus_per_rank, "num_gpus": cfg.gpus_per_rank}
            if placement_group is not None:
                options["scheduling_strategy"] = bundle_strategy(placement_group, rank)
            return actor.options(**options).remote(cfg, network_source, rank, cfg.num_ranks)

        self.ranks = ActorGroup("learner rank", cfg.num_ranks, start)
        try:
            (host, port), = self._gather("endpoint", [self.ranks[0].endpoint.remote()], "start")
            self._all("setup", host, port, deadline="start")
        except Exception:
            self.shutdown()
            raise

    def _gather(self, what: str, refs: list[Any], deadline: str = "call") -> list[Any]:
        """Every rank's answer to the call `what` (`refs`, one per rank), within the `deadline` of its kind:
        start, call or checkpoint."""
        timeout_s, key = {"start": (self.cfg.start_timeout_s, "learner.start_timeout_s"),
                          "call": (self.cfg.call_timeout_s, "learner.call_timeout_s"),
                          "checkpoint": (self.checkpoint_timeout_s, "checkpoint.timeout_s")}[deadline]
        return gather(refs, what, "learner rank", timeout_s, key)

    def _all(self, method: str, *args: Any, deadline: str = "call") -> list[Any]:
        return self._gather(method, [getattr(r, method).remote(*args) for r in self.ranks], deadline)

    def train_step(self, step_fn: str | StepFunction, shards: Sequence[Mapping[str, Any]], *,
                   rl_step: int | None = None, **common: Any) -> list[dict[str, float]]:
        """Run `step_fn(ctx, **shards[r], **common)` on every rank r; returns each rank's stats.

        `rl_step` (1-based) sets the learning rate of the `learner.lr_*` schedule first; it is required when
        one is configured and ignored otherwise (the optimizer's lr is then left as it is)."""
        if len(shards) != self.world_size:
            raise ValueError(f"{len(shards)} shard(s) for learner.num_ranks={self.world_size}; give one per rank")
        lr = None
        if has_lr_schedule(self.cfg):
            if rl_step is None:
                raise ValueError("learner.lr_warmup_steps / lr_decay schedule the learning rate per RL step; "
                                 "pass train_step(..., rl_step=step)")
            lr = scheduled_lr(self.cfg, rl_step, self.total_steps)
        results = self._gather("train_step", [r.train_step.remote(step_fn, s, common, lr)
                                              for r, s in zip(self.ranks, shards)])
        self._count_skips([counts for _, counts in results])
        return [stats for stats, _ in results]

    def _count_skips(self, counts: list[StepCounts]) -> None:
        """Update the skip counters from every rank's counts of one train_step call (the ranks agree on the
        steps taken and skipped: the flag is all-reduced), and warn naming the ranks where it was not finite."""
        steps, skipped = counts[0].steps, counts[0].skipped
        self.skipped_steps += skipped
        if steps and skipped == steps:
            self.skipped_updates_in_a_row += 1
        elif skipped < steps:
            self.skipped_updates_in_a_row = 0
        if skipped:
            ranks = [rank for rank, c in enumerate(counts) if c.nonfinite_here]
            log.warning("skipped %d of %d optimizer step(s) on every learner rank: a non-finite loss or gradient "
                        "on rank(s) %s; the weights and optimizer state are unchanged by them", skipped, steps, ranks)

    def learning_rates(self) -> list[float]:
        """Each rank's current learning rate (that of its optimizer's first param group)."""
        return self._all("learning_rate")

    def state_dict_for_sync(self) -> dict[str, torch.Tensor]:
        return self._all("state_dict_for_sync")[0]

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        return self._all("adapter_state_dict")[0]

    def export_policy(self, path: str | Path, backbone: Any, tokenizer: Any) -> Path:
        """Write the policy into `path` (on this, the driver's, machine) in the published format
        (`model.checkpoint.save_state_dict`: LoRA merged), and with LoRA its adapter in PEFT's layout in
        `path/adapter/` (`model.lora.save_adapter`; docs/lora.md)."""
        from model.checkpoint import save_state_dict

        path = save_state_dict(self.state_dict_for_sync(), backbone, tokenizer, path)
        self.save_adapter(path / "adapter")
        return path

    def save_adapter(self, path: str | Path) -> None:
        """With LoRA, the adapter in PEFT's layout in `path` (`model.lora.save_adapter`); nothing without."""
        from model.lora import save_adapter

        if self.cfg.lora is not None:
            save_adapter(self.adapter_state_dict(), self.cfg.lora, path)

    def publish_weights(self, version: int, bucket_mb: float) -> tuple[WeightManifest, list[ray.ObjectRef]]:
        return self._all("publish_weights", version, bucket_mb)[0]

    def checksums(self) -> list[str]:
        return self._all("checksum")

    def save_checkpoint(self, directory: str | Path) -> None:
        """All ranks write into `directory` (which they must share)."""
        self._all("save_checkpoint", str(directory), deadline="checkpoint")

    def load_checkpoint(self, directory: str | Path) -> None:
        self._all("load_checkpoint", str(directory), deadline="checkpoint")

    def shutdown(self) -> None:
        self.ranks.shutdown()
