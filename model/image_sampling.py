"""MMaDA text-to-image sampling: MaskGIT cosine schedule with classifier-free guidance.

All N image slots of the t2i layout start masked; each of T steps runs the conditional and unconditional rows as
one batch, draws a code for every masked slot from the guided logits over the image-code columns, and keeps the
n = ⌊N·cos(π/2·r)⌋ least confident slots masked, so a prompt turns into N image codes the image tokenizer
decodes. Each row draws from its own seeded generator, so a row's image depends on its prompt, the weights and
the seed only. The steps: docs/models.md §3.2; the draws and their order: docs/models.md §3.3.

Deviations from upstream's `t2i_generate`, on purpose:
- Codes are drawn by Gumbel-max in float64 with per-row generators (upstream: `torch.multinomial` on the
  batch with one generator): the same distribution, not the same bits.
- The LM head runs only at the still-masked slots and on the image-code rows of its weight; upstream
  computes every position over the full vocabulary and slices afterwards. Same logits, less work.
- ⌊N·cos(π/2·r)⌋ is computed in float64; upstream uses float32, whose cos(π/3) rounds below 1/2, so at
  r = 2/3 upstream keeps one slot fewer masked (e.g. 127 instead of 128 of 256).
- The n lowest-confidence slots are chosen by a stable sort (exactly n, ties to the earlier slot);
  upstream masks `confidence < n-th smallest`, which keeps fewer than n masked on ties.
- A step does not re-draw the codes of revealed slots (upstream re-samples them and then discards them).
- A step that reveals nothing (one slot left before the last step, when T > N) skips its forward pass
  and its draws; step indices in `reveal_step` still count it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F

from model.mmada import MMaDALayout, t2i_prompt
from model.sampling import row_seed

TemperatureSchedule = Literal["linear", "compound"]
TEMPERATURE_SCHEDULES: tuple[str, ...] = get_args(TemperatureSchedule)


@dataclass(frozen=True)
class ImageSamplerConfig:
    """Knobs of the text-to-image sampler (defaults: MMaDA's demo, docs/models.md §3.2)."""

    steps: int = 15
    """T: denoising steps (forward passes); the paper evaluates with 50, the demo uses 15."""
    guidance_scale: float = 3.5
    """w of classifier-free guidance: (1+w)·cond − w·uncond; 0 skips the unconditional forward."""
    temperature: float = 1.0
    """τ0: scale of the Gumbel noise added to the confidences that pick which slots stay masked."""
    temperature_schedule: TemperatureSchedule = "linear"
    """How τ decays over steps: linear τ0·(1−r) (MaskGIT) or compound τ0·∏(1−r_j) (MMaDA's code)."""
    text_length: int = 128
    """Tokens in the t2i text part `[iPAD]… <|t2i|> BOS text EOS` (upstream: max_seq_length of its
    config); longer prompts are truncated, keeping the EOS."""

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps: got {self.steps!r}; expected a positive integer (e.g. 15)")
        for name in ("guidance_scale", "temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}: got {value!r}; expected a finite number >= 0")
        if self.temperature_schedule not in TEMPERATURE_SCHEDULES:
            raise ValueError(f"temperature_schedule: got {self.temperature_schedule!r}; expected one of "
                             f"{list(TEMPERATURE_SCHEDULES)}")
        if isinstance(self.text_length, bool) or not isinstance(self.text_length, int) or self.text_length < 3:
            raise ValueError(f"text_length: got {self.text_length!r}; expected an integer >= 3 "
                             "(<|t2i|> BOS EOS at least)")


class ImageSample(NamedTuple):
    """What `RolloutBatch.from_sampler(..., prompt_width=prompt_width, eos_ids=())` takes."""

    sequences: torch.Tensor  # [B, P + N + 1] long: prompt (text part + <|soi|>), image ids, <|eoi|>
    reveal_step: torch.Tensor  # [B, N] long: 0-based step at which each slot was revealed
    prompt_lengths: list[int]  # real prompt tokens per row (P minus the [iPAD]s)
    prompt_width: int  # P = text_length + 1


def cosine_mask_counts(num_tokens: int, steps: int) -> list[int]:
    """Slots still masked after each step: max(1, min(masked − 1, ⌊N·cos(π/2·(s+1)/T)⌋)), 0 after the last.

    E.g. cosine_mask_counts(16, 4) == [14, 11, 6, 0] (16·cos(π/8) = 14.78, 16·cos(π/4) = 11.31, ...).
    """
    for name, value in (("num_tokens", num_tokens), ("steps", steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: got {value!r}; expected a positive integer")
    counts, masked = [], num_tokens
    for step in range(steps - 1):
        ratio = (step + 1) / steps
        masked = max(1, min(masked - 1, math.floor(num_tokens * math.cos(math.pi / 2 * ratio))))
        counts.append(masked)
    return counts + [0]


def confidence_temperatures(cfg: ImageSamplerConfig) -> list[float]:
    """τ_s for s = 0..T−1 under cfg.temperature_schedule (the last is 0: r = 1)."""
    taus, tau = [], float(cfg.temperature)
    for step in range(cfg.steps):
        ratio = (step + 1) / cfg.steps
        tau = tau * (1.0 - ratio) if cfg.temperature_schedule == "compound" else cfg.temperature * (1.0 - ratio)
        taus.append(tau)
    return taus


def codes_of(sequences: torch.Tensor, layout: MMaDALayout, prompt_width: int) -> torch.Tensor:
    """sequences [B, P + N + 1] -> image codes [B, N] (ids minus image_lo); raises on a non-image id."""
    slots = sequences[:, prompt_width : prompt_width + layout.num_vq_tokens]  # [B, N]
    if slots.shape[1] != layout.num_vq_tokens:
        raise ValueError(f"codes_of: sequences of width {sequences.shape[1]} hold no {layout.num_vq_tokens} image "
                         f"slots after prompt_width={prompt_width}")
    return layout.id_to_code(slots)


def image_logits(network, hidden: torch.Tensor, layout: MMaDALayout) -> torch.Tensor:
    """hidden [..., d] -> logits [..., K] over the image-code columns only (rows [image_lo, image_hi) of the head)."""
    weight = network.transformer.ff_out.weight[layout.image_lo : layout.image_hi]  # [K, d]
    return F.linear(hidden, weight)


def generate_images(network, layout: MMaDALayout, text_ids: list[list[int]], cfg: ImageSamplerConfig, *,
                    seed: int = 0) -> ImageSample:
    """Sample `layout.num_vq_tokens` image codes for each prompt; see the module docstring.

    network: a `MaskedDiffusionLM` with an MMaDA vocabulary (uses `.config`, `.hidden_states`, and the
    image rows of `.transformer.ff_out`). text_ids: B plain prompts (no template), see `t2i_prompt`.
    """
    if not isinstance(cfg, ImageSamplerConfig):
        raise TypeError(f"cfg: got {type(cfg).__name__}; expected an ImageSamplerConfig")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed: got {seed!r}; expected an integer")
    if not isinstance(text_ids, (list, tuple)) or not text_ids:
        raise ValueError(f"text_ids: expected a non-empty list of token-id lists, got {text_ids!r:.80}")
    config = network.config
    if layout.image_hi > config.num_embeddings or layout.mask != config.mask_token_id:
        raise ValueError(f"layout (image ids [{layout.image_lo}, {layout.image_hi}), mask {layout.mask}) does not "
                         f"fit the network ({config.num_embeddings} vocabulary rows, mask {config.mask_token_id})")
    width = cfg.text_length + 1 + layout.num_vq_tokens + 1
    if width > config.max_sequence_length:
        raise ValueError(f"text_length={cfg.text_length} + <|soi|> + {layout.num_vq_tokens} slots + <|eoi|> = {width} "
                         f"exceeds the network's max_sequence_length={config.max_sequence_length}")
    prompts = []
    for row, ids in enumerate(text_ids):
        try:
            prompts.append(t2i_prompt(layout, ids, cfg.text_length))
        except ValueError as error:
            raise ValueError(f"text_ids[{row}]: {error}") from error
    device = next(network.parameters()).device
    with torch.inference_mode():
        inputs, attention_mask = _inputs(layout, prompts, cfg, device)
        reveal_step = _denoise(network, layout, inputs, attention_mask, cfg, len(prompts), seed)
        sequences = inputs[: len(prompts)]
    # Clones made outside inference mode are ordinary tensors, usable later as inputs of a graph.
    return ImageSample(sequences.clone(), reveal_step.clone(), [len(p.ids) - p.num_pads for p in prompts],
                       cfg.text_length + 1)


def _inputs(layout, prompts, cfg, device):
    """(inputs [C·B, P+N+1] long, attention_mask [C·B, P+N+1] bool); C = 2 with guidance (uncond rows last)."""
    rows = list(prompts)
    if cfg.guidance_scale > 0:
        rows += [t2i_prompt(layout, [], cfg.text_length)] * len(prompts)
    tail = [layout.mask] * layout.num_vq_tokens + [layout.eoi]
    inputs = torch.tensor([p.ids + tail for p in rows], dtype=torch.long)  # [C·B, T]
    attention_mask = torch.arange(inputs.shape[1]) >= torch.tensor([p.num_pads for p in rows])[:, None]  # [C·B, T]
    return inputs.to(device), attention_mask.to(device)


def _denoise(network, layout, inputs, attention_mask, cfg, batch, seed):
    """The step loop, in place on inputs [C·B, T]; returns reveal_step [B, N]."""
    device, n_slots, prompt_width = inputs.device, layout.num_vq_tokens, cfg.text_length + 1
    copies = inputs.shape[0] // batch
    slots = inputs[:, prompt_width : prompt_width + n_slots].unflatten(0, (copies, batch))  # [C, B, N] view
    reveal_step = torch.full((batch, n_slots), -1, dtype=torch.long, device=device)  # [B, N]
    generators = [torch.Generator(device=device).manual_seed(row_seed(seed, b)) for b in range(batch)]
    candidates = torch.arange(n_slots, device=device).expand(batch, n_slots)  # [B, m]: masked slots, ascending
    masked_after = cosine_mask_counts(n_slots, cfg.steps)
    taus = confidence_temperatures(cfg)
    for step, keep in enumerate(masked_after):
        m = candidates.shape[1]
        if keep == m:  # one slot left before the last step: nothing to reveal, skip the forward and the draws
            continue
        logits = _guided_logits(network, layout, inputs, attention_mask, prompt_width + candidates, copies,
                                float(cfg.guidance_scale))  # [B, m, K]
        codes = torch.empty(batch, m, dtype=torch.long, device=device)  # [B, m]
        confidence = torch.empty(batch, m, dtype=torch.float64, device=device)  # [B, m]
        for b, generator in enumerate(generators):
            logp = logits[b].to(torch.float64).log_softmax(-1)  # [m, K]
            codes[b] = (logp - _neg_gumbel((m, logp.shape[1]), generator, device)).argmax(-1)
            confidence[b] = logp.gather(1, codes[b, :, None]).squeeze(1)
            if keep > 0 and taus[step] > 0:
                confidence[b] -= taus[step] * _neg_gumbel((m,), generator, device)
        # Reveal the m − keep most confident (stable: ties go to the earlier slot); keep the rest masked.
        chosen = confidence.sort(dim=1, descending=True, stable=True).indices[:, : m - keep]  # [B, m − keep]
        positions = candidates.gather(1, chosen)  # [B, m − keep]
        tokens = codes.gather(1, chosen) + layout.image_lo  # [B, m − keep]
        slots.scatter_(2, positions.expand(copies, -1, -1), tokens.expand(copies, -1, -1))
        reveal_step.scatter_(1, positions, step)
        # Drop the revealed ones, keep the order: push them past the end, sort, cut.
        candidates = candidates.scatter(1, chosen, n_slots).sort(dim=1).values[:, :keep]
    return reveal_step


def _guided_logits(network, layout, inputs, attention_mask, positions, copies, guidance):
    """Image-code logits [B, m, K] at `positions` [B, m] (absolute columns), CFG-combined when copies == 2."""
    hidden = network.hidden_states(inputs, attention_mask)  # [C·B, T, d]
    index = positions.repeat(copies, 1)  # [C·B, m]
    picked = hidden.gather(1, index.unsqueeze(2).expand(-1, -1, hidden.shape[2]))  # [C·B, m, d]
    logits = image_logits(network, picked, layout)  # [C·B, m, K]
    if copies == 1:
        return logits
    # Combine in fp32 (fp64 for fp64 weights): bf16 would round away the difference of two large logits.
    conditional, unconditional = logits.to(torch.promote_types(logits.dtype, torch.float32)).chunk(2)  # [B, m, K]
    return (1 + guidance) * conditional - guidance * unconditional


def _neg_gumbel(shape, generator, device) -> torch.Tensor:
    """log(−log U) = −Gumbel, U ~ Uniform[0, 1) float64 from `generator` (U = 0 gives −inf Gumbel)."""
    noise = torch.empty(shape, dtype=torch.float64, device=device)
    noise.uniform_(generator=generator)
    return noise.log_().neg_().log_()
