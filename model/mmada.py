"""MMaDA's token layout and prompt builders.

MMaDA is the LLaDA backbone with its embedding and LM head resized so that image codes follow the text
vocabulary (image code k is token `len(tokenizer) + k`); this module builds the text-to-image and understanding
sequences from it, in one place, so that every caller builds the same ids (as upstream would). The
backbone: docs/models.md §1.4; the ids and task tokens: docs/models.md §2.2; the layouts and the t2i text-part
rule: docs/models.md §2.4.

Deviations from upstream, on purpose:
- Upstream's t2i attention mask is built one position longer than the sequence (`+ 3` for two special
  tokens); ours is the sequence's own length.
- `mmu_prompt` takes the chat prompt ids as given. Our chat template (model/templates.py) starts with
  BOS; MMaDA's understanding demo tokenises its chat prompt without BOS. Callers that want the demo's
  exact ids strip the leading BOS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

LAYOUT_FIELDS = ("codebook_size", "num_vq_tokens")  # config.mmada entries the layout needs


@dataclass(frozen=True)
class MMaDALayout:
    """Where text, image codes and the task tokens live in an MMaDA vocabulary."""

    text_vocab: int  # len(tokenizer): the first image-code id
    codebook_size: int  # image codes per position (8192 for MAGVIT-v2)
    num_vq_tokens: int  # image slots of a generated image (1024 at 512 px)
    vocab_size: int  # rows of the network's embedding / LM head (>= image_hi)
    soi: int  # <|soi|>
    eoi: int  # <|eoi|>
    t2i: int  # <|t2i|>
    mmu: int  # <|mmu|>
    ipad: int  # [iPAD]: left pad of the text-to-image text part
    bos: int
    eos: int
    mask: int  # [MASK]
    pad: int  # the tokenizer's pad (= EOS upstream)

    @property
    def image_lo(self) -> int:
        """First image-code id (= text_vocab)."""
        return self.text_vocab

    @property
    def image_hi(self) -> int:
        """One past the last image-code id."""
        return self.text_vocab + self.codebook_size

    @property
    def task_ids(self) -> frozenset[int]:
        """The MMaDA task / structure tokens (never masked in a prompt)."""
        return frozenset((self.soi, self.eoi, self.t2i, self.mmu, self.ipad))

    @classmethod
    def from_model(cls, config, tokenizer) -> MMaDALayout:
        """The layout of a network `config` (BackboneConfig) with its `tokenizer`; raises naming what is off."""
        from model.templates import special_ids

        where = f"model_type={config.model_type!r}"
        missing = [name for name in LAYOUT_FIELDS if not isinstance(config.mmada.get(name), int)]
        if config.model_type != "mmada" or missing:
            raise ValueError(
                f"config ({where}, mmada fields {sorted(config.mmada)}) is not an MMaDA config: it needs "
                f"model_type 'mmada' and integer fields {list(LAYOUT_FIELDS)} (config.json of MMaDA-8B: "
                f"codebook_size 8192, num_vq_tokens 1024); missing or not integers: {missing}"
            )
        codebook, slots = config.mmada["codebook_size"], config.mmada["num_vq_tokens"]
        if codebook < 1 or slots < 1:
            raise ValueError(f"config: codebook_size={codebook} and num_vq_tokens={slots} must be positive")
        text_vocab = len(tokenizer)
        if text_vocab + codebook > config.num_embeddings:
            raise ValueError(
                f"config: image codes need ids [len(tokenizer)={text_vocab}, {text_vocab + codebook}) but the "
                f"network has {config.num_embeddings} vocabulary rows; the tokenizer does not belong to this "
                f"checkpoint or codebook_size={codebook} is wrong (need rows >= len(tokenizer) + codebook_size)"
            )
        ids = special_ids(tokenizer)
        absent = [name for name in ("soi", "eoi", "t2i", "mmu", "ipad") if getattr(ids, name) is None]
        if absent:
            raise ValueError(f"tokenizer lacks the MMaDA task token(s) {absent} (<|soi|>, <|eoi|>, <|t2i|>, "
                             f"<|mmu|>, [iPAD]); it is not a LLaDA/MMaDA tokenizer")
        if ids.mask != config.mask_token_id:
            raise ValueError(f"tokenizer's [MASK] id {ids.mask} differs from config mask_token_id="
                             f"{config.mask_token_id}; the tokenizer does not belong to this checkpoint")
        return cls(text_vocab=text_vocab, codebook_size=codebook, num_vq_tokens=slots,
                   vocab_size=config.num_embeddings, soi=ids.soi, eoi=ids.eoi, t2i=ids.t2i, mmu=ids.mmu,
                   ipad=ids.ipad, bos=ids.bos, eos=ids.eos, mask=ids.mask, pad=ids.pad)

    def code_to_id(self, codes):
        """Image codes (int, list or long tensor, any shape) -> token ids (same type); raises outside the codebook."""
        values = torch.as_tensor(codes)
        if values.is_floating_point() or values.dtype == torch.bool:
            raise ValueError(f"code_to_id: image codes must be integers, got dtype {values.dtype}")
        bad = (values < 0) | (values >= self.codebook_size)
        if bad.any():
            raise ValueError(f"code_to_id: image code {int(values[bad].flatten()[0])} is outside the codebook "
                             f"[0, {self.codebook_size})")
        return _like(codes, values.long() + self.image_lo)

    def id_to_code(self, ids):
        """Image-code token ids (int, list or long tensor) -> codes (same type); raises on a non-image id."""
        values = torch.as_tensor(ids)
        if values.is_floating_point() or values.dtype == torch.bool:
            raise ValueError(f"id_to_code: token ids must be integers, got dtype {values.dtype}")
        bad = (values < self.image_lo) | (values >= self.image_hi)
        if bad.any():
            raise ValueError(f"id_to_code: token id {int(values[bad].flatten()[0])} is not an image code id "
                             f"[{self.image_lo}, {self.image_hi})")
        return _like(ids, values.long() - self.image_lo)


def _like(original, values: torch.Tensor):
    """`values` as the type of `original`: a tensor stays a tensor, a list a list, an int an int."""
    if isinstance(original, torch.Tensor):
        return values.to(original.device)
    return values.tolist()


class T2IPrompt(NamedTuple):
    ids: list[int]  # text_length + 1 ids: [iPAD]… <|t2i|> BOS text EOS <|soi|>
    num_pads: int  # leading [iPAD]s, hidden by the attention mask


def t2i_prompt(layout: MMaDALayout, text_ids: Sequence[int], text_length: int) -> T2IPrompt:
    """The text-to-image prompt (module docstring): text part of exactly `text_length` ids, then <|soi|>.

    text_ids: the prompt's plain token ids (no template; [] for the unconditional input).
    The N image slots and <|eoi|> follow the returned ids.
    """
    if isinstance(text_length, bool) or not isinstance(text_length, int) or text_length < 3:
        raise ValueError(f"text_length: got {text_length!r}; need an integer >= 3 (<|t2i|> BOS EOS at least)")
    text = _check_text_ids(text_ids, layout, "text_ids")
    if text and text[0] == layout.bos:
        text = text[1:]
    part = [layout.t2i, layout.bos, *text, layout.eos]
    if len(part) > text_length:  # upstream: keep the head, end with EOS
        part = part[: text_length - 1] + [layout.eos]
    pads = text_length - len(part)
    return T2IPrompt([layout.ipad] * pads + part + [layout.soi], pads)


def mmu_prompt(layout: MMaDALayout, image_codes, chat_prompt_ids: Sequence[int]) -> list[int]:
    """`<|mmu|> <|soi|>` image ids `<|eoi|>` + chat prompt ids; image_codes [N] are codes, not ids."""
    codes = torch.as_tensor(image_codes)
    if codes.dim() != 1 or codes.numel() == 0:
        raise ValueError(f"mmu_prompt: image_codes must be a non-empty flat [N] sequence, got shape "
                         f"{tuple(codes.shape)}")
    chat = _check_text_ids(chat_prompt_ids, layout, "chat_prompt_ids")
    return [layout.mmu, layout.soi, *layout.code_to_id(codes).tolist(), layout.eoi, *chat]


def _check_text_ids(ids: Sequence[int], layout: MMaDALayout, name: str) -> list[int]:
    """`ids` as a list of text token ids: integers in [0, text_vocab), no [MASK]."""
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence | torch.Tensor):
        raise ValueError(f"{name}: expected a list of token ids, got {type(ids).__name__}")
    values = [int(v) if isinstance(v, int | torch.Tensor) and not isinstance(v, bool) else v for v in ids]
    for i, value in enumerate(values):
        if not isinstance(value, int):
            raise ValueError(f"{name}[{i}]: {value!r} is not an integer token id")
        if not 0 <= value < layout.text_vocab:
            raise ValueError(f"{name}[{i}]: token id {value} is outside the text vocabulary [0, {layout.text_vocab})"
                             f"{' (an image code id)' if layout.image_lo <= value < layout.image_hi else ''}")
        if value == layout.mask:
            raise ValueError(f"{name}[{i}]: the prompt contains [MASK] (id {value}); prompts must be fully known")
    return values
