"""Estimator registry: how each method masks a rollout batch before scoring it (docs/algorithm.md §6).

An estimator maps (batch, config, inner iteration n) to `MaskedViews`: K masked copies of every row
(the model inputs) and, per copy, the positions whose log-prob enters the loss. The loss treats the K
copies of a row as one long row, so a sequence's score is the mean over all (copy, position) pairs:

| name             | K       | model input                                              | loss positions            |
|------------------|---------|----------------------------------------------------------|---------------------------|
| `unigrpo`        | 1       | scored response masked at ratio p_n (masking.py), prompt clean | the masked ones     |
| `diffu_grpo`     | 1       | whole response masked, prompt Bernoulli(0.15), new seed each n | all scored tokens   |
| `random_masking` | m       | response Bernoulli(t), t ~ U[t_min, t_max] per copy      | the masked ones           |
| `coupled`        | 2       | a mask at ratio p_n (unigrpo's schedule) and its complement | each scored token once |

Deviations, on purpose: `diffu_grpo` never masks protected prompt positions (special tokens, image codes;
d1 masks its chat-template tokens too) so multimodal layouts stay readable; `coupled` draws its first
mask with the structured schedule (so its ratios cover all denoising stages like UniGRPO's) where
DiffuCoder draws a uniform ratio. Every estimator is a pure function of the seeds (masking.py).

`algo.estimator` may also name a plugin with this signature, `pkg.mod:fn` or `path/to/file.py:fn`
(rl/config.py `lookup`); it may call the registered ones through `get_estimator`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rl.batch import RolloutBatch
from rl.config import AlgoConfig, adder, lookup
from rl.masking import generator_for, masked_input, structured_mask


@dataclass(frozen=True)
class MaskedViews:
    input_ids: torch.Tensor  # [K, B, T] long: model input of each masked copy
    loss_mask: torch.Tensor  # [K, B, T] bool: positions whose log-prob enters the loss (⊆ scored_mask)
    mask_ratio: torch.Tensor  # [B] float64: fraction of the row's scored tokens masked in the input, mean over K

    @property
    def num_copies(self) -> int:
        return int(self.input_ids.shape[0])


EstimatorFn = Callable[..., MaskedViews]
ESTIMATORS: dict[str, EstimatorFn] = {}


def register_estimator(name: str) -> Callable[[EstimatorFn], EstimatorFn]:
    """Decorator: `@register_estimator("name")` adds a function with the estimator signature."""
    return adder(ESTIMATORS, name, "estimator")


def get_estimator(name: str) -> EstimatorFn:
    """The estimator registered as `name`, or the plugin `name` names (imported and registered on first use:
    a learner rank resolves `algo.estimator` itself); an unknown name raises listing the valid ones."""
    return lookup(ESTIMATORS, name, "estimator")


def build_views(batch: RolloutBatch, cfg: AlgoConfig, *, iteration: int, step: int, run_seed: int,
                mask_token_id: int) -> MaskedViews:
    """Run the configured estimator for inner iteration `iteration` (1..μ)."""
    if not 1 <= iteration <= cfg.mu:
        raise ValueError(f"iteration {iteration} is outside 1..mu={cfg.mu}")
    fn = get_estimator(cfg.estimator)
    return fn(batch, cfg, iteration=iteration, step=step, run_seed=run_seed, mask_token_id=mask_token_id)


def _views(batch: RolloutBatch, masks: list[torch.Tensor], loss_masks: list[torch.Tensor], *,
           mask_token_id: int, tail: str) -> MaskedViews:
    """Stack K (masked [B, T], loss positions [B, T]) pairs into MaskedViews."""
    inputs = [masked_input(batch, m, mask_token_id=mask_token_id, tail=tail) for m in masks]  # K × [B, T]
    scored = batch.scored_mask.sum(dim=1).to(torch.float64)  # [B]
    masked_scored = torch.stack([(m & batch.scored_mask).sum(dim=1) for m in masks]).to(torch.float64)  # [K, B]
    ratio = (masked_scored / scored.clamp(min=1)).mean(dim=0)  # [B], 0 for rows with nothing scored
    loss_mask = torch.stack(loss_masks)  # [K, B, T]
    return MaskedViews(torch.stack(inputs), loss_mask, ratio)


@register_estimator("unigrpo")
def unigrpo_views(batch: RolloutBatch, cfg: AlgoConfig, *, iteration: int, step: int, run_seed: int,
                  mask_token_id: int) -> MaskedViews:
    masked, _ = structured_mask(batch, cfg.masking, cfg.mu, iteration=iteration, step=step, run_seed=run_seed)
    return _views(batch, [masked], [masked], mask_token_id=mask_token_id, tail=cfg.masking.tail)


@register_estimator("diffu_grpo")
def diffu_grpo_views(batch: RolloutBatch, cfg: AlgoConfig, *, iteration: int, step: int, run_seed: int,
                     mask_token_id: int) -> MaskedViews:
    maskable_prompt = batch.prompt_mask() & ~batch.protected_mask  # [B, T]
    prompt_masked = torch.zeros_like(maskable_prompt)  # [B, T]
    for row in range(batch.num_rows):
        generator = generator_for("diffu_grpo", run_seed, step, iteration, batch.uid[row], batch.sample_index[row])
        draws = torch.rand(batch.seq_len, generator=generator, dtype=torch.float64)  # [T]
        prompt_masked[row] = maskable_prompt[row] & (draws < cfg.diffu_grpo.prompt_mask_prob)
    masked = batch.scored_mask | prompt_masked  # [B, T]
    return _views(batch, [masked], [batch.scored_mask.clone()], mask_token_id=mask_token_id,
                  tail=cfg.masking.tail)


@register_estimator("random_masking")
def random_masking_views(batch: RolloutBatch, cfg: AlgoConfig, *, iteration: int, step: int, run_seed: int,
                         mask_token_id: int) -> MaskedViews:
    settings = cfg.random_masking
    copies = []
    for copy in range(settings.copies):
        masked = torch.zeros_like(batch.scored_mask)  # [B, T]
        for row in range(batch.num_rows):
            generator = generator_for("random_masking", run_seed, step, iteration, copy,
                                      batch.uid[row], batch.sample_index[row])
            t = settings.t_min + (settings.t_max - settings.t_min) * float(
                torch.rand((), generator=generator, dtype=torch.float64))
            columns = batch.scored_mask[row].nonzero().flatten()  # [L]
            chosen = torch.rand(int(columns.numel()), generator=generator, dtype=torch.float64) < t  # [L]
            masked[row, columns[chosen]] = True
        copies.append(masked)
    return _views(batch, copies, copies, mask_token_id=mask_token_id, tail=cfg.masking.tail)


@register_estimator("coupled")
def coupled_views(batch: RolloutBatch, cfg: AlgoConfig, *, iteration: int, step: int, run_seed: int,
                  mask_token_id: int) -> MaskedViews:
    masked, _ = structured_mask(batch, cfg.masking, cfg.mu, iteration=iteration, step=step, run_seed=run_seed,
                                purpose="coupled")
    complement = batch.scored_mask & ~masked  # [B, T]
    return _views(batch, [masked, complement], [masked, complement], mask_token_id=mask_token_id,
                  tail=cfg.masking.tail)
