"""rl/sft.py: LLaDA's SFT objective. The loss against values worked out by hand on hand-written logits and against
a plain loop over the full-sequence logits, the masking, and the micro-batched update against the whole batch."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from rl.sft import mask_responses, mask_seed, sft_loss, sft_objective, sft_update
from rl.update import PlainEngine


def test_objective_by_hand_on_two_rows():
    """B_global = 4 (two more rows on another rank), V = 3, T = 4.

    row 0: response at positions 2, 3 (L = 2), both masked, p = 0.5
      (0, 2): logits [0, 0, 0], target 1        -> CE = ln 3
      (0, 3): logits [ln 2, 0, 0], target 0     -> softmax 2/4 -> CE = ln 2
    row 1: response at positions 1, 2, 3 (L = 3), position 2 masked, p = 0.25
      (1, 2): logits [0, ln 3, 0], target 2     -> softmax 1/5 -> CE = ln 5
    loss = [(ln 3 + ln 2) / (0.5 * 2) + ln 5 / (0.25 * 3)] / 4
    """
    input_ids = torch.tensor([[7, 7, 1, 0], [7, 0, 2, 1]])  # [2, 4]
    response_mask = torch.tensor([[False, False, True, True], [False, True, True, True]])  # [2, 4]
    masked = torch.tensor([[False, False, True, True], [False, False, True, False]])  # [2, 4]
    logits = torch.tensor([[0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0], [0.0, math.log(3), 0.0]])  # [3, V=3]
    mask_ratio = torch.tensor([0.5, 0.25])  # [2]
    loss = sft_objective(logits, input_ids, masked, mask_ratio, response_mask, num_sequences_global=4)
    expected = ((math.log(3) + math.log(2)) / (0.5 * 2) + math.log(5) / (0.25 * 3)) / 4
    assert loss.shape == () and float(loss) == pytest.approx(expected, rel=1e-6)
    # A row with nothing masked adds no term but still counts in the global normaliser.
    loss_one_row = sft_objective(logits[:2], input_ids[:1], masked[:1], mask_ratio[:1], response_mask[:1], 4)
    assert float(loss_one_row) == pytest.approx((math.log(3) + math.log(2)) / (0.5 * 2) / 4, rel=1e-6)


def test_mask_responses_never_touches_the_prompt(kit):
    ids = torch.arange(6, 6 + 4 * 40).reshape(4, 40) % kit.MASK  # [4, 40], no [MASK] id among them
    response = torch.zeros(4, 40, dtype=torch.bool)
    response[:, 8:] = True
    noisy, masked, ratio = mask_responses(ids, response, mask_id=kit.MASK, eps=0.2,
                                          generator=torch.Generator().manual_seed(0))
    assert not masked[:, :8].any() and torch.equal(noisy[:, :8], ids[:, :8])
    assert torch.equal(noisy == kit.MASK, masked) and torch.equal(noisy[~masked], ids[~masked])
    assert ((ratio >= 0.2) & (ratio <= 1.0)).all()
    again = mask_responses(ids, response, mask_id=kit.MASK, eps=0.2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[1], masked)  # a seed fixes the masks
    # Bernoulli(p_i) per position: with 32 response positions the masked fraction is near p_i (not exact).
    big = torch.ones(2000, 32, dtype=torch.bool)
    _, big_masked, big_ratio = mask_responses(torch.zeros(2000, 32, dtype=torch.long), big, mask_id=kit.MASK,
                                              eps=1e-3, generator=torch.Generator().manual_seed(1))
    residual = big_masked.float().mean(1) - big_ratio  # [2000], each with std <= sqrt(0.25/32) ~ 0.09
    assert abs(float(residual.mean())) < 0.01


def test_mask_seed_is_a_pure_function_of_run_seed_and_step():
    assert mask_seed(0, 5) == 5 and mask_seed(2, 3) == 2 * 1_000_003 + 3
    assert mask_seed(2**62, 1) == (2**62 * 1_000_003 + 1) % 2**63  # fits torch.Generator.manual_seed


def three_rows(kit):
    """3 rows, prompts of 3 / 1 / 2 tokens left-padded to 3, responses of 4: ids [3, 7] and the masks."""
    P = kit.PAD
    ids = torch.tensor([[10, 11, 12, 13, 14, 15, P], [P, P, 20, 21, 22, P, P], [P, 30, 31, 32, 33, 34, 35]])
    attention = ids != P
    attention[:, 3:] = True  # EOS/pad in the response is a target, not padding
    response = torch.zeros_like(attention)
    response[:, 3:] = True  # [3, 7]
    masked = torch.zeros_like(response)
    masked[0, [3, 5]] = True
    masked[1, [4, 5, 6]] = True  # EOS padding positions are targets too
    masked[2, 6] = True
    return ids, attention, response, masked


def test_loss_matches_the_published_formula_by_loop(kit):
    """loss = (1/B) sum_i (1/L_i) sum_{masked j} -log p(x_ij | noisy_i) / p_i, on the full-sequence logits."""
    network = kit.tiny_net().eval()  # float64
    ids, attention, response, masked = three_rows(kit)
    ratio = torch.tensor([0.5, 0.9, 0.25])
    noisy = ids.masked_fill(masked, kit.MASK)
    loss = sft_loss(network, ids, noisy, masked, ratio, response, attention, num_sequences_global=3)

    with torch.no_grad():
        logits = network(noisy, attention)  # [3, 7, V], every position
    expected = 0.0
    for i in range(3):
        response_length = int(response[i].sum())  # L_i = 4 for every row here
        for j in range(ids.shape[1]):
            if masked[i, j]:
                nll = -torch.log_softmax(logits[i, j], -1)[ids[i, j]]
                expected += float(nll) / float(ratio[i]) / response_length
    expected /= 3
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    # Split over "ranks": the shard losses with the global normaliser sum to the whole loss.
    parts = [sft_loss(network, ids[r], noisy[r], masked[r], ratio[r], response[r], attention[r], 3)
             for r in (slice(0, 1), slice(1, 3))]
    assert float(sum(parts).detach()) == pytest.approx(float(loss.detach()), rel=1e-5)


def test_update_in_micro_batches_equals_one_whole_batch_step(kit):
    """Gradient accumulation over micro-batches of 1 row takes the same optimizer step as the whole batch at once."""
    ids, attention, response, masked = three_rows(kit)
    batch = {"input_ids": ids, "noisy_ids": ids.masked_fill(masked, kit.MASK), "masked": masked,
             "mask_ratio": torch.tensor([0.5, 0.9, 0.25]), "response_mask": response, "attention_mask": attention}
    after = {}
    for micro in (1, 3):
        network = kit.tiny_net(seed=1)
        engine = PlainEngine(network, torch.optim.SGD(network.parameters(), lr=0.1), grad_clip=None)
        stats = sft_update(engine, **batch, num_sequences_global=3, micro_batch_size=micro, device=torch.device("cpu"))
        after[micro] = (stats, network.state_dict())
    whole = sft_loss(kit.tiny_net(seed=1), **{k: batch[k] for k in ("input_ids", "noisy_ids", "masked", "mask_ratio",
                                                                    "response_mask", "attention_mask")},
                     num_sequences_global=3)
    for micro in (1, 3):  # the objective runs in float32 (sft_loss casts the logits), hence 1e-6
        assert after[micro][0] == {"loss": pytest.approx(float(whole.detach()), rel=1e-6), "masked_tokens": 6.0}
    for name, value in after[3][1].items():
        torch.testing.assert_close(after[1][1][name], value, rtol=1e-6, atol=1e-9)
    assert any(not torch.equal(a, b) for a, b in zip(after[3][1].values(), kit.tiny_net(seed=1).state_dict().values()))


def test_a_few_updates_lower_the_loss_on_a_fixed_batch(kit):
    ids, attention, response, masked = three_rows(kit)
    batch = {"input_ids": ids, "noisy_ids": ids.masked_fill(masked, kit.MASK), "masked": masked,
             "mask_ratio": torch.tensor([0.5, 0.9, 0.25]), "response_mask": response, "attention_mask": attention}
    network = copy.deepcopy(kit.tiny_net(seed=2))
    engine = PlainEngine(network, torch.optim.AdamW(network.parameters(), lr=1e-2), grad_clip=1.0)
    losses = [sft_update(engine, **batch, num_sequences_global=3, micro_batch_size=2,
                         device=torch.device("cpu"))["loss"] for _ in range(6)]
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.7 * losses[0], losses
