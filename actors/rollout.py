"""Rollout workers: each holds a policy copy at a `policy_version` and samples rollout batches.

A worker builds its network from a `NetworkSource` (a checkpoint directory through `model.load`, or
a seeded factory) and starts at the version it is given (0 for the initial policy, or the current
version when a restarted worker is built from the learner's latest weights). New weights arrive as
complete versions (`set_weights` from the object store, `receive_weights` over a broadcast group, or
`load_state_dict`); a refused or failed version never mixes with the held one, and a worker without a
valid version refuses to sample (so no sample comes from stale or half-written weights).

`sample` runs the text sampler (`model.generate_text`) and returns an `rl.batch.RolloutBatch` tagged
with the worker's policy version; each row's decoded response (up to its first EOS / end-of-turn)
is in `metadata["response"]` for the reward service. Row r of one call is seeded from (seed, r) by
the sampler, so the caller picks `seed` per call (e.g. from (run seed, step, worker)).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
import torch

from actors.cluster import bundle_strategy
from actors.config import RolloutConfig
from actors.network_source import NetworkSource, build_network
from actors.weight_sync import (
    BroadcastGroup,
    WeightManifest,
    WeightReceiver,
    WeightSyncError,
    checksum,
    named_state,
    open_payload,
)


@dataclass(frozen=True)
class PromptRequest:
    """One response to sample: the prompt's token ids and the keys the batch row will carry."""

    prompt_ids: tuple[int, ...]
    uid: str
    sample_index: int
    task: str = "text"
    metadata: dict[str, Any] = field(default_factory=dict)


class RolloutWorker:
    """Holds a policy copy; run it as a Ray actor (`ray.remote(RolloutWorker)`) or in-process."""

    def __init__(self, network_source: NetworkSource, *, policy_version: int = 0, dtype: str | None = None,
                 device: str = "auto"):
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        network, self.tokenizer = build_network(network_source, dtype)
        self.network = network.to(self.device).eval().requires_grad_(False)
        self.receiver = WeightReceiver(self.network, policy_version)
        self.broadcast: BroadcastGroup | None = None

    # -- weights --------------------------------------------------------------------------------
    def version(self) -> int | None:
        """The policy version held, or None when the last apply failed half-way."""
        return self.receiver.version

    def checksum(self) -> str:
        return checksum(named_state(self.network))

    def load_state_dict(self, version: int, state_dict: dict[str, torch.Tensor]) -> int:
        return self.receiver.apply_state_dict(version, state_dict)

    def check_weights(self, manifest: WeightManifest) -> None:
        """Raise if `manifest` would be refused (called before a broadcast starts)."""
        self.receiver.check(manifest)

    def set_weights(self, manifest: WeightManifest, bucket_refs: Sequence[ray.ObjectRef]) -> int:
        """Apply a version published to the object store, fetching one bucket at a time."""

        def fetch(spec):
            return open_payload(manifest, spec, ray.get(bucket_refs[spec.index]))

        return self.receiver.apply(manifest, fetch, bucket_count=len(bucket_refs))

    def join_broadcast(self, backend: str, host: str, port: int, rank: int, world_size: int) -> None:
        self.broadcast = BroadcastGroup(backend, host, port, rank, world_size)

    def receive_weights(self, manifest: WeightManifest) -> int:
        if self.broadcast is None:
            raise WeightSyncError("receive_weights before join_broadcast")
        return self.broadcast.receive(self.receiver, manifest)

    # -- sampling -------------------------------------------------------------------------------
    def _special_ids(self) -> tuple[set[int], set[int]]:
        """(ids that end a response, special ids never masked in a prompt)."""
        config = self.network.config
        if self.tokenizer is None:
            return {config.eos_token_id}, {config.bos_token_id}
        from model.templates import special_ids

        ids = special_ids(self.tokenizer)
        protected = {ids.bos, ids.eos, ids.start_header, ids.end_header, ids.eot}
        protected |= {v for v in (ids.soi, ids.eoi, ids.t2i, ids.mmu, ids.ipad, ids.r2i) if v is not None}
        return {ids.eos, ids.eot}, protected

    def sample(self, requests: Sequence[PromptRequest], *, gen_length: int, steps: int, block_length: int,
               temperature: float = 0.0, remasking: str = "low_confidence", cfg_scale: float = 0.0,
               seed: int = 0) -> Any:
        """Sample one response per request; returns an `rl.batch.RolloutBatch` at this worker's version."""
        from model.sampling import generate_text
        from rl.batch import RolloutBatch

        version = self.receiver.version
        if version is None:
            raise WeightSyncError("this worker holds no valid weights (a sync failed half-way); "
                                  "send a complete version before sampling")
        if not requests:
            raise ValueError("sample: no requests")
        config = self.network.config
        prompts = [list(r.prompt_ids) for r in requests]
        sequences, reveal_step = generate_text(
            self.network, prompts, gen_length=gen_length, steps=steps, block_length=block_length,
            temperature=temperature, remasking=remasking, cfg_scale=cfg_scale, mask_id=config.mask_token_id,
            seed=seed, pad_id=config.pad_token_id)
        sequences, reveal_step = sequences.cpu(), reveal_step.cpu()  # [N, P+L], [N, L]
        end_ids, protected = self._special_ids()
        metadata = []
        for row, request in enumerate(requests):
            response = sequences[row, sequences.shape[1] - gen_length:].tolist()
            cut = next((i for i, t in enumerate(response) if t in end_ids), len(response))
            text = self.tokenizer.decode(response[:cut]) if self.tokenizer is not None else None
            metadata.append({**request.metadata, "response": text})
        return RolloutBatch.from_sampler(
            sequences, reveal_step, [len(p) for p in prompts], eos_ids=end_ids,
            task=[r.task for r in requests], uid=[r.uid for r in requests],
            sample_index=[r.sample_index for r in requests], policy_version=version,
            protected_ids=protected, metadata=metadata, pad_token_id=config.pad_token_id)


def start_workers(cfg: RolloutConfig, network_source: NetworkSource, *, policy_version: int = 0,
                  dtype: str | None = None, placement_group: Any = None) -> list[Any]:
    """`cfg.num_workers` RolloutWorker actors, each on its bundle of `placement_group` when given."""
    actor = ray.remote(RolloutWorker)
    workers = []
    for index in range(cfg.num_workers):
        options: dict[str, Any] = {"num_cpus": cfg.cpus_per_worker, "num_gpus": cfg.gpus_per_worker}
        if placement_group is not None:
            options["scheduling_strategy"] = bundle_strategy(placement_group, index)
        workers.append(actor.options(**options).remote(network_source, policy_version=policy_version, dtype=dtype))
    return workers
