"""Ray start-up and placement: loopback by default, resources checked against the config before any actor.

- `init_ray(cfg, roles)`: joins `cluster.address` (or RAY_ADDRESS, set inside `ray job submit`) or
  starts a local Ray of its own (no dashboard unless `cluster.dashboard`), never joining a `ray start`
  cluster it was not pointed at. With `cluster.loopback` (the default) Ray stays on 127.0.0.1: Ray binds
  the machine's external interface even when told 127.0.0.1 unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, a
  value Ray reads when it is imported, so this module sets it before importing ray and, when ray was
  imported earlier, also sets the constant Ray already read. Token auth is disabled
  (RAY_AUTH_MODE=disabled) so `ray status`/`ray job submit` keep working against `ray start` clusters.
- The requested resources (`RoleResources` per role: learner ranks, rollout workers, scorers) are
  checked against the nodes (the planned local node before a local Ray starts, the live nodes of a
  joined cluster) and an impossible request fails with an error that names the config keys.
- A fraction of a GPU (`learner.gpus_per_rank` or `rollout.gpus_per_worker` below 1: colocation) is placed by Ray
  on one GPU, never split over two, so the check also counts, for every requested size, how many actors of at
  least that size the GPUs can hold at all (`check_gpu_sharing`).
- `create_placement_groups` makes one placement group per role with `cluster.placement_strategy`;
  `bundle_strategy(pg, i)` schedules the i-th actor of a role on its bundle.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

_LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
for _name, _value in _LOOPBACK_ENV.items():
    os.environ.setdefault(_name, _value)

import ray  # noqa: E402  (after the environment above)
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group  # noqa: E402
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy  # noqa: E402

from actors.config import ClusterConfig, LearnerConfig, RolloutConfig  # noqa: E402


class ResourceError(ValueError):
    """The configured actors cannot be placed on this cluster; the message names the config keys."""


@dataclass(frozen=True)
class RoleResources:
    """`count` actors of one role, each needing `cpus` CPUs and `gpus` GPUs; `*_key` name the config keys."""

    name: str
    count: int
    cpus: float
    gpus: float
    count_key: str
    cpus_key: str
    gpus_key: str

    def __post_init__(self):
        if self.cpus <= 0 and self.gpus <= 0:
            raise ResourceError(f"{self.cpus_key}=0 and {self.gpus_key}=0: each {self.name} actor must reserve "
                                "some CPU or GPU so that Ray can place it")

    def bundle(self) -> dict[str, float]:
        return {k: v for k, v in (("CPU", self.cpus), ("GPU", self.gpus)) if v > 0}

    def describe(self, resource: str) -> str:
        key, per = (self.cpus_key, self.cpus) if resource == "CPU" else (self.gpus_key, self.gpus)
        return f"{self.count_key} × {key} = {self.count} × {per:g}"


def learner_role(cfg: LearnerConfig, section: str = "learner") -> RoleResources:
    return RoleResources("learner", cfg.num_ranks, cfg.cpus_per_rank, cfg.gpus_per_rank,
                         f"{section}.num_ranks", f"{section}.cpus_per_rank", f"{section}.gpus_per_rank")


def rollout_role(cfg: RolloutConfig, section: str = "rollout") -> RoleResources:
    return RoleResources("rollout", cfg.num_workers, cfg.cpus_per_worker, cfg.gpus_per_worker,
                         f"{section}.num_workers", f"{section}.cpus_per_worker", f"{section}.gpus_per_worker")


def apply_loopback_env(loopback: bool) -> None:
    """Keep (or stop keeping) Ray on 127.0.0.1 for the processes started from now on."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0" if loopback else "1"
    from ray._private import ray_constants  # read at import; Ray's node-IP lookup consults this attribute

    ray_constants.ENABLE_RAY_CLUSTER = not loopback


def local_nodes(cfg: ClusterConfig) -> list[dict[str, float]]:
    """The single node a local Ray would start with this config."""
    gpus = cfg.num_gpus
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count()
    return [{"CPU": float(cfg.num_cpus or os.cpu_count() or 1), "GPU": float(gpus)}]


def cluster_nodes() -> list[dict[str, float]]:
    """Total CPU/GPU of every alive node of the connected cluster."""
    return [{"CPU": float(n["Resources"].get("CPU", 0)), "GPU": float(n["Resources"].get("GPU", 0))}
            for n in ray.nodes() if n.get("Alive")]


