"""Native BLIP (ViT + cross-attending BERT) and the ImageReward-v1.0 network built on it.

Plain PyTorch re-implementation of the parts of the PyPI `image-reward` package that scoring needs, with
the same parameter names, so the published `ImageReward.pt` loads as is. See `loader.py` for what differs.

- `vit.py`: the ViT (`blip.visual_encoder`); `med.py`: the cross-attending BERT (`blip.text_encoder`);
- `model.py`: ViT + BERT + the reward head; `loader.py`: files on disk -> network + tokenizer;
- `inputs.py`: image/text checks and CLIP-style preprocessing without torchvision (also used by `rewards.clip`);
- `tiny.py`: tiny random twins of ImageReward and of a transformers CLIP, written to disk, for tests and benches.
"""

from rewards.blip.loader import LoadedImageReward, load_image_reward
from rewards.blip.med import TextConfig, TextEncoder
from rewards.blip.model import REWARD_MEAN, REWARD_STD, ImageRewardNetwork
from rewards.blip.vit import VisionConfig, VisionTransformer

__all__ = [
    "REWARD_MEAN",
    "REWARD_STD",
    "ImageRewardNetwork",
    "LoadedImageReward",
    "TextConfig",
    "TextEncoder",
    "VisionConfig",
    "VisionTransformer",
    "load_image_reward",
]
