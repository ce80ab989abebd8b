"""Fast decoding in the text sampler: the block KV cache (prefix, dual) and confidence-threshold decoding.

What is checked, and against what:
- `cache="none"` is the sampler as it was before the cache existed: SHA-256 digests of (sequences,
  reveal_step) recorded from that sampler on the test network of test_sampling.py;
- with one step per block every block's only forward is the full one, so prefix and dual equal exact;
- a network whose positions only see earlier positions (a causal test double) makes the cached prefix
  exact, so the prefix cache equals exact at every step count;
- the cache holds what a fresh full forward computes at each block boundary, and the span forwards run
  the positions the docstring names (counted by hand);
- threshold decoding on a hand-built network whose confidences are fixed per position reveals exactly
  the positions above the threshold, or the single best, step by step (worked out by hand below).
"""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F

from model.network import Block, KVCache
from model.sampling import TextSamplerConfig, generate_text, generate_text_with

from .test_sampling import MASK, PAD, PROMPTS, make_network


@pytest.fixture(scope="module")
def network():
    return make_network()


def digest(sample) -> str:
    return hashlib.sha256(sample.sequences.numpy().tobytes() + sample.reveal_step.numpy().tobytes()).hexdigest()[:16]


# Recorded with the sampler before cache/threshold existed (same network, PROMPTS, MASK, PAD).
TODAY = [
    (dict(gen_length=16, steps=8, block_length=8, temperature=0.0, remasking="low_confidence", cfg_scale=0.0,
          seed=0), "8f42614e0d3c7ba4"),
    (dict(gen_length=16, steps=16, block_length=4, temperature=0.9, remasking="low_confidence", cfg_scale=0.0,
          seed=3), "6e7f2c98acfabfb0"),
    (dict(gen_length=12, steps=6, block_length=6, temperature=0.7, remasking="random", cfg_scale=0.0, seed=1),
     "60a7e96420ce2199"),
    (dict(gen_length=16, steps=8, block_length=8, temperature=0.5, remasking="low_confidence", cfg_scale=1.5,
          seed=2), "4cd509168a0f81be"),
    (dict(gen_length=8, steps=24, block_length=4, temperature=1.0, remasking="low_confidence", cfg_scale=0.0,
          seed=5), "937f7c7309e05d34"),
    (dict(gen_length=16, steps=4, block_length=16, temperature=0.0, remasking="random", cfg_scale=0.5, seed=4),
     "26d7f9dfa0942449"),
]


@pytest.mark.parametrize("knobs, expected", TODAY)
def test_cache_none_is_todays_sampler_bit_for_bit(network, knobs, expected):
    sample = generate_text(network, PROMPTS, mask_id=MASK, pad_id=PAD, cache="none", **knobs)
    assert digest(sample) == expected
    per_block = knobs["steps"] // (knobs["gen_length"] // knobs["block_length"])
    assert sample.forwards == knobs["gen_length"] // knobs["block_length"] * min(per_block, knobs["block_length"])


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("temperature, remasking, cfg_scale", [
    (0.0, "low_confidence", 0.0), (0.8, "low_confidence", 0.0), (0.6, "low_confidence", 1.5), (0.9, "random", 0.0),
    (0.0, "random", 0.5)])
def test_one_step_per_block_cached_equals_exact(network, cache, temperature, remasking, cfg_scale):
    knobs = dict(gen_length=16, steps=4, block_length=4, temperature=temperature, remasking=remasking,
                 cfg_scale=cfg_scale, mask_id=MASK, pad_id=PAD, seed=7)
    exact = generate_text(network, PROMPTS, **knobs)  # left-padded: PROMPTS have 4 lengths
    cached = generate_text(network, PROMPTS, cache=cache, **knobs)
    assert torch.equal(cached.sequences, exact.sequences) and torch.equal(cached.reveal_step, exact.reveal_step)
    assert cached.forwards == exact.forwards == 4


