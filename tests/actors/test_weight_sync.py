"""Weight sync: bucket plans, byte-exact packing, refusals, and learner -> worker syncs through Ray.

The end-to-end tests train a 2-rank ZeRO-3 learner (so rank 1 must take part in every gather), then
sync to 2 rollout-worker actors, each placed on a placement-group bundle, over both transports (the
broadcast one with gloo here; the same code with NCCL runs in the `gpu` test).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import ray
import torch
from torch import nn

from actors.cluster import create_placement_groups, learner_role, remove_placement_groups, rollout_role
from actors.config import ClusterConfig, LearnerConfig, LoraConfig, RolloutConfig
from actors.learner import LearnerContext, LearnerGroup
from actors.rollout import PromptRequest, start_workers
from actors.weight_sync import (
    ALIGN,
    BroadcastSync,
    WeightReceiver,
    WeightSyncError,
    bucket_payload,
    checksum,
    named_state,
    open_payload,
    plan_buckets,
    stream_buckets,
    sync_object_store,
    unpack_bucket,
)


class Mixed(nn.Module):
    """Parameters of several dtypes and shapes, a persistent buffer and a 0-d parameter."""

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(5, 3, generator=generator))  # 60 bytes
        self.low = nn.Parameter(torch.randn(7, generator=generator).to(torch.bfloat16))  # 14 bytes
        self.scalar = nn.Parameter(torch.randn((), generator=generator))  # 4 bytes
        self.register_buffer("steps", torch.arange(3, dtype=torch.int64) + seed)  # 24 bytes
        self.register_buffer("scratch", torch.zeros(2), persistent=False)  # not synced


def specs(module):
    return [(n, t.dtype, tuple(t.shape)) for n, t in named_state(module)]


def test_plan_packs_in_order_aligned_and_within_the_limit():
    manifest = plan_buckets(specs(Mixed()), version=3, bucket_mb=80 / 2**20)  # 80-byte buckets
    layout = [[(t.name, t.offset, t.nbytes) for t in b.tensors] for b in manifest.buckets]
    # weight [0, 60); low starts at the next multiple of 8, [64, 78) <= 80: same bucket; scalar would end at
    # 84 > 80: new bucket, [0, 4); steps at 8, [8, 32)
    assert layout == [[("weight", 0, 60), ("low", 64, 14)], [("scalar", 0, 4), ("steps", 8, 24)]]
    assert [b.nbytes for b in manifest.buckets] == [78, 32] and manifest.version == 3
    assert all(t.offset % ALIGN == 0 for b in manifest.buckets for t in b.tensors)
    alone = plan_buckets(specs(Mixed()), version=0, bucket_mb=8 / 2**20)  # every tensor alone, weight > limit
    assert [len(b.tensors) for b in alone.buckets] == [1, 1, 1, 1]


def test_stream_and_unpack_round_trip_is_byte_exact():
    source = Mixed(seed=1)
    manifest = plan_buckets(specs(source), version=1, bucket_mb=80 / 2**20)
    reversed_order = list(named_state(source))[::-1]  # arrival order does not matter
    received = {}
    for spec, flat in stream_buckets(manifest, reversed_order):
        payload = bucket_payload(1, spec, flat)
        assert isinstance(payload[2], np.ndarray) and payload[2].dtype == np.uint8
        received.update((name, tensor.clone()) for name, tensor in unpack_bucket(spec, open_payload(manifest, spec, payload)))
    for name, tensor in named_state(source):
        assert received[name].dtype == tensor.dtype and torch.equal(received[name], tensor.detach())
    with pytest.raises(WeightSyncError, match=r"bucket\(s\) \[1\] never completed"):
        list(stream_buckets(manifest, list(named_state(source))[:3]))


def test_checksum_is_order_free_and_sees_every_bit():
    a = list(named_state(Mixed(seed=0)))
    assert checksum(a) == checksum(a[::-1]) == checksum(named_state(Mixed(seed=0)))
    changed = dict(named_state(Mixed(seed=0)))
    changed["low"] = changed["low"].detach().clone()
    changed["low"][0] = changed["low"][0].item() + 1.0
    assert checksum(changed.items()) != checksum(a)
    as_fp32 = [(n, t.float()) if n == "low" else (n, t) for n, t in a]
    assert checksum(as_fp32) != checksum(a)  # dtype is part of the identity


def apply_version(receiver, source, version, bucket_mb=80 / 2**20):
    manifest = plan_buckets(specs(source), version, bucket_mb)
    flats = dict((spec.index, flat) for spec, flat in stream_buckets(manifest, named_state(source)))
    return receiver.apply(manifest, lambda spec: flats[spec.index], bucket_count=len(flats))


def test_receiver_applies_newer_complete_versions_only():
    target, source = Mixed(seed=0), Mixed(seed=5)
    receiver = WeightReceiver(target, version=0)
    assert apply_version(receiver, source, 1) == 1 and checksum(named_state(target)) == checksum(named_state(source))
    for stale in (1, 0):
        with pytest.raises(WeightSyncError, match=f"refused weight version {stale}: this worker already holds version 1"):
            apply_version(receiver, Mixed(seed=6), stale)
    assert receiver.version == 1 and checksum(named_state(target)) == checksum(named_state(source))
    assert apply_version(receiver, Mixed(seed=7), 5) == 5  # newer, even with a gap, is accepted


def test_receiver_refuses_partial_or_foreign_versions_before_touching_weights():
    target = Mixed(seed=0)
    before = checksum(named_state(target))
    receiver = WeightReceiver(target, version=0)
    full = specs(Mixed())
    cases = [
        (full[1:], "refused partial weight version 1: 1 tensor\\(s\\) missing, e.g. \\['weight'\\]"),
        (full + [("extra", torch.float32, (2,))], "unknown tensor\\(s\\) \\['extra'\\]"),
        ([("weight", torch.float32, (3, 5))] + full[1:], "weight has shape \\(3, 5\\), this worker's is \\(5, 3\\)"),
    ]
    for plan, words in cases:
        with pytest.raises(WeightSyncError, match=words):
            receiver.check(plan_buckets(plan, 1, 1.0))
    manifest = plan_buckets(full, 1, 80 / 2**20)
    with pytest.raises(WeightSyncError, match="1 bucket\\(s\\) sent, the manifest lists 2"):
        receiver.apply(manifest, lambda spec: None, bucket_count=1)
    shuffled = dataclasses.replace(manifest, buckets=manifest.buckets[::-1])
    with pytest.raises(WeightSyncError, match="bucket indices are not 0..n-1"):
        receiver.check(shuffled)
    assert receiver.version == 0 and checksum(named_state(target)) == before


def test_a_lora_worker_takes_adapter_only_versions_and_then_equals_the_learner(kit):
    """The learner's adapted network sends its adapter tensors; the worker (same base, same adapters at B = 0)
    applies them and then holds exactly the learner's network: base + adapters, unmerged."""
    from actors.rollout import RolloutWorker
    from model.lora import adapter_state, add_lora

    lora = LoraConfig(rank=2, alpha=4.0)
    learner = add_lora(kit.policy_source(0)(), lora)
    with torch.no_grad():
        for tensor in adapter_state(learner).values():
            tensor.add_(0.01)  # a trained adapter: B no longer 0
    worker = RolloutWorker(kit.policy_source(0), lora=lora, device="cpu")
    assert worker.checksum() != checksum(named_state(learner))
    adapters = list(adapter_state(learner).items())
    manifest = plan_buckets([(n, t.dtype, tuple(t.shape)) for n, t in adapters], 1, 1 / 2**10)  # 1 KiB buckets
    assert len(manifest.buckets) > 1
    flats = dict((spec.index, flat) for spec, flat in stream_buckets(manifest, adapters))
    assert worker.receiver.apply(manifest, lambda spec: flats[spec.index], bucket_count=len(flats)) == 1
    assert worker.checksum() == checksum(named_state(learner))
    full = plan_buckets(specs(learner), 2, 1.0)  # a full version is not what a LoRA worker takes
    with pytest.raises(WeightSyncError, match=r"refused weight version 2: unknown tensor\(s\) \['model\.transformer"):
        worker.check_weights(full)
    synced = sum(b.nbytes for b in manifest.buckets)
    assert synced == sum(t.numel() * 4 for _, t in adapters) < sum(b.nbytes for b in full.buckets) / 10


