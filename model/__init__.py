"""The LLaDA / MMaDA masked-diffusion model: backbone, checkpoints, tokenizer, templates, sampler.

Public entry points (imported lazily, so `import model` loads neither torch nor transformers):

    model.load(path, dtype=None) -> LoadedModel(network, tokenizer, config, path)
    model.save(loaded_model, path)
    model.generate_text(network, prompts, *, gen_length, steps, block_length, ...)
    model.BackboneConfig, model.MaskedDiffusionLM, model.LoadedModel
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "load": "model.checkpoint",
    "save": "model.checkpoint",
    "save_state_dict": "model.checkpoint",
    "LoadedModel": "model.checkpoint",
    "BackboneConfig": "model.network",
    "MaskedDiffusionLM": "model.network",
    "generate_text": "model.sampling",
    "load_image_tokenizer": "model.magvit",
    "save_image_tokenizer": "model.magvit",
    "random_image_tokenizer": "model.magvit",
    "MagvitConfig": "model.magvit",
    "MagvitTokenizer": "model.magvit",
    "MMaDALayout": "model.mmada",
    "t2i_prompt": "model.mmada",
    "mmu_prompt": "model.mmada",
    "ImageSamplerConfig": "model.image_sampling",
    "generate_images": "model.image_sampling",
    "cosine_mask_counts": "model.image_sampling",
    "codes_of": "model.image_sampling",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'model' has no attribute {name!r}; it exports {__all__}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
