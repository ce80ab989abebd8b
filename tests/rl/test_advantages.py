"""rl.advantages: group z-scores by hand and against a plain loop; None handling; the group filter."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rl.advantages import batch_advantages, group_advantages, groups_to_keep
from rl.config import AdvantageConfig


def test_hand_computed_groups():
    rewards = [1.0, 0.0, 2.0, 1.0, None, 0.0, 0.5, 0.5, None, None, 3.0, 0.0]
    groups = ["a", "a", "b", "a", "b", "b", "c", "c", "d", "d", "e", "a"]
    adv = group_advantages(rewards, groups, eps=0.0).tolist()
    # a = [1, 0, 1, 0] (rows 0, 1, 3, 11): mean 0.5, population std 0.5 -> +1, -1, +1, -1
    assert [adv[i] for i in (0, 1, 3, 11)] == [1.0, -1.0, 1.0, -1.0]
    # b = [2, None, 0]: stats over [2, 0]: mean 1, std 1 -> +1, None -> 0, -1
    assert [adv[i] for i in (2, 4, 5)] == [1.0, 0.0, -1.0]
    # c equal, d all None, e a single sample: no spread -> 0
    assert [adv[i] for i in (6, 7, 8, 9, 10)] == [0.0] * 5
    centred = group_advantages(rewards, groups, scale="none").tolist()
    assert [centred[i] for i in (0, 1, 2, 4, 5)] == [0.5, -0.5, 1.0, 0.0, -1.0]


def test_population_std_and_eps():
    # [1, 2, 3]: mean 2, population std sqrt(2/3) = 0.81650; (1 − 2) / (0.81650 + 0.1) = −1.09109
    adv = group_advantages([1.0, 2.0, 3.0], ["g"] * 3, eps=0.1)
    assert adv.dtype == torch.float32
    assert adv.tolist() == pytest.approx([-1 / (math.sqrt(2 / 3) + 0.1), 0.0, 1 / (math.sqrt(2 / 3) + 0.1)])


def test_equal_rewards_give_exact_zeros_despite_rounding():
    # mean(0.1, 0.1, 0.1) = 0.10000000000000002 in floating point; the advantages must still be exactly 0
    assert group_advantages([0.1, 0.1, 0.1], ["g"] * 3).tolist() == [0.0, 0.0, 0.0]
    assert group_advantages([0.1, 0.1, 0.1], ["g"] * 3, scale="none").tolist() == [0.0, 0.0, 0.0]


@given(data=st.lists(st.tuples(st.one_of(st.none(), st.floats(-5, 5)), st.sampled_from("abcd")), max_size=30),
       scale=st.sampled_from(["std", "none"]))
@settings(max_examples=80, deadline=None)
def test_matches_a_plain_loop(data, scale):
    rewards, groups = [r for r, _ in data], [g for _, g in data]
    expected = []
    for r, g in zip(rewards, groups):
        values = [x for x, h in zip(rewards, groups) if h == g and x is not None]
        if r is None or max(values) == min(values):
            expected.append(0.0)
            continue
        mean = statistics.fmean(values)
        expected.append((r - mean) / (statistics.pstdev(values) + 1e-6) if scale == "std" else r - mean)
    got = group_advantages(rewards, groups, scale=scale)
    assert got.shape == (len(rewards),)
    assert got.tolist() == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_group_filter_on_mean_correctness():
    correctness = [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, None, None, 1.0, None]
    groups = ["a", "a", "b", "b", "c", "c", "d", "d", "e", "e"]
    assert groups_to_keep(correctness, groups) == ["a", "b", "c", "d", "e"]
    # DAPO-style: drop all-correct (mean 1 > 0.99) and all-wrong (mean 0 < 0.01); e's mean is 1 over its one value
    assert groups_to_keep(correctness, groups, drop_above=0.99, drop_below=0.01) == ["c", "d"]
    assert groups_to_keep(correctness, groups, drop_below=0.5) == ["a", "c", "d", "e"]  # 0.5 is not below 0.5


def test_batch_advantages_filters_then_scores(kit):
    # totals as the service weights them, correctness 2.0 and format 0.5: 2.5, 2.0 | 2.5, 0.5 | None, 0.5
    batch = kit.scored(kit.text_batch({"a": 2, "b": 2, "c": 2}),
                       {"correctness": [1.0, 1.0, 1.0, 0.0, None, 0.0], "format": [1.0, 0.0, 1.0, 1.0, 1.0, 1.0]},
                       total=[2.5, 2.0, 2.5, 0.5, None, 0.5])
    cfg = AdvantageConfig(drop_groups_above=0.99, eps=0.0)
    kept, adv, stats = batch_advantages(batch, cfg)
    assert kept.uid == ["b", "b", "c", "c"]  # group a (all correct) dropped
    # b: totals 2.5, 0.5 -> mean 1.5, std 1 -> +1, -1; c: None, 0.5 -> 0 (None), 0 (single scorable)
    assert adv.tolist() == [1.0, -1.0, 0.0, 0.0]
    assert stats == {"groups_total": 3.0, "groups_dropped": 1.0, "rows_unscorable": 1.0, "rows_zero_advantage": 2.0}
    # centred totals: a 2.5, 2.0 -> ±0.25; b 2.5, 0.5 -> ±1; c: one scorable -> 0
    _, adv_all, _ = batch_advantages(batch, AdvantageConfig(scale="none"))
    assert adv_all.tolist() == [0.25, -0.25, 1.0, -1.0, 0.0, 0.0]
    with pytest.raises(KeyError, match="advantage.correctness_term 'accuracy' is not a reward term"):
        batch_advantages(batch, AdvantageConfig(drop_groups_below=0.1, correctness_term="accuracy"))


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="advantage scale 'rank' is unknown; valid scales: std, none"):
        group_advantages([1.0], ["a"], scale="rank")
    with pytest.raises(ValueError, match="rewards has 2 entries but group_ids has 1"):
        group_advantages([1.0, 2.0], ["a"])
    with pytest.raises(ValueError, match="eps -1 is negative"):
        group_advantages([1.0], ["a"], eps=-1)
    with pytest.raises(ValueError, match="rewards\\[1\\] = inf \\(group 'b'\\): need a finite number or None"):
        group_advantages([1.0, math.inf], ["a", "b"])
    with pytest.raises(ValueError, match="rewards\\[0\\] = True"):
        group_advantages([True], ["a"])
    with pytest.raises(ValueError, match="correctness has 1 entries but group_ids has 2"):
        groups_to_keep([1.0], ["a", "b"])


# ------------------------------------------------ huge finite rewards (issue 18, finding 9)
def test_huge_finite_rewards_give_the_z_scores_of_any_other_scale():
    # [1e200, -1e200]: mean 0, population std 1e200 -> exactly +1, -1 (an unscaled std squares 1e200 to inf,
    # which silently made both advantages 0)
    assert group_advantages([1e200, -1e200], ["g", "g"]).tolist() == [1.0, -1.0]
    # [1e308, 1e308, -1e308] is [1, 1, -1] × 1e308: mean 1/3, deviations 2/3, 2/3, -4/3, population variance
    # (4/9 + 4/9 + 16/9) / 3 = 8/9, std 2√2/3 -> z = 1/√2, 1/√2, -√2 (an unscaled sum overflows: NaN)
    adv = group_advantages([1e308, 1e308, -1e308], ["u"] * 3, eps=0.0)
    assert adv.tolist() == pytest.approx([1 / math.sqrt(2), 1 / math.sqrt(2), -math.sqrt(2)], rel=1e-6)
    # the largest double both ways, next to an ordinary group: [M, -M, 0] -> mean 0, std M·√(2/3) -> ±√(3/2), 0
    big = torch.finfo(torch.float64).max
    adv = group_advantages([big, -big, 0.0, 1.0, 0.0], ["x", "x", "x", "y", "y"], eps=0.0)
    assert adv.tolist() == pytest.approx([math.sqrt(1.5), -math.sqrt(1.5), 0.0, 1.0, -1.0], rel=1e-6)
    assert torch.isfinite(adv).all()


def test_tiny_rewards_keep_their_z_scores():
    # [3e-300, 1e-300]: mean 2e-300, std 1e-300 -> ±1 with eps = 0 (the squares underflow to 0 unscaled);
    # with the default eps = 1e-6 the spread is negligible and the advantages are ~0, as before
    assert group_advantages([3e-300, 1e-300], ["g", "g"], eps=0.0).tolist() == [1.0, -1.0]
    assert group_advantages([3e-300, 1e-300], ["g", "g"]).tolist() == pytest.approx([0.0, 0.0], abs=1e-290)


def test_scaling_is_exact_for_ordinary_rewards():
    # the group is divided by a power of two, which rounds nothing: the same bits as the plain formula
    rewards = [0.1, 0.7, 0.3, 2.5, -1.25, 1e-3]
    values = torch.tensor(rewards, dtype=torch.float64)
    centred = values - values.mean()
    expected = (centred / (values.std(correction=0) + 1e-6)).to(torch.float32)
    assert torch.equal(group_advantages(rewards, ["g"] * 6), expected)
    assert torch.equal(group_advantages(rewards, ["g"] * 6, scale="none"), centred.to(torch.float32))


def test_centring_beyond_float32_is_an_error_naming_the_group():
    # scale='none' keeps the reward's unit: ±1e200 cannot be a float32 advantage (max ≈ 3.4e38)
    assert group_advantages([1e30, -1e30], ["g", "g"], scale="none").tolist() == pytest.approx([1e30, -1e30])
    with pytest.raises(ValueError, match=r"group 'prompt-7': centred rewards reach 1e\+200, beyond float32 "
                                         r"\(±3\.4e\+38\); .*scale='std'"):
        group_advantages([1.0, 1.0, 1e200, -1e200], ["a", "a", "prompt-7", "prompt-7"], scale="none")