class Recorder:
    """The network, with every call recorded as (input width, start); after each full forward that fills a
    cache, a fresh full forward of the same input is compared with what the cache holds."""

    def __init__(self, network):
        self.network, self.config, self.calls, self.refreshes_checked = network, network.config, [], 0

    def parameters(self):
        return self.network.parameters()

    def lm_head(self, hidden):
        return self.network.lm_head(hidden)

    def hidden_states(self, input_ids, attention_mask=None, *, kv_cache=None, start=0):
        self.calls.append((input_ids.shape[1], start, kv_cache is not None))
        if kv_cache is None:
            return self.network.hidden_states(input_ids, attention_mask)
        out = self.network.hidden_states(input_ids, attention_mask, kv_cache=kv_cache, start=start)
        if start == 0:
            fresh = KVCache()
            self.network.hidden_states(input_ids.clone(), attention_mask, kv_cache=fresh)
            assert len(fresh.layers) == len(kv_cache.layers) == self.config.n_layers
            for (keys, values), (fresh_keys, fresh_values) in zip(kv_cache.layers, fresh.layers):
                assert torch.equal(keys, fresh_keys) and torch.equal(values, fresh_values)
            self.refreshes_checked += 1
        return out


@pytest.mark.parametrize("cfg_scale", [0.0, 1.0])
def test_cache_refreshes_at_block_boundaries_and_steps_run_the_named_span(network, cfg_scale):
    prompt_width, gen_length, block_length, steps = 9, 12, 4, 9  # 3 blocks of 3 steps: reveals [2, 1, 1]
    total = prompt_width + gen_length
    for cache in ("prefix", "dual"):
        recorder = Recorder(network)
        sample = generate_text(recorder, PROMPTS, gen_length=gen_length, steps=steps, block_length=block_length,
                               temperature=0.7, cfg_scale=cfg_scale, cache=cache, mask_id=MASK, pad_id=PAD, seed=2)
        expected = []
        for block in range(3):
            start = prompt_width + block * block_length
            span = total - start if cache == "prefix" else block_length
            expected += [(total, 0, True), (span, start, True), (span, start, True)]
        assert recorder.calls == expected
        assert recorder.refreshes_checked == 3 and sample.forwards == 9
        assert not (sample.sequences[:, -gen_length:] == MASK).any()


class CausalBlock(Block):
    """Test double: a position attends to itself and earlier real positions only (queries are the last
    positions of the keys, as in a full forward and a prefix-cache span)."""

    def attend(self, q, k, v, key_mask):
        queries, keys = q.shape[2], k.shape[2]
        causal = torch.ones(queries, keys, dtype=torch.bool).tril(diagonal=keys - queries)  # [Tq, Tk]
        itself = torch.zeros(queries, keys, dtype=torch.bool).diagonal_scatter(
            torch.ones(queries, dtype=torch.bool), keys - queries)  # padding attends to itself: no empty row
        allowed = causal if key_mask is None else (key_mask & causal) | itself  # [B, 1, Tq, Tk]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


@pytest.fixture(scope="module")
def causal_network():
    net = make_network().double()
    for block in net.transformer.blocks:
        block.__class__ = CausalBlock
    return net


@pytest.mark.parametrize("steps", [4, 8, 12, 16])
@pytest.mark.parametrize("temperature, cfg_scale", [(0.0, 0.0), (0.9, 0.0), (0.5, 1.5)])
def test_prefix_cache_is_exact_when_the_prefix_cannot_see_the_response(causal_network, steps, temperature,
                                                                        cfg_scale):
    knobs = dict(gen_length=16, steps=steps, block_length=4, temperature=temperature, cfg_scale=cfg_scale,
                 mask_id=MASK, pad_id=PAD, seed=1)
    exact = generate_text(causal_network, PROMPTS, **knobs)
    prefix = generate_text(causal_network, PROMPTS, cache="prefix", **knobs)
    assert torch.equal(prefix.sequences, exact.sequences) and torch.equal(prefix.reveal_step, exact.reveal_step)
    assert len(exact.sequences[:, -16:].unique()) > 5, "degenerate double: output barely varies"


