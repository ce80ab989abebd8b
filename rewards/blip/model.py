"""ImageReward-v1.0 as one module: BLIP ViT + cross-attending BERT + a 5-layer linear head, batched.

Parameter names are those of the PyPI package's `ImageReward` module (`blip.visual_encoder.*`,
`blip.text_encoder.*`, `mlp.layers.{0,2,4,6,7}.*`), so its `ImageReward.pt` loads without renaming.

reward = (head(text state of [CLS] after cross-attending to the image) − 0.16717362830052426) / 1.0333394966054072

Deviations from upstream: the package scores one image per forward pass (`ImageReward.score` /
`inference_rank` loop over images); this module scores a batch of (prompt, image) pairs at once. BLIP's
`vision_proj`/`text_proj` (contrastive heads, unused by the reward) are not built. The head's dropout layers
are kept at their indices so the keys match; they are inert in eval mode (the package has no activations
between the linear layers: its ReLUs are commented out).
"""

from __future__ import annotations

import torch
from torch import nn

from rewards.blip.med import TextConfig, TextEncoder
from rewards.blip.vit import VisionConfig, VisionTransformer

REWARD_MEAN = 0.16717362830052426  # ImageReward.mean in the package
REWARD_STD = 1.0333394966054072  # ImageReward.std in the package
HEAD_WIDTHS = (1024, 128, 64, 16, 1)  # after the text width (768 for ImageReward-v1.0)
HEAD_DROPOUTS = (0.2, 0.2, 0.1)  # between the first four linear layers (inert at inference)


class RewardHead(nn.Module):
    """Linear 768→1024→128→64→16→1 without activations; `layers` indices match the package's MLP."""

    def __init__(self, input_width: int) -> None:
        super().__init__()
        widths = (input_width, *HEAD_WIDTHS)
        modules: list[nn.Module] = []
        for index in range(len(HEAD_WIDTHS)):
            modules.append(nn.Linear(widths[index], widths[index + 1]))
            if index < len(HEAD_DROPOUTS):
                modules.append(nn.Dropout(HEAD_DROPOUTS[index]))
        self.layers = nn.Sequential(*modules)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)  # [B, D] -> [B, 1]


class Blip(nn.Module):
    """Holder that gives the encoders their `blip.` key prefix."""

    def __init__(self, vision: VisionConfig, text: TextConfig) -> None:
        super().__init__()
        self.visual_encoder = VisionTransformer(vision)
        self.text_encoder = TextEncoder(text)


class ImageRewardNetwork(nn.Module):
    """(pixels [B, 3, S, S], input_ids [B, T], attention_mask [B, T]) -> normalised rewards [B] (fp32)."""

    def __init__(self, vision: VisionConfig, text: TextConfig) -> None:
        super().__init__()
        if text.encoder_width != vision.width:
            raise ValueError(
                f"encoder_width: {text.encoder_width} differs from the vision width {vision.width}; "
                "the text encoder's cross-attention reads the ViT's tokens"
            )
        self.vision_config = vision
        self.text_config = text
        self.blip = Blip(vision, text)
        self.mlp = RewardHead(text.hidden_size)

    def forward(
        self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        image_tokens = self.blip.visual_encoder(pixels)  # [B, 1 + N, C]
        text_states = self.blip.text_encoder(input_ids, attention_mask, image_tokens)  # [B, T, D]
        cls_state = text_states[:, 0, :].to(self.mlp.layers[0].weight.dtype)  # [B, D]
        head = self.mlp(cls_state).float()  # [B, 1]; the loader keeps the head in fp32, as the package does
        return ((head - REWARD_MEAN) / REWARD_STD).squeeze(-1)  # [B]