def test_a_failure_while_copying_leaves_no_valid_version():
    target, source = Mixed(seed=0), Mixed(seed=3)
    receiver = WeightReceiver(target, version=0)
    manifest = plan_buckets(specs(source), 1, 80 / 2**20)
    flats = [flat for _, flat in stream_buckets(manifest, named_state(source))]
    with pytest.raises(WeightSyncError, match="bucket 1 has 31 torch.uint8 elements, expected 32 bytes"):
        receiver.apply(manifest, lambda spec: flats[0] if spec.index == 0 else flats[1][:31])
    assert receiver.version is None  # half-copied weights are never used as a version
    payload = bucket_payload(2, manifest.buckets[0], flats[0])
    with pytest.raises(WeightSyncError, match="bucket 1 slot holds bucket 0 of version 2"):
        open_payload(manifest, manifest.buckets[1], payload)
    assert apply_version(receiver, source, 2) == 2  # a complete version repairs it


# -- end to end through Ray -------------------------------------------------------------------------
def nudge_step(ctx: LearnerContext, *, amount: float) -> dict[str, float]:
    """A real optimizer step whose loss depends on every parameter (so every parameter changes)."""
    network = ctx.engine.module
    ids = torch.arange(12).view(2, 6) + 20 * ctx.rank  # [2, 6]
    hidden = network.hidden_states(ids)  # [2, 6, d]
    loss = amount * network.lm_head(hidden).float().pow(2).mean() / ctx.world_size
    ctx.engine.backward(loss)
    ctx.engine.step()
    return {"loss": float(loss.detach())}


