"""rewards/: the pluggable reward system — contract, registry, built-ins, and the service that runs them.

Public names: `Sample`, `Scored`, `samples_of`, `Reward`, `DetailedReward`, `get`, `register`,
`available`, `RewardService`, `RewardsConfig`, `RewardTermConfig`. Built-in rewards are imported lazily by
`get`, so `import rewards` pulls in neither math-verify nor torch, open_clip or torchvision.
See docs/custom_rewards.md for writing a reward.
"""

from rewards.base import DetailedReward, Reward, Sample, Scored, samples_of
from rewards.config import RewardsConfig, RewardTermConfig
from rewards.registry import available, get, register
from rewards.service import RewardService

__all__ = [
    "DetailedReward",
    "Reward",
    "RewardService",
    "RewardTermConfig",
    "RewardsConfig",
    "Sample",
    "Scored",
    "available",
    "get",
    "register",
    "samples_of",
]