def check_resources(roles: Sequence[RoleResources], nodes: list[dict[str, float]], strategy: str = "PACK") -> None:
    """Raise ResourceError, naming the config keys, if the roles cannot possibly be placed on `nodes`."""
    where = f"{len(nodes)} node(s) with " + ", ".join(f"{n['CPU']:g} CPU / {n['GPU']:g} GPU" for n in nodes)
    for resource in ("CPU", "GPU"):
        for role in roles:
            per_actor = role.cpus if resource == "CPU" else role.gpus
            largest = max((n[resource] for n in nodes), default=0.0)
            if per_actor > largest:
                key = role.cpus_key if resource == "CPU" else role.gpus_key
                raise ResourceError(f"{key}={per_actor:g}: each {role.name} actor needs {per_actor:g} {resource} "
                                    f"but the largest node has {largest:g} (cluster: {where})")
        users = [r for r in roles if (r.cpus if resource == "CPU" else r.gpus) > 0]
        wanted = sum(r.count * (r.cpus if resource == "CPU" else r.gpus) for r in users)
        have = sum(n[resource] for n in nodes)
        if wanted > have + 1e-9:
            terms = " + ".join(r.describe(resource) for r in users)
            raise ResourceError(f"{terms}: {wanted:g} {resource} requested but the cluster has {have:g} "
                                f"(cluster: {where}); lower these values or add resources")
    check_gpu_sharing(roles, nodes, where)
    for role in roles:
        fits = [n for n in nodes if n["CPU"] >= role.cpus and n["GPU"] >= role.gpus]
        if strategy == "STRICT_PACK" and not any(
                n["CPU"] >= role.count * role.cpus and n["GPU"] >= role.count * role.gpus for n in nodes):
            raise ResourceError(f"{role.count_key}={role.count}: cluster.placement_strategy=STRICT_PACK puts all "
                                f"{role.name} actors on one node, and no node holds {role.count * role.cpus:g} CPU "
                                f"and {role.count * role.gpus:g} GPU (cluster: {where}); use PACK")
        if strategy == "STRICT_SPREAD" and role.count > len(fits):
            raise ResourceError(f"{role.count_key}={role.count}: cluster.placement_strategy=STRICT_SPREAD needs one "
                                f"node per {role.name} actor, and only {len(fits)} node(s) fit one (cluster: {where})")


def check_gpu_sharing(roles: Sequence[RoleResources], nodes: list[dict[str, float]], where: str) -> None:
    """Raise ResourceError when the GPU requests cannot be packed onto single GPUs.

    Ray puts a fractional request on one GPU, and an actor of g whole GPUs takes g GPUs. Each GPU (a node's
    fractional remainder counts as one of that size) holds at most floor(capacity / s) actors of size s or more,
    so for every requested size s the actors of at least s must not outnumber those places. This never refuses a
    request Ray could place, and it is exact when every GPU actor asks for the same share (e.g. three workers of
    0.6 ask for 1.8 of two GPUs, but each GPU holds one of them)."""
    demands = [(min(r.gpus, 1.0), r) for r in roles if r.gpus > 0 for _ in range(r.count * max(1, int(r.gpus)))]
    gpus = [1.0 for n in nodes for _ in range(int(n["GPU"]))] + [n["GPU"] % 1 for n in nodes if n["GPU"] % 1]
    for size in sorted({s for s, _ in demands}):
        users = [r for s, r in demands if s >= size]
        room = sum(int(capacity / size + 1e-9) for capacity in gpus)
        if len(users) > room:
            keys = " + ".join(dict.fromkeys(r.describe("GPU") for r in users))
            raise ResourceError(f"{keys}: {len(users)} actor(s) need {size:g} of one GPU or more each, and Ray puts "
                                f"each on a single GPU, but the {len(gpus)} GPU(s) hold at most {room} of them "
                                f"(cluster: {where}); use shares that add up to at most 1 per GPU or add GPUs")


def init_ray(cfg: ClusterConfig, roles: Sequence[RoleResources] = ()) -> list[dict[str, float]]:
    """Check `roles` against the cluster and connect to (or start) Ray; returns the nodes' resources.

    For a local Ray the check runs before Ray starts; when joining a cluster, right after connecting
    and before anything is scheduled. An already initialised Ray (tests) is reused; inside
    `ray job submit` (RAY_ADDRESS is set) the job joins its cluster.
    """
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address is None and not ray.is_initialized():
        check_resources(roles, local_nodes(cfg), cfg.placement_strategy)
        apply_loopback_env(cfg.loopback)
        # "local": a new instance even when a `ray start` cluster is running here (a bare ray.init()
        # would join the one named in <ray temp dir>/ray_current_cluster and reject num_cpus).
        ray.init(address="local", num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, include_dashboard=cfg.dashboard)
    elif not ray.is_initialized():
        apply_loopback_env(cfg.loopback)
        ray.init(address=address)
    nodes = cluster_nodes()
    check_resources(roles, nodes, cfg.placement_strategy)
    return nodes


def create_placement_groups(roles: Sequence[RoleResources], cfg: ClusterConfig) -> dict[str, PlacementGroup]:
    """One ready placement group per role (checked first); fails naming the role's keys on timeout."""
    check_resources(roles, cluster_nodes(), cfg.placement_strategy)
    groups: dict[str, PlacementGroup] = {}
    for role in roles:
        groups[role.name] = placement_group([role.bundle()] * role.count, strategy=cfg.placement_strategy,
                                            name=f"unigrpo-{role.name}")
    try:
        for role in roles:
            ray.get(groups[role.name].ready(), timeout=cfg.placement_timeout_s)
    except ray.exceptions.GetTimeoutError:
        for group in groups.values():
            remove_placement_group(group)
        pending = ", ".join(f"{r.name} ({r.count_key}={r.count}, bundle {r.bundle()})" for r in roles)
        raise ResourceError(f"placement groups for {pending} were not placed within cluster.placement_timeout_s="
                            f"{cfg.placement_timeout_s:g} s with strategy {cfg.placement_strategy}; free "
                            f"resources now: {ray.available_resources()}") from None
    return groups


def bundle_strategy(group: PlacementGroup, index: int) -> PlacementGroupSchedulingStrategy:
    """Scheduling strategy that puts an actor on bundle `index` of `group`."""
    return PlacementGroupSchedulingStrategy(placement_group=group, placement_group_bundle_index=index)


def remove_placement_groups(groups: dict[str, PlacementGroup]) -> None:
    for group in groups.values():
        remove_placement_group(group)