@pytest.fixture(scope="module")
def pipeline(ray_session, kit):
    """2 ZeRO-3 learner ranks and 2 rollout workers (version 0), each on its placement-group bundle."""
    learner_cfg = LearnerConfig(num_ranks=2, zero_stage=3, lr=1e-2, micro_batch_size=2)
    rollout_cfg = RolloutConfig(num_workers=2)
    groups = create_placement_groups([learner_role(learner_cfg), rollout_role(rollout_cfg)], ClusterConfig())
    workers = start_workers(rollout_cfg, kit.policy_source(0), placement_group=groups["rollout"])  # start meanwhile
    learners = LearnerGroup(learner_cfg, kit.policy_source(0), placement_group=groups["learner"])
    yield learners, workers
    learners.shutdown()
    for worker in workers:
        ray.kill(worker)
    remove_placement_groups(groups)


def worker_state(workers):
    return ray.get([w.version.remote() for w in workers]), ray.get([w.checksum.remote() for w in workers])


def test_object_store_sync_brings_workers_to_the_learner_version(pipeline):
    learners, workers = pipeline
    start = learners.checksums()[0]
    assert worker_state(workers) == ([0, 0], [start, start])
    learners.train_step(nudge_step, [{"amount": 1.0}] * 2)
    trained = learners.checksums()
    assert trained[0] == trained[1] != start
    assert sync_object_store(learners, workers, version=1, bucket_mb=0.05, timeout_s=60) == [1, 1]  # 13 buckets
    assert worker_state(workers) == ([1, 1], [trained[0]] * 2)
    with pytest.raises(RuntimeError, match="set_weights failed on rollout worker \\d of 2: (.|\\n)*refused weight version 1"):
        sync_object_store(learners, workers, version=1, bucket_mb=0.05, timeout_s=60)
    assert worker_state(workers) == ([1, 1], [trained[0]] * 2)


def test_broadcast_sync_with_gloo(pipeline):
    learners, workers = pipeline
    current = ray.get(workers[0].version.remote())
    sync = BroadcastSync(learners, workers, backend="gloo", timeout_s=60)
    learners.train_step(nudge_step, [{"amount": 2.0}] * 2)
    trained = learners.checksums()[0]
    assert sync.sync(version=current + 1, bucket_mb=0.05) == [current + 1] * 2
    assert worker_state(workers) == ([current + 1] * 2, [trained] * 2)
    # a stale version is refused by every worker before any collective starts (nobody is left waiting)
    with pytest.raises(RuntimeError, match="check_weights failed on rollout worker \\d of 2: (.|\\n)*refused weight version"):
        sync.sync(version=current + 1, bucket_mb=0.05)
    learners.train_step(nudge_step, [{"amount": 1.0}] * 2)
    assert sync.sync(version=current + 2, bucket_mb=1.0) == [current + 2] * 2  # the group is reusable
    assert worker_state(workers) == ([current + 2] * 2, learners.checksums())
    requests = [PromptRequest((5, 6, 7), "u0", 0, "text"), PromptRequest((8, 9), "u0", 1, "text")]
    batch = ray.get(workers[1].sample.remote(requests, gen_length=4, steps=2, block_length=4))
    assert batch.policy_version == [current + 2] * 2 and batch.validate() is batch  # samples carry the new version


def test_no_group_listens_on_all_interfaces(pipeline, socket_watch):
    learners, workers = pipeline  # the learners' rendezvous store and gloo group are up
    BroadcastSync(learners, workers, backend="gloo", timeout_s=60)  # a broadcast store and gloo group more
    wildcard = socket_watch.wildcard()
    assert set(socket_watch.seen.values()) >= {"ray::LearnerRank", "ray::RolloutWorker"}  # the watch sees them
    assert not wildcard, f"listening on all interfaces: {wildcard}"


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL broadcast needs a GPU for the learner and one per worker")
def test_broadcast_sync_with_nccl_on_gpus(ray_session, kit):
    learners = LearnerGroup(LearnerConfig(num_ranks=1, gpus_per_rank=1, zero_stage=2), kit.policy_source(0))
    workers = start_workers(RolloutConfig(num_workers=1, gpus_per_worker=1), kit.policy_source(0))
    try:
        sync = BroadcastSync(learners, workers, backend="nccl", timeout_s=60)
        learners.train_step(nudge_step, [{"amount": 1.0}])
        assert sync.sync(version=1, bucket_mb=0.05) == [1]
        assert worker_state(workers) == ([1], learners.checksums())
    finally:
        learners.shutdown()
        for worker in workers:
            ray.kill(worker)
