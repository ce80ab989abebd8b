"""Tiny random-weight twins of LLaDA / MMaDA for tests and demos.

Same module tree and key names as the 8B models, any size. Weights are drawn from a private
generator (normal, std 0.02; RMSNorm weights 1), so a seed fixes them and the global RNG is left
untouched. The tiny tokenizer (model/assets/tiny_tokenizer) supplies the vocabulary size and the
special ids. MMaDA twins append `codebook_size` image-code rows after the text vocabulary: image
code k has id len(tokenizer) + k, as upstream.
"""

from __future__ import annotations

import torch

from model.checkpoint import LoadedModel
from model.network import BackboneConfig, MaskedDiffusionLM, RMSNorm

INIT_STD = 0.02  # upstream's init_std


def tiny_backbone(
    vocab_size: int,
    *,
    d_model: int = 64,
    n_layers: int = 2,
    n_heads: int = 4,
    n_kv_heads: int | None = None,
    mlp_hidden_size: int = 128,
    mask_token_id: int,
    eos_token_id: int,
    pad_token_id: int | None = None,
    bos_token_id: int | None = None,
    max_sequence_length: int = 4096,
    model_type: str = "llada",
    mmada: dict | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> MaskedDiffusionLM:
    """A random-weight backbone with the published key names (deterministic under `seed`).

    n_kv_heads defaults to n_heads, pad_token_id to eos_token_id and bos_token_id to 0.
    """
    config = BackboneConfig(
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads or n_heads,
        n_layers=n_layers,
        mlp_hidden_size=mlp_hidden_size,
        vocab_size=vocab_size,
        embedding_size=vocab_size,
        max_sequence_length=max_sequence_length,
        mask_token_id=mask_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id if pad_token_id is None else pad_token_id,
        bos_token_id=0 if bos_token_id is None else bos_token_id,
        model_type=model_type,
        mmada=dict(mmada or {}),
    )
    return random_network(config, seed=seed, dtype=dtype)


def random_network(config: BackboneConfig, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> MaskedDiffusionLM:
    """`config`'s network with N(0, INIT_STD) weights and unit norms, drawn from generator(seed)."""
    with torch.device("meta"):
        network = MaskedDiffusionLM(config)
    network.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    norm_weights = {id(module.weight) for module in network.modules() if isinstance(module, RMSNorm)}
    with torch.no_grad():
        for _, parameter in sorted(network.named_parameters()):  # fixed order: same seed, same weights
            if id(parameter) in norm_weights:
                parameter.fill_(1.0)
            else:
                parameter.normal_(0.0, INIT_STD, generator=generator)
    return network.to(dtype).eval()


def tiny_model(seed: int = 0, *, dtype: torch.dtype = torch.float32, **size) -> LoadedModel:
    """A tiny LLaDA twin sized to the tiny tokenizer; `size` goes to tiny_backbone (d_model, ...)."""
    from model.templates import special_ids
    from model.tokenizer import load_tiny_tokenizer

    tokenizer = load_tiny_tokenizer()
    ids = special_ids(tokenizer)
    network = tiny_backbone(
        len(tokenizer),
        mask_token_id=ids.mask,
        eos_token_id=ids.eos,
        pad_token_id=ids.pad,
        bos_token_id=ids.bos,
        seed=seed,
        dtype=dtype,
        **size,
    )
    return LoadedModel(network=network, tokenizer=tokenizer, config=network.config, path=None)


def tiny_mmada_model(
    seed: int = 0, *, codebook_size: int = 64, num_vq_tokens: int = 16, dtype: torch.dtype = torch.float32, **size
) -> LoadedModel:
    """A tiny MMaDA twin: vocabulary len(tokenizer) + codebook_size, image code k at id len(tokenizer) + k."""
    from model.templates import special_ids
    from model.tokenizer import load_tiny_tokenizer

    tokenizer = load_tiny_tokenizer()
    ids = special_ids(tokenizer)
    text_vocab = len(tokenizer)
    vocab_size = text_vocab + codebook_size
    mmada = {
        "new_vocab_size": vocab_size,
        "llm_vocab_size": text_vocab,
        "codebook_size": codebook_size,
        "num_vq_tokens": num_vq_tokens,
        "num_new_special_tokens": 0,
    }
    network = tiny_backbone(
        vocab_size,
        mask_token_id=ids.mask,
        eos_token_id=ids.eos,
        pad_token_id=ids.pad,
        bos_token_id=ids.bos,
        model_type="mmada",
        mmada=mmada,
        seed=seed,
        dtype=dtype,
        **size,
    )
    return LoadedModel(network=network, tokenizer=tokenizer, config=network.config, path=None)
