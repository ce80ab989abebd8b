"""rl.estimators: the registry, and each estimator masks as its row of algorithm.md §6 says."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rl.config import AlgoConfig, DiffuGRPOConfig, MaskingConfig, RandomMaskingConfig
from rl.estimators import ESTIMATORS, build_views, get_estimator, register_estimator
from rl.masking import mask_count, structured_mask


def views_of(batch, mask_id, iteration=1, **cfg):
    return build_views(batch, AlgoConfig(**cfg), iteration=iteration, step=3, run_seed=5, mask_token_id=mask_id)


def test_registry_lists_valid_names_and_refuses_duplicates():
    assert sorted(ESTIMATORS) == ["coupled", "diffu_grpo", "random_masking", "unigrpo"]
    with pytest.raises(ValueError, match=r"estimator: got 'ppo'; expected one of \['coupled', 'diffu_grpo', "
                                         r"'random_masking', 'unigrpo'\] or a plugin 'pkg.mod:fn' / 'path/to/file.py:fn'"):
        get_estimator("ppo")
    with pytest.raises(ValueError, match="estimator 'unigrpo' is already registered"):
        register_estimator("unigrpo")(lambda *a, **k: None)


def test_a_registered_estimator_is_found_by_name(kit):
    @register_estimator("test_everything_masked")
    def everything(batch, cfg, *, iteration, step, run_seed, mask_token_id):
        return get_estimator("diffu_grpo")(batch, dataclasses.replace(cfg, diffu_grpo=DiffuGRPOConfig(0.0)),
                                           iteration=iteration, step=step, run_seed=run_seed,
                                           mask_token_id=mask_token_id)

    try:
        batch = kit.text_batch({"a": 2})
        views = get_estimator("test_everything_masked")(batch, AlgoConfig(), iteration=1, step=0, run_seed=0,
                                                        mask_token_id=kit.MASK)
        assert torch.equal(views.loss_mask[0], batch.scored_mask)
        assert torch.equal(views.input_ids[0][batch.prompt_mask()], batch.input_ids[batch.prompt_mask()])
    finally:
        del ESTIMATORS["test_everything_masked"]


def test_build_views_checks_the_iteration(kit):
    with pytest.raises(ValueError, match="iteration 0 is outside 1..mu=4"):
        views_of(kit.text_batch({"a": 1}), kit.MASK, iteration=0)


def test_unigrpo_masks_response_at_the_schedule_ratio_prompt_clean(kit):
    batch = kit.mixed_batch()
    for n in (1, 2, 3, 4):
        views = views_of(batch, kit.MASK, iteration=n)
        masked, ratio = structured_mask(batch, MaskingConfig(), 4, iteration=n, step=3, run_seed=5)
        assert views.num_copies == 1 and torch.equal(views.loss_mask[0], masked)
        assert torch.equal(views.input_ids[0][batch.prompt_mask()], batch.input_ids[batch.prompt_mask()])
        scored = batch.scored_mask.sum(1)
        assert masked.sum(1).tolist() == [mask_count(float(p), int(L)) for p, L in zip(ratio, scored)]
        assert torch.allclose(views.mask_ratio, masked.sum(1).double() / scored)


def test_diffu_grpo_masks_whole_response_and_15_percent_of_the_prompt(kit):
    batch = kit.text_batch({f"u{i}": 2 for i in range(40)}, prompt_width=30, gen_length=6)
    prompt = batch.prompt_mask() & ~batch.protected_mask
    first = views_of(batch, kit.MASK, estimator="diffu_grpo")
    ids, loss = first.input_ids[0], first.loss_mask[0]
    assert torch.equal(loss, batch.scored_mask) and (ids[batch.response_mask()] == kit.MASK).all()
    assert torch.equal(first.mask_ratio, torch.ones(batch.num_rows, dtype=torch.float64))
    rate = float((ids[prompt] == kit.MASK).float().mean())  # ~2200 prompt tokens: 0.15 ± 0.03
    assert 0.12 < rate < 0.18
    second = views_of(batch, kit.MASK, iteration=2, estimator="diffu_grpo")
    assert not torch.equal(second.input_ids, first.input_ids)  # new prompt mask every iteration
    none = views_of(batch, kit.MASK, estimator="diffu_grpo", diffu_grpo=DiffuGRPOConfig(prompt_mask_prob=0.0))
    assert torch.equal(none.input_ids[0][batch.prompt_mask()], batch.input_ids[batch.prompt_mask()])


def test_diffu_grpo_keeps_protected_prompt_positions(kit):
    batch = kit.mixed_batch()
    views = views_of(batch, kit.MASK, estimator="diffu_grpo", diffu_grpo=DiffuGRPOConfig(prompt_mask_prob=0.99))
    ids = views.input_ids[0]
    assert torch.equal(ids[batch.protected_mask], batch.input_ids[batch.protected_mask])
    maskable = batch.prompt_mask() & ~batch.protected_mask
    assert (ids[maskable] == kit.MASK).float().mean() > 0.8


def test_random_masking_draws_a_bernoulli_rate_per_copy_in_its_range(kit):
    batch = kit.text_batch({f"u{i}": 1 for i in range(30)}, prompt_width=2, gen_length=300)
    cfg = {"estimator": "random_masking", "random_masking": RandomMaskingConfig(t_min=0.1, t_max=0.9, copies=3)}
    views = views_of(batch, kit.MASK, **cfg)
    assert views.num_copies == 3
    assert torch.equal(views.loss_mask, views.input_ids == kit.MASK)  # scored = masked, prompt clean
    rates = views.loss_mask.sum(2) / batch.scored_mask.sum(1)  # [3, 30]: Bernoulli(t) over 300 tokens
    assert rates.min() > 0.03 and rates.max() < 0.97  # t in [0.1, 0.9], ± sampling noise (~0.03)
    assert rates.min() < 0.3 and rates.max() > 0.7  # t really varies across rows and copies
    assert not torch.equal(views.loss_mask[0], views.loss_mask[1])
    assert torch.allclose(views.mask_ratio, rates.mean(0).double())


def test_coupled_scores_every_token_exactly_once_per_pair(kit):
    batch = kit.mixed_batch()
    for n in (1, 2):
        views = views_of(batch, kit.MASK, iteration=n, estimator="coupled")
        first, second = views.loss_mask
        assert views.num_copies == 2 and not (first & second).any()
        assert torch.equal(first | second, batch.scored_mask)
        masked, _ = structured_mask(batch, MaskingConfig(), 4, iteration=n, step=3, run_seed=5, purpose="coupled")
        assert torch.equal(first, masked)  # the first mask follows the structured schedule
        # the complement's input keeps the first mask's tokens clean, and vice versa
        assert torch.equal(views.input_ids[1][first], batch.input_ids[first])
        assert (views.input_ids[0][first] == kit.MASK).all() and (views.input_ids[1][second] == kit.MASK).all()


@pytest.mark.parametrize("name", ["unigrpo", "diffu_grpo", "random_masking", "coupled"])
def test_every_estimator_is_a_pure_function_of_its_seeds(kit, name):
    batch = kit.mixed_batch()
    a, b = views_of(batch, kit.MASK, estimator=name), views_of(batch, kit.MASK, estimator=name)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.loss_mask, b.loss_mask)
    c = build_views(batch, AlgoConfig(estimator=name), iteration=1, step=4, run_seed=5, mask_token_id=kit.MASK)
    assert not torch.equal(a.input_ids, c.input_ids)  # another step, other masks