def test_dual_cache_differs_from_exact_on_a_bidirectional_network(network):
    # The approximation is real: cached entries after the block are stale once the block is revealed.
    knobs = dict(gen_length=16, steps=16, block_length=8, mask_id=MASK, pad_id=PAD)
    exact, dual = generate_text(network, PROMPTS, **knobs), generate_text(network, PROMPTS, cache="dual", **knobs)
    assert not torch.equal(exact.sequences, dual.sequences)
    assert not (dual.sequences[:, -16:] == MASK).any() and (dual.reveal_step >= 0).all()


# ---- confidence threshold ---------------------------------------------------------------------------------

class KnownConfidences:
    """Hand-built network: at response index j the proposal is token j % 5 with probability CONFIDENCE[j]
    (the rest spread evenly over the other 15 ids), whatever the input. Works with and without a cache."""

    VOCAB, MASK_ID = 16, 15

    def __init__(self, prompt_width: int, confidences: list[float]):
        total = prompt_width + len(confidences)
        self.config = type("Config", (), {"num_embeddings": self.VOCAB, "max_sequence_length": total})()
        self.table = torch.zeros(total, self.VOCAB)  # [T, V] log-probabilities per absolute position
        for j, p in enumerate(confidences):
            row = torch.full((self.VOCAB,), (1 - p) / (self.VOCAB - 1))
            row[j % 5] = p
            self.table[prompt_width + j] = row.log()
        self.weight = torch.zeros(1)

    def parameters(self):
        return iter([self.weight])

    def hidden_states(self, input_ids, attention_mask=None, *, kv_cache=None, start=0):
        positions = torch.arange(start, start + input_ids.shape[1])  # [Tq]
        return F.one_hot(positions, len(self.table)).double().expand(input_ids.shape[0], -1, -1)  # [B, Tq, T]

    def lm_head(self, hidden):
        return hidden.float() @ self.table  # [..., V]


# Block 0 (j 0-3) at threshold 0.5: forward 0 reveals j0 (0.9) and j2 (0.6); none of 0.3, 0.2 is above, so
# forward 1 reveals the best, j1; forward 2 reveals j3. Block 1 (j 4-7): forward 3 reveals j7 (0.95); then the
# best of what is left, one a step: j5 (0.2), j6 (0.15), j4 (0.1).
CONFIDENCES = [0.9, 0.3, 0.6, 0.2, 0.1, 0.2, 0.15, 0.95]
REVEAL_AT_HALF = [0, 1, 0, 2, 6, 4, 5, 3]


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_threshold_reveals_the_positions_above_it_or_the_single_best(cache):
    net = KnownConfidences(prompt_width=2, confidences=CONFIDENCES)
    sample = generate_text(net, [[1, 2]], gen_length=8, steps=2, block_length=4, threshold=0.5, cache=cache,
                           mask_id=net.MASK_ID)
    assert sample.reveal_step[0].tolist() == REVEAL_AT_HALF
    assert sample.sequences[0].tolist() == [1, 2] + [j % 5 for j in range(8)]
    assert sample.forwards == 7


@pytest.mark.parametrize("threshold, reveal, forwards", [
    (0.05, [0, 0, 0, 0, 1, 1, 1, 1], 2),  # every confidence is above: one step a block
    (1.0, [0, 2, 1, 3, 7, 5, 6, 4], 8),  # nothing exceeds 1: one token a step, most confident first
])
def test_threshold_extremes(threshold, reveal, forwards):
    net = KnownConfidences(prompt_width=2, confidences=CONFIDENCES)
    sample = generate_text(net, [[1, 2]], gen_length=8, steps=8, block_length=4, threshold=threshold,
                           mask_id=net.MASK_ID)
    assert sample.reveal_step[0].tolist() == reveal and sample.forwards == forwards


