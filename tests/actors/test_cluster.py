"""Ray start-up and placement: impossible resources fail naming the key, before anything starts."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import ray
from ray.util import placement_group_table

from actors.cluster import (
    ResourceError,
    bundle_strategy,
    check_resources,
    create_placement_groups,
    init_ray,
    learner_role,
    local_nodes,
    remove_placement_groups,
    rollout_role,
)
from actors.config import ClusterConfig, LearnerConfig, RolloutConfig, WeightSyncConfig

ONE_NODE = [{"CPU": 4.0, "GPU": 0.0}]
TWO_GPU_NODES = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}]


def roles(learner=None, rollout=None):
    return [learner_role(learner or LearnerConfig()), rollout_role(rollout or RolloutConfig())]


def test_feasible_requests_pass():
    check_resources(roles(LearnerConfig(num_ranks=2), RolloutConfig(num_workers=2)), ONE_NODE)
    gpu = roles(LearnerConfig(num_ranks=1, gpus_per_rank=1), RolloutConfig(num_workers=2, gpus_per_worker=0.5))
    check_resources(gpu, TWO_GPU_NODES, "SPREAD")


def test_colocated_shares_pass():
    """A learner rank and a rollout worker share each GPU (colocation): 1 GPU, and 8 GPUs on one node."""
    check_resources(roles(LearnerConfig(gpus_per_rank=0.6), RolloutConfig(gpus_per_worker=0.4)),
                    [{"CPU": 4.0, "GPU": 1.0}])
    check_resources(roles(LearnerConfig(num_ranks=8, gpus_per_rank=0.6),
                          RolloutConfig(num_workers=8, gpus_per_worker=0.4)), [{"CPU": 16.0, "GPU": 8.0}])
    # a node offering a fraction of a GPU holds requests of at most that fraction
    check_resources(roles(rollout=RolloutConfig(num_workers=2, gpus_per_worker=0.25)), [{"CPU": 4.0, "GPU": 0.5}])


@pytest.mark.parametrize("request_roles,nodes,strategy,words", [
    (roles(rollout=RolloutConfig(gpus_per_worker=1)), ONE_NODE, "PACK",
     "rollout.gpus_per_worker=1: each rollout actor needs 1 GPU but the largest node has 0"),
    (roles(LearnerConfig(cpus_per_rank=6)), ONE_NODE, "PACK",
     "learner.cpus_per_rank=6: each learner actor needs 6 CPU but the largest node has 4"),
    (roles(LearnerConfig(num_ranks=3), RolloutConfig(num_workers=2)), ONE_NODE, "PACK",
     "learner.num_ranks × learner.cpus_per_rank = 3 × 1 + rollout.num_workers × rollout.cpus_per_worker = 2 × 1: "
     "5 CPU requested but the cluster has 4"),
    (roles(LearnerConfig(num_ranks=2, gpus_per_rank=1), RolloutConfig(gpus_per_worker=1)), TWO_GPU_NODES, "PACK",
     "learner.num_ranks × learner.gpus_per_rank = 2 × 1 + rollout.num_workers × rollout.gpus_per_worker = 1 × 1: "
     "3 GPU requested but the cluster has 2"),
    (roles(LearnerConfig(num_ranks=2, gpus_per_rank=1)), TWO_GPU_NODES, "STRICT_PACK",
     "learner.num_ranks=2: cluster.placement_strategy=STRICT_PACK puts all learner actors on one node"),
    (roles(rollout=RolloutConfig(num_workers=3)), TWO_GPU_NODES, "STRICT_SPREAD",
     "rollout.num_workers=3: cluster.placement_strategy=STRICT_SPREAD needs one node per rollout actor"),
    (roles(LearnerConfig(gpus_per_rank=0.6), RolloutConfig(gpus_per_worker=0.6)), [{"CPU": 4.0, "GPU": 1.0}], "PACK",
     "learner.num_ranks × learner.gpus_per_rank = 1 × 0.6 + rollout.num_workers × rollout.gpus_per_worker = 1 × 0.6: "
     "1.2 GPU requested but the cluster has 1"),
    # 1.8 of the 2 GPUs in total, but a 0.6 share cannot be split over two GPUs: each GPU holds one
    (roles(rollout=RolloutConfig(num_workers=3, gpus_per_worker=0.6)), TWO_GPU_NODES, "PACK",
     "rollout.num_workers × rollout.gpus_per_worker = 3 × 0.6: 3 actor(s) need 0.6 of one GPU or more each, and "
     "Ray puts each on a single GPU, but the 2 GPU(s) hold at most 2 of them"),
    # five workers of 0.4 ask for exactly the 2 GPUs, but a GPU holds two of them (0.8), not two and a half
    (roles(rollout=RolloutConfig(num_workers=5, gpus_per_worker=0.4)), TWO_GPU_NODES, "PACK",
     "rollout.num_workers × rollout.gpus_per_worker = 5 × 0.4: 5 actor(s) need 0.4 of one GPU or more each, and "
     "Ray puts each on a single GPU, but the 2 GPU(s) hold at most 4 of them"),
    (roles(rollout=RolloutConfig(num_workers=1, gpus_per_worker=0.75)), [{"CPU": 4.0, "GPU": 0.5}], "PACK",
     "rollout.gpus_per_worker=0.75: each rollout actor needs 0.75 GPU but the largest node has 0.5"),
])
def test_impossible_requests_name_the_config_keys(request_roles, nodes, strategy, words):
    with pytest.raises(ResourceError) as err:
        check_resources(request_roles, nodes, strategy)
    assert words in str(err.value)


def test_an_actor_must_reserve_something():
    with pytest.raises(ResourceError, match="rollout.cpus_per_worker=0 and rollout.gpus_per_worker=0"):
        rollout_role(RolloutConfig(cpus_per_worker=0))


def test_local_nodes_follow_the_config():
    assert local_nodes(ClusterConfig(num_cpus=3, num_gpus=2)) == [{"CPU": 3.0, "GPU": 2.0}]


def test_local_start_fails_before_ray_starts():
    """In a fresh process: the check runs against the planned local node, so Ray never starts."""
    script = textwrap.dedent("""
        import ray
        from actors.cluster import ResourceError, init_ray, learner_role
        from actors.config import ClusterConfig, LearnerConfig
        try:
            init_ray(ClusterConfig(num_cpus=2, num_gpus=0), [learner_role(LearnerConfig(num_ranks=4))])
        except ResourceError as exc:
            print("ERROR", exc)
        print("RAY STARTED", ray.is_initialized())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert "ERROR learner.num_ranks × learner.cpus_per_rank = 4 × 1: 4 CPU requested but the cluster has 2" in out.stdout
    assert "RAY STARTED False" in out.stdout


