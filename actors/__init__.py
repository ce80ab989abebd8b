"""Ray actors of the pipeline (this package may import ray and deepspeed; rl/, rewards/, model/ may not).

- `actors.config`: config sections rollout (resources, weight sync), learner, cluster, checkpoint, logging.
- `actors.cluster`: Ray start-up on loopback, resource checks naming config keys, placement groups.
- `actors.group`: `ActorGroup` (a role's actors in slots, replaced when dead or hung) and the deadline-bound
  `wait` / `gather` every driver-side wait goes through.
- `actors.rollout_pool`: the driver's `RolloutPool` over the rollout workers (shards, re-sampling, weight sync).
- `actors.rewards`: `RewardRouter`, the reward terms on Ray actors (heavy terms one actor each).
- `actors.learner`: `LearnerGroup` of DeepSpeed ranks, the `Engine` adapter the rl update runs on.
- `actors.rollout`: `RolloutWorker` holding a versioned policy copy and sampling `RolloutBatch`es.
- `actors.weight_sync`: bucketed, versioned learner -> worker transfer (object store or broadcast).
- `actors.network_source`: building a network from a checkpoint path or a seeded factory.

Importing `actors` (or `actors.config`) imports neither ray nor deepspeed.
"""
