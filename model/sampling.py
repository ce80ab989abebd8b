"""The LLaDA text sampler: semi-autoregressive blocks with low-confidence or random remasking.

`generate_text` follows LLaDA's reference `generate` (docs/models.md §3.1): x = prompt + L masks;
blocks of `block_length` are decoded left to right with `steps·block_length/gen_length` steps each; a
step runs one forward pass, proposes x̂ by Gumbel-max at temperature τ (float64 noise; τ = 0 is
argmax), scores each masked position of the current block by the softmax probability of x̂ (or a
uniform draw for `random`), and reveals the k best, k being the block's masked count split evenly over
its steps with the remainder going to the earliest steps. Text CFG (cfg_scale w > 0) runs the
unconditional input (prompt tokens replaced by [MASK]) in the same forward and uses
uncond + (w+1)(cond − uncond). The whole loop runs under `torch.inference_mode()`.
Prompts of different lengths are left-padded and the padding is hidden by the attention mask.

Where this deviates from the reference loop, and why:
- Logits, x̂ and confidences are computed only where they can matter: at the still-masked positions of
  the current block (low_confidence), or only at the k positions already drawn (random). The reference
  computes them everywhere and then gives every other position confidence −∞, so the output is the
  same; it saves the LM head, the softmax and the float64 Gumbel work outside the block.
- x̂ never proposes `[MASK]` itself (its logit is excluded before the argmax; the confidence is still the
  probability under the unmodified logits). In the reference a revealed `[MASK]` silently stays masked
  and can leave masks in the output; here every response position is revealed exactly once.
- The Gumbel-max is ranked in log space, logits − τ·log(−log U), rather than LLaDA's
  exp(logits) / (−log U)^τ: the log of the same quantity, so the same argmax (up to float64 rounding),
  at two logs per entry instead of exp + log + pow, and no overflow for logits above 709.
- Steps that reveal nothing (steps per block > block_length) skip their forward pass; the reference
  runs it and discards it. Step indices in `reveal_step` still count them.
- Randomness: row r draws from its own `torch.Generator` seeded from (seed, r), so a row's samples do
  not depend on the other prompts of the batch (their content or their lengths). With τ = 0 and
  low_confidence remasking nothing random is drawn. The draws are not LLaDA's (it draws one noise
  tensor over the whole batch and sequence), so only the distribution, not the bits, matches upstream.
- Ties in confidence are broken by `torch.topk` over the candidate positions; the reference's topk over
  the whole row may break exact ties differently.

Fast decoding (Fast-dLLM, arXiv 2505.22618; both off by default, the learner never uses either): `cache`
(`prefix` | `dual`: a block KV cache refreshed at every block boundary, an approximation) and `threshold`
(reveal every masked position of the block above a confidence; `TextSample.forwards` counts the forward passes).
What each does, when it is exact, and what it measured: docs/sampling.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, get_args

import torch

from model.network import KVCache

Remasking = Literal["low_confidence", "random"]
REMASKING_CHOICES: tuple[str, ...] = get_args(Remasking)
Cache = Literal["none", "prefix", "dual"]
CACHE_CHOICES: tuple[str, ...] = get_args(Cache)

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class TextSamplerConfig:
    """Knobs of the LLaDA text sampler (defaults: a typical RL rollout, docs/models.md §3.1)."""

    gen_length: int = 256
    """L: number of response tokens generated after the prompt."""
    steps: int = 128
    """S: total denoising steps (forward passes) over all blocks."""
    block_length: int = 32
    """B: tokens per semi-autoregressive block; gen_length % block_length == 0."""
    temperature: float = 0.9
    """τ of the Gumbel-max proposal; 0 is greedy argmax."""
    remasking: Remasking = "low_confidence"
    """Which masked positions a step reveals: the most confident ones, or uniformly random ones."""
    cfg_scale: float = 0.0
    """Text classifier-free guidance w: logits = uncond + (w+1)(cond − uncond); 0 disables it."""
    cache: Cache = "none"
    """Block KV cache: none (exact), prefix or dual (module docstring)."""
    threshold: float | None = None
    """Confidence-threshold parallel decoding in (0, 1]; None reveals the fixed per-step count."""

    def __post_init__(self):
        check_schedule(
            gen_length=self.gen_length,
            steps=self.steps,
            block_length=self.block_length,
            temperature=self.temperature,
            remasking=self.remasking,
            cfg_scale=self.cfg_scale,
            cache=self.cache,
            threshold=self.threshold,
        )


class TextSample(NamedTuple):
    """What `generate_text` returns."""

    sequences: torch.Tensor  # [N, P+L] long: left-padded prompt then response, P = longest prompt
    reveal_step: torch.Tensor  # [N, L] long: step (threshold: forward pass) that revealed each response token
    forwards: int  # forward passes of the network run (full or cached), the NFE of the whole batch


def check_schedule(*, gen_length, steps, block_length, temperature, remasking, cfg_scale, cache="none",
                   threshold=None) -> None:
    """Raise ValueError("<argument>: <what is wrong>; <what is right>") for an invalid sampler setting."""
    for name, value in (("gen_length", gen_length), ("steps", steps), ("block_length", block_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name}: got {value!r}; expected a positive integer")
    if gen_length % block_length:
        raise ValueError(
            f"gen_length: {gen_length} is not a multiple of block_length={block_length}; "
            "expected gen_length % block_length == 0"
        )
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise ValueError(
            f"steps: {steps} is not a multiple of the number of blocks gen_length/block_length={num_blocks}; "
            "expected every block to get the same number of steps"
        )
    for name, value in (("temperature", temperature), ("cfg_scale", cfg_scale)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name}: got {value!r}; expected a finite number >= 0")
    if remasking not in REMASKING_CHOICES:
        raise ValueError(f"remasking: got {remasking!r}; expected one of {list(REMASKING_CHOICES)}")
    if cache not in CACHE_CHOICES:
        raise ValueError(f"cache: got {cache!r}; expected one of {list(CACHE_CHOICES)}")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
            raise ValueError(f"threshold: got {threshold!r}; expected a confidence in (0, 1], or None for the "
                             "fixed per-step count")
        if remasking != "low_confidence":
            raise ValueError(f"threshold: {threshold!r} needs remasking='low_confidence' (got {remasking!r}: random "
                             "remasking has no confidence to compare); set threshold to None")


def reveal_schedule(masked_count: int, steps: int) -> list[int]:
    """Tokens revealed at each of `steps` steps: an even split, the remainder to the earliest steps.

    LLaDA's `get_num_transfer_tokens`, e.g. reveal_schedule(10, 4) == [3, 3, 2, 2].
    """
    base, remainder = divmod(masked_count, steps)
    return [base + 1] * remainder + [base] * (steps - remainder)


def row_seed(seed: int, row: int) -> int:
    """Seed of row `row`'s generator: a splitmix64 mix of (seed, row), so nearby seeds do not overlap."""
    z = ((seed & _MASK64) * 0x9E3779B97F4A7C15 + row + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _prompt_tensors(prompts, *, gen_length: int, mask_id: int, pad_id: int, vocab: int, max_length: int,
                    device):
    """Left-pad the prompts and append the masks.

    Returns (x [N, P+L] long, attention_mask [N, P+L] bool or None when nothing is padded,
    prompt_mask [N, P+L] bool: True on real prompt tokens).
    """
    if not isinstance(prompts, (list, tuple)):
        raise ValueError(f"prompts: got a {type(prompts).__name__}; expected a list of token-id lists")
    if not prompts:
        raise ValueError("prompts: got an empty list; expected at least one prompt")
    rows = []
    for i, prompt in enumerate(prompts):
        try:
            row = torch.as_tensor(prompt) if len(prompt) else torch.zeros(0, dtype=torch.long)
        except (TypeError, ValueError, RuntimeError):
            row = None
        if row is None or row.dim() != 1 or row.is_floating_point() or row.is_complex() or row.dtype == torch.bool:
            raise ValueError(f"prompts[{i}]: expected a flat list of integer token ids, got {prompt!r:.80}")
        bad = ((row < 0) | (row >= vocab)).nonzero()
        if len(bad):
            j = int(bad[0])
            raise ValueError(f"prompts[{i}][{j}]: token id {int(row[j])} is outside the vocabulary [0, {vocab})")
        hits = (row == mask_id).nonzero()
        if len(hits):
            raise ValueError(
                f"prompts[{i}][{int(hits[0])}]: the prompt contains mask_id={mask_id}; "
                "prompts must be fully known (strip [MASK] tokens from them)"
            )
        rows.append(row.to(torch.long))
    n, longest = len(rows), max(len(r) for r in rows)
    if longest + gen_length > max_length:
        raise ValueError(
            f"gen_length: the longest prompt ({longest} tokens) + gen_length={gen_length} exceeds the "
            f"network's max_sequence_length={max_length}; shorten the prompt or the response"
        )
    x = torch.full((n, longest + gen_length), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros(n, longest + gen_length, dtype=torch.bool)
    for i, row in enumerate(rows):
        x[i, longest - len(row) : longest] = row
        prompt_mask[i, longest - len(row) : longest] = True
    x[:, longest:] = mask_id
    attention_mask = None
    if any(len(r) != longest for r in rows):
        attention_mask = prompt_mask.clone()
        attention_mask[:, longest:] = True
        attention_mask = attention_mask.to(device)
    return x.to(device), attention_mask, prompt_mask.to(device)


def generate_text(
    network,
    prompts: list[list[int]],
    *,
    gen_length: int,
    steps: int,
    block_length: int,
    temperature: float = 0.0,
    remasking: Remasking = "low_confidence",
    cfg_scale: float = 0.0,
    cache: Cache = "none",
    threshold: float | None = None,
    mask_id: int,
    seed: int = 0,
    pad_id: int | None = None,
) -> TextSample:
    """Sample a response of `gen_length` tokens for every prompt; see the module docstring.

    network: a `MaskedDiffusionLM` (uses `.config`, `.hidden_states`, `.lm_head`).
    prompts: N lists of token ids, any lengths (no `mask_id` inside).
    pad_id: id written in the left padding (hidden by the attention mask); None writes 0.
    Returns TextSample(sequences [N, P+L], reveal_step [N, L]: 0-based global step at which each response
    token was revealed, forwards: forward passes run).
    """
    check_schedule(gen_length=gen_length, steps=steps, block_length=block_length, temperature=temperature,
                   remasking=remasking, cfg_scale=cfg_scale, cache=cache, threshold=threshold)
    vocab = network.config.num_embeddings
    for name, value in (("mask_id", mask_id), ("pad_id", 0 if pad_id is None else pad_id)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab:
            raise ValueError(f"{name}: got {value!r}; expected a token id in [0, {vocab})")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed: got {seed!r}; expected an integer")
    device = next(network.parameters()).device
    with torch.inference_mode():
        x, attention_mask, prompt_mask = _prompt_tensors(
            prompts, gen_length=gen_length, mask_id=mask_id, pad_id=0 if pad_id is None else pad_id,
            vocab=vocab, max_length=network.config.max_sequence_length, device=device,
        )
        sequences, reveal_step, forwards = _denoise(
            network, x, attention_mask, prompt_mask,
            gen_length=gen_length, steps_per_block=steps // (gen_length // block_length),
            block_length=block_length, temperature=float(temperature), remasking=remasking,
            cfg_scale=float(cfg_scale), mask_id=mask_id, seed=seed, cache=cache,
            threshold=None if threshold is None else float(threshold),
        )
    # Clones made outside inference mode are ordinary tensors, usable later as inputs of a graph.
    return TextSample(sequences.clone(), reveal_step.clone(), forwards)


def generate_text_with(network, prompts: list[list[int]], cfg: TextSamplerConfig, *, mask_id: int,
                       pad_id: int | None = None, seed: int = 0) -> TextSample:
    """`generate_text` with the knobs taken from a `TextSamplerConfig`."""
    return generate_text(
        network, prompts, gen_length=cfg.gen_length, steps=cfg.steps, block_length=cfg.block_length,
        temperature=cfg.temperature, remasking=cfg.remasking, cfg_scale=cfg.cfg_scale, cache=cfg.cache,
        threshold=cfg.threshold, mask_id=mask_id, seed=seed, pad_id=pad_id,
    )


def response_ids(network, prompts: list[list[int]], sampler: Mapping[str, Any], *, mask_id: int,
                 pad_id: int | None, seed: int) -> tuple[list[list[int]], int]:
    """The `gen_length`-token response window of each prompt as host lists [N][L], and the forward passes:
    one sampler call of held-out evaluation (`sampler`: generate_text's knobs), whether it runs in the
    evaluating process (jobs/evaluate.py) or on a rollout worker (`RolloutWorker.decode`)."""
    sequences, _, forwards = generate_text(network, prompts, **sampler, mask_id=mask_id, pad_id=pad_id,
                                           seed=seed)  # [N, P+L]
    return sequences[:, -sampler["gen_length"]:].tolist(), forwards


class _Forwards:
    """The network calls of one sampling run, counted. `none`: every call is a full forward. `prefix` /
    `dual`: the first call of a block is a full forward that refills the KV cache; later calls run
    positions [start, T) (prefix) or the block [start, start+Lb) (dual) against the cache."""

    def __init__(self, network, inputs, attention_mask, cache: str, block_length: int):
        self.network, self.inputs, self.attention_mask = network, inputs, attention_mask
        self.mode, self.block_length = cache, block_length
        self.kv_cache = None if cache == "none" else KVCache()
        self.count, self.start, self.fresh = 0, 0, True

    def new_block(self, start: int) -> None:
        self.start, self.fresh = start, True

    def hidden(self) -> tuple[torch.Tensor, int]:
        """(hidden states [C*N, Tq, d], the absolute position of their first column)."""
        self.count += 1
        if self.kv_cache is None:
            return self.network.hidden_states(self.inputs, self.attention_mask), 0
        if self.fresh:
            self.fresh = False
            return self.network.hidden_states(self.inputs, self.attention_mask, kv_cache=self.kv_cache), 0
        end = self.inputs.shape[1] if self.mode == "prefix" else self.start + self.block_length
        span = self.inputs[:, self.start : end]  # [C*N, Tq]
        return self.network.hidden_states(span, self.attention_mask, kv_cache=self.kv_cache, start=self.start), \
            self.start


def _denoise(network, x, attention_mask, prompt_mask, *, gen_length, steps_per_block, block_length,
             temperature, remasking, cfg_scale, mask_id, seed, cache, threshold):
    """The block/step loop on prepared tensors; returns (sequences [N, T], reveal_step [N, L], forwards)."""
    n, total = x.shape
    prompt_end = total - gen_length
    device = x.device
    reveal_step = torch.full((n, gen_length), -1, dtype=torch.long, device=device)  # [N, L]
    copies = 2 if cfg_scale > 0 else 1
    if copies == 2:
        # Rows N..2N: the unconditional input, prompt tokens masked (padding stays padding).
        unconditional = x.masked_fill(prompt_mask, mask_id)
        inputs = torch.cat([x, unconditional])  # [2N, T]
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask, attention_mask])  # [2N, T]
    else:
        inputs = x
    needs_rng = temperature > 0 or remasking == "random"
    generators = []
    if needs_rng:
        generators = [torch.Generator(device=device).manual_seed(row_seed(seed, r)) for r in range(n)]
    schedule = reveal_schedule(block_length, steps_per_block)
    forwards = _Forwards(network, inputs, attention_mask, cache, block_length)
    forward_index = 0  # global index of the next forward pass (threshold decoding's reveal_step)

    for block in range(gen_length // block_length):
        start = prompt_end + block * block_length
        block_inputs = inputs[:, start : start + block_length].unflatten(0, (copies, n))  # [C, N, Lb] view
        block_reveal = reveal_step[:, block * block_length : (block + 1) * block_length]  # [N, Lb] view
        forwards.new_block(start)
        if threshold is not None:
            forward_index = _threshold_block(network, forwards, block_inputs, block_reveal, start, forward_index,
                                             threshold=threshold, temperature=temperature, cfg_scale=cfg_scale,
                                             mask_id=mask_id, generators=generators)
            continue
        # Masked positions of the block, ascending; every row has the same count.
        candidates = torch.arange(block_length, device=device).expand(n, block_length)  # [N, m]
        for step_in_block, count in enumerate(schedule):
            if count == 0:
                continue
            if remasking == "random":
                confidence = torch.empty(candidates.shape, device=device)  # [N, m] fp32
                for r, generator in enumerate(generators):
                    confidence[r].uniform_(generator=generator)
                chosen = confidence.topk(count, dim=-1).indices  # [N, k]
                positions = candidates.gather(1, chosen)  # [N, k]
                logits = _guided_logits(network, *forwards.hidden(), start + positions, copies, cfg_scale)
                tokens = _propose(logits, temperature, mask_id, generators)  # [N, k]
            else:
                logits = _guided_logits(network, *forwards.hidden(), start + candidates, copies, cfg_scale)
                probs = torch.softmax(logits, dim=-1, dtype=torch.float32)  # [N, m, V], before excluding [MASK]
                proposal = _propose(logits, temperature, mask_id, generators)  # [N, m]
                confidence = probs.gather(2, proposal.unsqueeze(2)).squeeze(2)  # [N, m]
                chosen = confidence.topk(count, dim=-1).indices  # [N, k]
                positions = candidates.gather(1, chosen)  # [N, k]
                tokens = proposal.gather(1, chosen)  # [N, k]
            block_inputs.scatter_(2, positions.expand(copies, -1, -1), tokens.expand(copies, -1, -1))
            block_reveal.scatter_(1, positions, block * steps_per_block + step_in_block)
            # Drop the revealed ones, keep the order: push them past the end, sort, cut (no host sync).
            candidates = candidates.scatter(1, chosen, block_length).sort(dim=1).values[:, : candidates.shape[1] - count]
    return inputs[:n], reveal_step, forwards.count


def _threshold_block(network, forwards, block_inputs, block_reveal, start, forward_index, *, threshold,
                     temperature, cfg_scale, mask_id, generators) -> int:
    """Decode one block by confidence threshold: each step reveals, per row, every masked position whose
    confidence exceeds `threshold`, and at least the most confident one. Returns the next forward index."""
    copies, n, block_length = block_inputs.shape
    device = block_inputs.device
    masked = torch.ones(n, block_length, dtype=torch.bool, device=device)  # [N, Lb] still masked
    positions = start + torch.arange(block_length, device=device).expand(n, block_length)  # [N, Lb] absolute
    while True:
        active = masked.any(dim=1)  # [N] rows with masks left in this block
        if not bool(active.any()):
            return forward_index
        logits = _guided_logits(network, *forwards.hidden(), positions, copies, cfg_scale)  # [N, Lb, V]
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)  # before excluding [MASK]
        proposal = _propose(logits, temperature, mask_id, generators, rows=active.nonzero().flatten().tolist())
        confidence = probs.gather(2, proposal.unsqueeze(2)).squeeze(2).masked_fill(~masked, -math.inf)  # [N, Lb]
        reveal = masked & (confidence > threshold)  # [N, Lb]
        reveal.scatter_(1, confidence.argmax(dim=1, keepdim=True), active.unsqueeze(1))  # the best one, always
        block_inputs.copy_(torch.where(reveal, proposal, block_inputs))  # [C, N, Lb], both copies
        block_reveal.masked_fill_(reveal, forward_index)
        masked &= ~reveal
        forward_index += 1


def _guided_logits(network, hidden, offset, positions, copies, cfg_scale):
    """Logits [N, k, V] at `positions` [N, k] (absolute), CFG-combined when copies == 2; `hidden`
    [C*N, Tq, d] holds positions offset..offset+Tq-1."""
    index = positions - offset if offset else positions  # [N, k] columns of hidden
    index = index.repeat(copies, 1) if copies == 2 else index  # [C*N, k]
    picked = hidden.gather(1, index.unsqueeze(2).expand(-1, -1, hidden.shape[2]))  # [C*N, k, d]
    logits = network.lm_head(picked)  # [C*N, k, V]
    if copies == 1:
        return logits
    conditional, unconditional = logits.chunk(2)  # [N, k, V] each
    return conditional.sub_(unconditional).mul_(cfg_scale + 1).add_(unconditional)


def _propose(logits, temperature, mask_id, generators, rows=None):
    """x̂ [N, k] from logits [N, k, V] (modified in place): Gumbel-max at `temperature`, never [MASK].
    rows: the rows that draw noise (default all); the others' proposals are meaningless."""
    logits[..., mask_id] = -math.inf
    if temperature == 0:
        return logits.argmax(-1)
    # LLaDA's add_gumbel_noise ranks exp(logits) / (-log U)^τ; its log, logits - τ·log(-log U), ranks the
    # same and costs two logs instead of exp, log and pow. Float64 throughout; U ~ Uniform[0, 1) per row.
    noise = torch.empty(logits.shape, dtype=torch.float64, device=logits.device)  # [N, k, V]
    if rows is not None:
        noise.fill_(0.5)  # rows that draw nothing get a finite placeholder
    for r in range(len(generators)) if rows is None else rows:
        noise[r].uniform_(generator=generators[r])
    noise.log_().neg_().log_()  # log(-log U) = -Gumbel
    # (Convert first: torch.sub(float32, float64) takes a slow mixed-dtype path, ~10x slower on CPU.)
    return logits.to(torch.float64).sub_(noise, alpha=temperature).argmax(-1)
