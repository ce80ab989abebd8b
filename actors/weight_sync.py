"""Version-tagged, bucketed transfer of the learner's full weights to the rollout workers.

With LoRA (docs/lora.md) a version is the adapter tensors only: both ends hold the same base, which never
changes, and `synced_state` names what moves.

The plan (`WeightManifest`) is made from names, dtypes and shapes alone, so both ends know every
bucket's layout before any byte moves: tensors are packed back to back (8-byte aligned) into flat
uint8 buckets of at most `bucket_mb` (a larger tensor travels alone). Two transports share it:

- object store (CPU, cross-node): learner rank 0 fills one bucket at a time and `ray.put`s it as a
  `(version, index, uint8 array)` tuple (numpy, so workers read it zero-copy); each worker fetches the
  buckets one by one and copies them into its network: peak extra memory is one bucket.
- broadcast: a torch.distributed process group of its own (learner rank 0 is rank 0, the workers
  1..n), made from a TCPStore so it is independent of the learners' default group; NCCL when the
  tensors live on GPUs, gloo otherwise (which is how the CPU tests exercise this same code).

Receivers (`WeightReceiver`) refuse a version that is not newer than the one they hold and a partial
version (names missing or unknown, shapes that differ, buckets missing, of another version or index
or size) before touching any weight. A failure after copying started leaves the receiver with no
valid version (`version is None`), and it refuses to sample until a complete version arrives.
"""

from __future__ import annotations

import hashlib
import socket
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from actors.rendezvous import tcp_store

ALIGN = 8  # bytes; every tensor starts at a multiple of this so that `.view(dtype)` works on the slice


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # e.g. "float32"
    shape: tuple[int, ...]
    offset: int  # bytes into the bucket
    nbytes: int


@dataclass(frozen=True)
class BucketSpec:
    index: int
    nbytes: int
    tensors: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class WeightManifest:
    version: int
    buckets: tuple[BucketSpec, ...]

    def names(self) -> set[str]:
        return {t.name for b in self.buckets for t in b.tensors}


