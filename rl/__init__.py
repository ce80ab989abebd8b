"""rl: UniGRPO for masked diffusion LMs — rollout batch, structured masking, estimators, loss, update.

Plain PyTorch: nothing here imports ray or deepspeed (tests/rl/test_imports.py enforces it), so the
algorithm runs and is tested on a laptop; actors/ wraps `unigrpo_update` for the DeepSpeed learner.
"""

from rl.advantages import batch_advantages, group_advantages, groups_to_keep
from rl.batch import RolloutBatch
from rl.config import (
    AdvantageConfig,
    AlgoConfig,
    DiffuGRPOConfig,
    KLConfig,
    MaskingConfig,
    RandomMaskingConfig,
)
from rl.estimators import ESTIMATORS, MaskedViews, build_views, get_estimator, register_estimator
from rl.kinds import KINDS
from rl.logprobs import token_logprobs
from rl.losses import KL_ESTIMATORS, get_kl, policy_loss, reduce_stats, register_kl, summarize_stats
from rl.masking import ratio_schedule, stable_seed, structured_mask, timestep_schedule
from rl.update import Engine, PlainEngine, unigrpo_update

__all__ = [
    "ESTIMATORS", "KINDS", "KL_ESTIMATORS",
    "AdvantageConfig", "AlgoConfig", "DiffuGRPOConfig", "Engine", "KLConfig", "MaskedViews", "MaskingConfig",
    "PlainEngine", "RandomMaskingConfig", "RolloutBatch",
    "batch_advantages", "build_views", "get_estimator", "get_kl", "group_advantages", "groups_to_keep",
    "policy_loss", "ratio_schedule", "reduce_stats", "register_estimator", "register_kl", "stable_seed",
    "structured_mask", "summarize_stats", "timestep_schedule", "token_logprobs", "unigrpo_update",
]
