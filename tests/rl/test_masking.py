"""rl.masking: schedules (paper's worked example), clamping, exact counts, seeds, sharing, tail, protection."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rl.batch import RolloutBatch
from rl.config import AlgoConfig, MaskingConfig
from rl.estimators import build_views
from rl.masking import (
    choose_masked,
    mask_count,
    masked_input,
    ratio_schedule,
    stable_seed,
    structured_mask,
    timestep_schedule,
    timestep_to_ratio,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_stratified_reproduces_the_papers_worked_example():
    # t1 = 100, μ = 5, T = 1000: t_n = ((100 − 1 + (n−1)·200) mod 1000) + 1 = 100, 300, 500, 700, 900
    assert timestep_schedule("stratified", 5, 1000, gen(), t1=100) == [100, 300, 500, 700, 900]
    assert ratio_schedule("stratified", 5, 1000, gen(), t1=100) == pytest.approx([0.1, 0.3, 0.5, 0.7, 0.9])


def test_stratified_draws_t1_from_the_generator_and_wraps_around():
    # the first draw of randint(1, T+1) with this generator is the t1 the schedule starts from
    expected_t1 = int(torch.randint(1, 1001, (1,), generator=gen(7)))
    steps = timestep_schedule("stratified", 4, 1000, gen(7))
    assert steps[0] == expected_t1
    # consecutive timesteps are T/μ = 250 apart modulo T, all in 1..T
    assert all((b - a) % 1000 == 250 for a, b in zip(steps, steps[1:]))
    assert all(1 <= t <= 1000 for t in steps)
    # wrap: t1 = 900, μ = 4 -> 900, 1150 -> 150, 400, 650
    assert timestep_schedule("stratified", 4, 1000, gen(), t1=900) == [900, 150, 400, 650]
    # μ not dividing T: offsets floor(n·1000/3) = 0, 333, 666
    assert timestep_schedule("stratified", 3, 1000, gen(), t1=1) == [1, 334, 667]


def test_ramp_follows_algorithm_1_and_ends_fully_masked():
    # t1 = 400, μ = 4: t_n = 400 + floor((n−1)·600/3) = 400, 600, 800, 1000
    assert timestep_schedule("ramp", 4, 1000, gen(), t1=400) == [400, 600, 800, 1000]
    for seed in range(20):
        ratios = ratio_schedule("ramp", 5, 1000, gen(seed))
        assert ratios[-1] == 1.0 and ratios == sorted(ratios)
    r = float(torch.rand((), generator=gen(3), dtype=torch.float64))
    assert timestep_schedule("ramp", 3, 1000, gen(3))[0] == math.floor(r * 1000)
    assert timestep_schedule("ramp", 1, 1000, gen(), t1=10) == [10]


def test_random_draws_every_timestep_independently():
    expected = torch.randint(1, 1001, (6,), generator=gen(5)).tolist()
    assert timestep_schedule("random", 6, 1000, gen(5)) == expected


@given(kind=st.sampled_from(["stratified", "ramp", "random"]), mu=st.integers(1, 9), seed=st.integers(0, 10**6),
       p_min=st.floats(0.01, 0.5), width=st.floats(0.0, 0.5), curve=st.sampled_from(["linear", "cosine"]))
@settings(max_examples=60, deadline=None)
def test_every_ratio_lies_in_the_clamp_range(kind, mu, seed, p_min, width, curve):
    p_max = min(1.0, p_min + width)
    ratios = ratio_schedule(kind, mu, 1000, gen(seed), p_min=p_min, p_max=p_max, curve=curve)
    assert len(ratios) == mu and all(p_min <= p <= p_max for p in ratios)


def test_ratio_curves_and_clamping():
    assert timestep_to_ratio(250, 1000, "linear") == 0.25
    # cosine: cos(π/2 · (1 − 0.5)) = cos(π/4) = 0.7071...
    assert timestep_to_ratio(500, 1000, "cosine") == pytest.approx(math.sqrt(0.5))
    assert timestep_to_ratio(1000, 1000, "cosine") == pytest.approx(1.0)
    # ramp from t1 = 0 gives p = 0, clamped up to p_min; p_max caps the top
    assert ratio_schedule("ramp", 2, 1000, gen(), t1=0, p_min=0.05, p_max=0.9) == [0.05, 0.9]


def test_exact_counts_round_half_up_with_at_least_one():
    # round(0.25 · 10) = round(2.5) -> 3 (half up, where Python's round would give 2)
    assert mask_count(0.25, 10) == 3
    assert mask_count(0.01, 10) == 1  # never zero when something is scored
    assert mask_count(1.0, 7) == 7 and mask_count(0.5, 0) == 0
    for L in (1, 5, 13):
        for p in (0.05, 0.3, 0.77, 1.0):
            assert int(choose_masked(L, p, "exact", gen(L)).sum()) == mask_count(p, L)


def test_bernoulli_count_uses_independent_draws():
    draws = torch.rand(50, generator=gen(1), dtype=torch.float64)
    assert torch.equal(choose_masked(50, 0.3, "bernoulli", gen(1)), draws < 0.3)


def test_stable_seed_is_a_pure_function_of_its_parts():
    assert stable_seed("unigrpo", 1, 2, "uid", 3, 4) == stable_seed("unigrpo", 1, 2, "uid", 3, 4)
    assert stable_seed("unigrpo", 1, 2, "uid", 3, 4) != stable_seed("unigrpo", 1, 2, "uid", 3, 5)
    # fixed value: blake2b, not Python's salted hash(), so it is the same in every process
    assert stable_seed("x") == stable_seed("x") and 0 <= stable_seed("x") < 2**63


def test_masks_are_exact_and_do_not_depend_on_batch_composition(kit):
    batch = kit.text_batch({"a": 3, "b": 3}, eos_at={1: 2, 4: 5})
    cfg = MaskingConfig()
    for n in (1, 2, 3, 4):
        masked, ratio = structured_mask(batch, cfg, 4, iteration=n, step=7, run_seed=11)
        scored = batch.scored_mask.sum(1)
        assert not (masked & ~batch.scored_mask).any()
        assert masked.sum(1).tolist() == [mask_count(float(p), int(L)) for p, L in zip(ratio, scored)]
        # the same rows in another batch (other order, other company) get the same masks
        sub = batch.select([4, 1])
        sub_masked, _ = structured_mask(sub, cfg, 4, iteration=n, step=7, run_seed=11)
        assert torch.equal(sub_masked, masked[[4, 1]])
    other_step, _ = structured_mask(batch, cfg, 4, iteration=1, step=8, run_seed=11)
    assert not torch.equal(other_step, structured_mask(batch, cfg, 4, iteration=1, step=7, run_seed=11)[0])


def test_schedule_is_shared_within_a_group_unless_configured_otherwise(kit):
    batch = kit.text_batch({"a": 4, "b": 4})
    shared = [structured_mask(batch, MaskingConfig(), 4, iteration=n, step=0, run_seed=0)[1] for n in (1, 2, 3, 4)]
    for ratio in shared:
        assert len(set(ratio[:4].tolist())) == 1 and len(set(ratio[4:].tolist())) == 1
    assert any(r[0] != r[4] for r in shared)  # independent across prompts
    own = MaskingConfig(share_across_group=False, p_min=0.001)  # p_min = 1/T: nothing gets clamped
    ratios = torch.stack([structured_mask(batch, own, 4, iteration=n, step=0, run_seed=0)[1] for n in (1, 2, 3, 4)])
    assert len(set(ratios[0, :4].tolist())) > 1
    # stratified per row: each row's 4 ratios are still 0.25 apart modulo 1
    gaps = torch.remainder(ratios[1:] - ratios[:-1], 1.0)
    assert torch.allclose(gaps, torch.full_like(gaps, 0.25))


def test_image_rows_use_the_image_ratio_curve(kit):
    batch = kit.mixed_batch()
    linear = structured_mask(batch, MaskingConfig(), 4, iteration=1, step=0, run_seed=0)[1]
    cosine = structured_mask(batch, MaskingConfig(image_ratio="cosine"), 4, iteration=1, step=0, run_seed=0)[1]
    assert torch.equal(linear[:4], cosine[:4])  # text and mmu rows: unchanged
    expected = math.cos(math.pi / 2 * (1 - float(linear[4])))
    assert float(cosine[4]) == pytest.approx(max(expected, 0.05))


def test_tail_is_masked_or_kept_clean(kit):
    batch = kit.text_batch({"a": 2}, eos_at={0: 3})  # row 0: EOS at response index 3, padding after
    nothing = torch.zeros_like(batch.scored_mask)
    tail = batch.response_mask() & ~batch.scored_mask
    assert tail[0].sum() == 4 and not tail[1].any()
    masked = masked_input(batch, nothing, mask_token_id=kit.MASK, tail="mask")
    assert (masked[tail] == kit.MASK).all() and torch.equal(masked[~tail], batch.input_ids[~tail])
    clean = masked_input(batch, nothing, mask_token_id=kit.MASK, tail="clean")
    assert torch.equal(clean, batch.input_ids)


def test_masking_errors_name_the_problem(kit):
    batch = kit.text_batch({"a": 2})
    with pytest.raises(ValueError, match=r"masking schedule: got 'cosine'; expected one of \['ramp', 'random', "
                                         r"'stratified'\] or a plugin"):
        timestep_schedule("cosine", 4, 1000, gen())
    with pytest.raises(ValueError, match="need mu >= 1 and T >= 1"):
        timestep_schedule("ramp", 0, 1000, gen())
    with pytest.raises(ValueError, match="t1 fixes the first timestep"):
        timestep_schedule("random", 2, 1000, gen(), t1=3)
    with pytest.raises(ValueError, match="t1 = 0: a stratified start must lie in \\[1, 1000\\]"):
        timestep_schedule("stratified", 2, 1000, gen(), t1=0)
    with pytest.raises(ValueError, match="t1 = 1001: a ramp start must lie in \\[0, 1000\\]"):
        timestep_schedule("ramp", 2, 1000, gen(), t1=1001)
    with pytest.raises(ValueError, match="ratio curve 'sigmoid' is unknown"):
        timestep_to_ratio(1, 10, "sigmoid")
    with pytest.raises(ValueError, match="need 0 < p_min <= p_max <= 1"):
        ratio_schedule("random", 2, 10, gen(), p_min=0.0)
    with pytest.raises(ValueError, match="mask count mode 'poisson' is unknown"):
        choose_masked(3, 0.5, "poisson", gen())
    with pytest.raises(ValueError, match="iteration 5 is outside 1..mu=4"):
        structured_mask(batch, MaskingConfig(), 4, iteration=5, step=0, run_seed=0)
    with pytest.raises(ValueError, match="tail 'drop' is unknown"):
        masked_input(batch, batch.scored_mask, mask_token_id=kit.MASK, tail="drop")
    with pytest.raises(ValueError, match="masked has shape \\(2, 3\\)"):
        masked_input(batch, torch.zeros(2, 3, dtype=torch.bool), mask_token_id=kit.MASK, tail="mask")
    with pytest.raises(ValueError, match="row 1, column 0: a protected or padding position was chosen"):
        masked_input(batch, ~batch.attention_mask, mask_token_id=kit.MASK, tail="mask")


# ---- property: prompt, image and special positions are never masked ---------------------------------

@st.composite
def random_batches(draw):
    """Rows of every task kind with random prompts full of specials/image codes and random EOS."""
    from types import SimpleNamespace

    k = SimpleNamespace(EOS=1, EOT=2, SOI=3, EOI=4, MMU=5, IMAGE=(32, 47), TEXT=(6, 32), SPECIAL=(1, 2, 3, 4, 5))
    parts = []
    for g in range(draw(st.integers(1, 3))):
        task = draw(st.sampled_from(["text", "mmu", "t2i"]))
        size = draw(st.integers(1, 3))
        P, L = draw(st.integers(1, 8)), draw(st.integers(1, 8))
        token = st.one_of(st.integers(k.TEXT[0], k.TEXT[1] - 1), st.sampled_from(k.SPECIAL),
                          st.integers(k.IMAGE[0], k.IMAGE[1] - 1))
        rows = []
        for _ in range(size):
            prompt = draw(st.lists(token, min_size=P, max_size=P))
            if task == "t2i":
                response = draw(st.lists(st.integers(k.IMAGE[0], k.IMAGE[1] - 1), min_size=L, max_size=L))
                rows.append(prompt + response + [k.EOI])
            else:
                response = draw(st.lists(st.one_of(st.integers(*k.TEXT), st.sampled_from([k.EOS, k.EOT])),
                                         min_size=L, max_size=L))
                rows.append(prompt + response)
        lengths = [draw(st.integers(0, P)) for _ in range(size)]
        parts.append(RolloutBatch.from_sampler(
            torch.tensor(rows), torch.zeros(size, L, dtype=torch.long), lengths,
            eos_ids=() if task == "t2i" else (k.EOS, k.EOT), kind=task, uid=[f"g{g}"] * size,
            sample_index=list(range(size)), policy_version=0, prompt_width=P,
            score_vocab=k.IMAGE if task == "t2i" else None, protected_ids=k.SPECIAL, protected_id_range=k.IMAGE))
    return RolloutBatch.concat(parts)


@given(batch=random_batches(), estimator=st.sampled_from(["unigrpo", "diffu_grpo", "random_masking", "coupled"]),
       tail=st.sampled_from(["mask", "clean"]), schedule=st.sampled_from(["stratified", "ramp", "random"]),
       count=st.sampled_from(["exact", "bernoulli"]), step=st.integers(0, 5))
@settings(max_examples=60, deadline=None)
def test_prompt_image_and_special_positions_are_never_masked(batch, estimator, tail, schedule, count, step):
    MASK = 47
    cfg = AlgoConfig(estimator=estimator, mu=3, masking=MaskingConfig(schedule=schedule, tail=tail, count=count),
                     random_masking=dataclasses.replace(AlgoConfig().random_masking, copies=2))
    response, scored = batch.response_mask(), batch.scored_mask
    for n in (1, 2, 3):
        views = build_views(batch, cfg, iteration=n, step=step, run_seed=1, mask_token_id=MASK)
        changed = views.input_ids != batch.input_ids  # [K, B, T]
        # never: protected prompt positions, padding, the suffix after the response
        assert not (changed & batch.protected_mask).any()
        assert not (changed & ~batch.attention_mask).any()
        assert not (changed & ~response & ~batch.prompt_mask()).any()
        if estimator != "diffu_grpo":
            assert not (changed & batch.prompt_mask()).any()  # the prompt stays clean
        allowed_in_response = scored | ((response & ~scored) if tail == "mask" else torch.zeros_like(scored))
        assert not (changed & response & ~allowed_in_response).any()
        assert not (views.loss_mask & ~scored).any()  # only scored tokens are ever scored
        assert (views.input_ids[views.loss_mask] == MASK).all()  # and each scored one was masked
        if estimator == "unigrpo":
            masked, ratio = structured_mask(batch, cfg.masking, 3, iteration=n, step=step, run_seed=1)
            assert torch.equal(views.loss_mask[0], masked)
            if count == "exact":  # exactly max(1, round(p·L)) of the L scored tokens
                expected = [mask_count(float(p), int(L)) for p, L in zip(ratio, scored.sum(1))]
                assert masked.sum(1).tolist() == expected