@pytest.mark.parametrize("cache", ["none", "dual"])
@pytest.mark.parametrize("temperature, threshold, cfg_scale", [(0.0, 0.3, 0.0), (0.9, 0.2, 0.0), (0.7, 0.5, 1.0)])
def test_threshold_reveals_every_position_once_block_by_block(network, cache, temperature, threshold, cfg_scale):
    gen_length, block_length = 24, 8
    sample = generate_text(network, PROMPTS, gen_length=gen_length, steps=6, block_length=block_length,
                           temperature=temperature, threshold=threshold, cfg_scale=cfg_scale, cache=cache,
                           mask_id=MASK, pad_id=PAD, seed=3)
    assert not (sample.sequences[:, -gen_length:] == MASK).any()
    steps = sample.reveal_step
    assert (steps >= 0).all() and int(steps.max()) == sample.forwards - 1
    blocks = steps.view(len(PROMPTS), -1, block_length)  # [N, blocks, Lb]
    assert (blocks.amax(2)[:, :-1] < blocks.amin(2)[:, 1:]).all(), "not block by block"
    used = set(steps.flatten().tolist())
    assert used == set(range(sample.forwards)), "a forward pass that revealed nothing in any row"


def test_threshold_row_randomness_does_not_depend_on_the_other_rows(network):
    # Beside two different row-0 prompts (of one length), blocks 1 and 2 start at different forward passes:
    # row 1 sits out the steps row 0 still needs. A row draws only while its block has masks, so row 1
    # comes out the same beside either. (Drawing for every row at every step fails this.)
    knobs = dict(gen_length=24, steps=3, block_length=8, temperature=1.0, threshold=0.3, cache="dual",
                 mask_id=MASK, pad_id=PAD, seed=5)
    first = generate_text(network, [[1, 2, 3, 4, 5, 6, 7], [8, 9]], **knobs)
    second = generate_text(network, [[23, 24, 25, 26, 27, 28, 29], [8, 9]], **knobs)
    assert torch.equal(first.sequences[1], second.sequences[1])

    def block_starts(sample):  # the forward pass at which blocks 1 and 2 start
        return [int(sample.reveal_step[:, 8 * b : 8 * b + 8].min()) for b in (1, 2)]

    assert block_starts(first) != block_starts(second), "row 1 waited alike: the test shows nothing"


def test_generate_text_with_passes_cache_and_threshold(network):
    cfg = TextSamplerConfig(gen_length=16, steps=8, block_length=8, temperature=0.5, cache="dual", threshold=0.4)
    got = generate_text_with(network, PROMPTS, cfg, mask_id=MASK, pad_id=PAD, seed=4)
    want = generate_text(network, PROMPTS, gen_length=16, steps=8, block_length=8, temperature=0.5, cache="dual",
                         threshold=0.4, mask_id=MASK, pad_id=PAD, seed=4)
    assert digest(got) == digest(want) and got.forwards == want.forwards


@pytest.mark.parametrize("change, message", [
    (dict(cache="full"), r"^cache: got 'full'; expected one of \['none', 'prefix', 'dual'\]"),
    (dict(cache=None), r"^cache: got None"),
    (dict(threshold=0.0), r"^threshold: got 0.0; expected a confidence in \(0, 1\]"),
    (dict(threshold=-0.5), r"^threshold: got -0.5"),
    (dict(threshold=1.5), r"^threshold: got 1.5"),
    (dict(threshold=float("nan")), r"^threshold: got nan"),
    (dict(threshold=True), r"^threshold: got True"),
    (dict(threshold="0.9"), r"^threshold: got '0.9'"),
    (dict(threshold=0.9, remasking="random"), r"^threshold: 0.9 needs remasking='low_confidence'"),
])
def test_bad_cache_and_threshold_name_the_knob(network, change, message):
    knobs = dict(gen_length=16, steps=8, block_length=8, **change)
    with pytest.raises(ValueError, match=message):
        generate_text(network, PROMPTS, mask_id=MASK, **knobs)
    with pytest.raises(ValueError, match=message):
        TextSamplerConfig(**knobs)