def test_joined_ray_is_reused_checked_and_on_loopback(ray_session):
    nodes = init_ray(ClusterConfig(), roles(LearnerConfig(num_ranks=2), RolloutConfig(num_workers=2)))
    assert nodes == [{"CPU": 4.0, "GPU": 0.0}]
    with pytest.raises(ResourceError, match="rollout.gpus_per_worker=1"):
        init_ray(ClusterConfig(), roles(rollout=RolloutConfig(gpus_per_worker=1)))
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}


def test_placement_groups_are_made_per_role_and_time_out_cleanly(ray_session):
    cfg = ClusterConfig(placement_timeout_s=1.0)
    before = len([g for g in placement_group_table().values() if g["state"] != "REMOVED"])
    held = create_placement_groups([learner_role(LearnerConfig(num_ranks=1, cpus_per_rank=3))], cfg)
    assert held["learner"].bundle_specs == [{"CPU": 3.0}]

    @ray.remote(num_cpus=0)
    def where():
        return ray.get_runtime_context().get_placement_group_id()

    assert ray.get(where.options(scheduling_strategy=bundle_strategy(held["learner"], 0)).remote()) == held["learner"].id.hex()
    with pytest.raises(ResourceError, match=r"rollout \(rollout.num_workers=2, bundle \{'CPU': 1.0\}\) were not placed "
                                            r"within cluster.placement_timeout_s=1 s"):
        create_placement_groups([rollout_role(RolloutConfig(num_workers=2))], cfg)
    remove_placement_groups(held)
    after = len([g for g in placement_group_table().values() if g["state"] != "REMOVED"])
    assert after == before  # the group that timed out was removed too


@pytest.mark.parametrize("make,words", [
    (lambda: RolloutConfig(num_workers=0), "num_workers"),
    (lambda: RolloutConfig(gpus_per_worker=1.5), "gpus_per_worker: 1.5 is a fraction above 1"),
    (lambda: LearnerConfig(gpus_per_rank=2), "gpus_per_rank: 2; a learner rank holds 0 .CPU. or a GPU"),
    (lambda: LearnerConfig(num_ranks=2, gpus_per_rank=0.5), "gpus_per_rank: 0.5 with num_ranks 2 lets Ray put two "
                                                            "ranks on one GPU, which NCCL refuses"),
    (lambda: RolloutConfig(cpus_per_worker=-1), "cpus_per_worker"),
    (lambda: WeightSyncConfig(bucket_mb=0), "bucket_mb"),
    (lambda: ClusterConfig(num_cpus=0), "num_cpus"),
    (lambda: ClusterConfig(num_gpus=-1), "num_gpus"),
    (lambda: ClusterConfig(placement_timeout_s=0), "placement_timeout_s"),
])
def test_config_checks(make, words):
    with pytest.raises(ValueError, match=words):
        make()