class WeightSyncError(RuntimeError):
    """A weight version was refused or could not be applied."""


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def plan_buckets(specs: Iterable[tuple[str, torch.dtype, tuple[int, ...]]], version: int,
                 bucket_mb: float) -> WeightManifest:
    """Greedy packing of (name, dtype, shape) in the given order into buckets of at most `bucket_mb` MiB."""
    limit = int(bucket_mb * 2**20)
    buckets: list[BucketSpec] = []
    current: list[TensorSpec] = []
    used = 0
    for name, dtype, shape in specs:
        nbytes = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
        start = -(-used // ALIGN) * ALIGN
        if current and start + nbytes > limit:
            buckets.append(BucketSpec(len(buckets), used, tuple(current)))
            current, start = [], 0
        current.append(TensorSpec(name, dtype_name(dtype), tuple(int(s) for s in shape), start, nbytes))
        used = start + nbytes
    if current:
        buckets.append(BucketSpec(len(buckets), used, tuple(current)))
    return WeightManifest(version, tuple(buckets))


def unpack_bucket(spec: BucketSpec, flat: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor view into `flat`) for every tensor of the bucket."""
    for t in spec.tensors:
        yield t.name, flat[t.offset:t.offset + t.nbytes].view(_torch_dtype(t.dtype)).view(t.shape)


def stream_buckets(manifest: WeightManifest, named_tensors: Iterable[tuple[str, torch.Tensor]],
                   device: str | torch.device = "cpu") -> Iterator[tuple[BucketSpec, torch.Tensor]]:
    """Pack tensors into buckets, yielding each bucket as soon as all its tensors arrived. Each tensor is
    copied into its bucket when it arrives (callers may reuse or free its memory right after)."""
    by_bucket = {t.name: (b, t) for b in manifest.buckets for t in b.tensors}
    open_buckets: dict[int, tuple[torch.Tensor, set[str]]] = {}
    for name, tensor in named_tensors:
        bucket, spec = by_bucket[name]
        flat, seen = open_buckets.setdefault(bucket.index, (torch.zeros(bucket.nbytes, dtype=torch.uint8,
                                                                         device=device), set()))
        flat[spec.offset:spec.offset + spec.nbytes].copy_(tensor.detach().reshape(-1).view(torch.uint8))
        seen.add(name)
        if len(seen) == len(bucket.tensors):
            yield bucket, open_buckets.pop(bucket.index)[0]
    if open_buckets:
        raise WeightSyncError(f"weight version {manifest.version}: bucket(s) {sorted(open_buckets)} never completed")


def named_state(network: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Parameters and persistent buffers in state-dict order (what a full sync transfers)."""
    yield from network.state_dict(keep_vars=True).items()


def synced_state(network: nn.Module) -> dict[str, torch.Tensor]:
    """What a sync transfers into `network`: with LoRA adapters the adapter tensors only (the base never
    changes; model/lora.py), else every tensor of `named_state`."""
    from model.lora import adapter_state, has_lora

    return adapter_state(network) if has_lora(network) else dict(named_state(network))


def checksum(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in name order: equal iff weights are equal."""
    digests = {}
    for name, tensor in named_tensors:
        tensor = tensor.detach().to("cpu").contiguous()
        one = hashlib.sha256(f"{name}|{dtype_name(tensor.dtype)}|{tuple(tensor.shape)}|".encode())
        one.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        digests[name] = one.hexdigest()
    total = hashlib.sha256()
    for name in sorted(digests):
        total.update(digests[name].encode())
    return total.hexdigest()


class WeightReceiver:
    """Applies complete, newer weight versions to `network`; `version` is None after a failed apply."""

    def __init__(self, network: nn.Module, version: int | None):
        self.network, self.version = network, version

    def check(self, manifest: WeightManifest, bucket_count: int | None = None) -> None:
        """Refuse an out-of-order or partial version; raises WeightSyncError saying which."""
        if self.version is not None and manifest.version <= self.version:
            raise WeightSyncError(f"refused weight version {manifest.version}: this worker already holds version "
                                  f"{self.version} (versions must increase)")
        mine = synced_state(self.network)
        theirs = manifest.names()
        if missing := sorted(set(mine) - theirs):
            raise WeightSyncError(f"refused partial weight version {manifest.version}: {len(missing)} tensor(s) "
                                  f"missing, e.g. {missing[:3]}")
        if unknown := sorted(theirs - set(mine)):
            raise WeightSyncError(f"refused weight version {manifest.version}: unknown tensor(s) {unknown[:3]}")
        for bucket in manifest.buckets:
            for t in bucket.tensors:
                if tuple(mine[t.name].shape) != t.shape:
                    raise WeightSyncError(f"refused weight version {manifest.version}: {t.name} has shape {t.shape}, "
                                          f"this worker's is {tuple(mine[t.name].shape)}")
        if [b.index for b in manifest.buckets] != list(range(len(manifest.buckets))):
            raise WeightSyncError(f"refused weight version {manifest.version}: bucket indices are not 0..n-1")
        if bucket_count is not None and bucket_count != len(manifest.buckets):
            raise WeightSyncError(f"refused partial weight version {manifest.version}: {bucket_count} bucket(s) "
                                  f"sent, the manifest lists {len(manifest.buckets)}")

    def apply(self, manifest: WeightManifest, fetch: Callable[[BucketSpec], torch.Tensor],
              bucket_count: int | None = None) -> int:
        """Check the manifest, then copy bucket after bucket (`fetch(spec)` returns its flat uint8 tensor)."""
        self.check(manifest, bucket_count)
        targets = synced_state(self.network)
        self.version = None  # from here on a failure leaves no valid version
        with torch.no_grad():
            for spec in manifest.buckets:
                flat = fetch(spec)
                if flat.dtype != torch.uint8 or flat.numel() != spec.nbytes:
                    raise WeightSyncError(f"weight version {manifest.version}: bucket {spec.index} has "
                                          f"{flat.numel()} {flat.dtype} elements, expected {spec.nbytes} bytes")
                for name, tensor in unpack_bucket(spec, flat):
                    targets[name].copy_(tensor)
        self.version = manifest.version
        return self.version


    def apply_state_dict(self, version: int, state_dict: dict[str, torch.Tensor]) -> int:
        """Apply a complete state dict as `version` (same refusals as a bucketed version)."""
        manifest = plan_buckets(((n, t.dtype, tuple(t.shape)) for n, t in state_dict.items()), version, 2.0**40)
        self.check(manifest)
        targets = synced_state(self.network)
        self.version = None
        with torch.no_grad():
            for name, tensor in state_dict.items():
                targets[name].copy_(tensor)
        self.version = version
        return version

# -- object store transport -------------------------------------------------------------------------
def bucket_payload(version: int, spec: BucketSpec, flat: torch.Tensor) -> tuple[int, int, np.ndarray]:
    """What goes into the object store for one bucket: (version, index, uint8 array)."""
    return version, spec.index, flat.cpu().numpy()


def open_payload(manifest: WeightManifest, spec: BucketSpec, payload: tuple[int, int, np.ndarray]) -> torch.Tensor:
    """Check a fetched bucket's tags and return it as a flat uint8 tensor (zero-copy, read-only)."""
    version, index, array = payload
    if (version, index) != (manifest.version, spec.index):
        raise WeightSyncError(f"weight version {manifest.version}: bucket {spec.index} slot holds bucket {index} "
                              f"of version {version}")
    with warnings.catch_warnings():  # object-store arrays are read-only; they are only read here
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


# -- broadcast transport --------------------------------------------------------------------------
class BroadcastGroup:
    """A process group of its own: rank 0 = learner rank 0 (source), ranks 1..n = rollout workers."""

    def __init__(self, backend: str, host: str, port: int, rank: int, world_size: int, timeout_s: float = 600.0,
                 listener: socket.socket | None = None):
        """listener: rank 0's socket on (host, port), from `rendezvous.open_listener` (the store serves it)."""
        if backend not in ("gloo", "nccl"):
            raise ValueError(f"broadcast backend {backend!r}; valid: gloo, nccl")
        timeout = timedelta(seconds=timeout_s)
        self.store = tcp_store(host, port, rank, world_size, timeout, listener)
        self.backend, self.rank, self.world_size = backend, rank, world_size
        if backend == "gloo":
            self.group = dist.ProcessGroupGloo(self.store, rank, world_size, timeout)
            self.device = torch.device("cpu")
        else:
            self.group = dist.ProcessGroupNCCL(self.store, rank, world_size)
            self.device = torch.device("cuda", torch.cuda.current_device())

    def _broadcast(self, flat: torch.Tensor) -> None:
        options = dist.BroadcastOptions()
        options.rootRank = 0
        self.group.broadcast([flat], options).wait()

    def send(self, manifest: WeightManifest, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Rank 0: broadcast every bucket of `manifest`, packed from `named_tensors` (in manifest order)."""
        for _, flat in stream_buckets(manifest, named_tensors, self.device):
            self._broadcast(flat)

    def receive(self, receiver: WeightReceiver, manifest: WeightManifest) -> int:
        """Ranks 1..n: receive every bucket into `receiver`'s network. All ranks see the same manifest, so
        a refusal here (raised before any collective) must be matched by the sender not sending."""

        def fetch(spec: BucketSpec) -> torch.Tensor:
            flat = torch.empty(spec.nbytes, dtype=torch.uint8, device=self.device)
            self._broadcast(flat)
            return flat

        return receiver.apply(manifest, fetch)


# -- driver side ------------------------------------------------------------------------------------
SYNC_KEY = "rollout.weight_sync.timeout_s"


def sync_object_store(learners: Any, workers: Sequence[Any], version: int, bucket_mb: float,
                      timeout_s: float) -> list[int]:
    """Publish `version` from learner rank 0 to the object store and apply it on every worker; a worker that has
    not applied it within `timeout_s` seconds fails the call (`actors.group.ActorLost`), naming it."""
    from actors.group import gather

    manifest, refs = learners.publish_weights(version, bucket_mb)
    return gather([w.set_weights.remote(manifest, refs) for w in workers], "set_weights", "rollout worker",
                  timeout_s, SYNC_KEY)


class BroadcastSync:
    """Driver side of the broadcast transport: builds the group once, then `sync(version)` pushes versions.

    Every worker checks the manifest before any collective starts, so a refusal never leaves the
    sender blocked in a broadcast nobody receives. Every wait (joining, the checks, the broadcast itself)
    ends after `timeout_s` seconds: a member that has not answered by then fails the sync, named
    (`actors.group.ActorLost`).
    """

    def __init__(self, learners: Any, workers: Sequence[Any], backend: str, timeout_s: float):
        from actors.group import gather

        self.learners, self.workers, self.backend, self.timeout_s = learners, list(workers), backend, timeout_s
        source = learners.ranks[0]
        (host, port), = gather([source.endpoint.remote()], "endpoint", "learner rank", timeout_s, SYNC_KEY)
        size = len(self.workers) + 1
        gather([source.join_broadcast.remote(backend, host, port, size)]
               + [w.join_broadcast.remote(backend, host, port, i + 1, size) for i, w in enumerate(self.workers)],
               "join_broadcast", "member (learner rank 0 first)", timeout_s, SYNC_KEY)

    def sync(self, version: int, bucket_mb: float) -> list[int]:
        from actors.group import gather

        (manifest,) = gather([self.learners.ranks[0].weights_manifest.remote(version, bucket_mb)],
                             "weights_manifest", "learner rank", self.timeout_s, SYNC_KEY)
        gather([w.check_weights.remote(manifest) for w in self.workers], "check_weights", "rollout worker",
               self.timeout_s, SYNC_KEY)
        sends = [r.broadcast_weights.remote(version, bucket_mb) for r in self.learners.ranks]
        receives = [w.receive_weights.remote(manifest) for w in self.workers]
        return gather(sends + receives, "broadcast weights", "member (learner ranks first)", self.timeout_s,
                      SYNC_KEY)[len(sends):]
