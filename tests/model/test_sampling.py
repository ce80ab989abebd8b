"""The text sampler against a plain transcription of LLaDA's published `generate` loop.

The reference below is LLaDA's `generate` / `get_num_transfer_tokens` / `add_gumbel_noise`, run one prompt
at a time with no padding, plus the one documented change of model/sampling.py: x̂ never proposes
[MASK]. It also records the step at which each position is revealed.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from model.network import BackboneConfig, MaskedDiffusionLM
from model.sampling import (
    TextSamplerConfig,
    _propose,
    generate_text,
    generate_text_with,
    reveal_schedule,
    row_seed,
)

VOCAB, MASK, PAD = 97, 96, 95
# No empty prompt here: with only masks as input every position has the same logits (attention averages
# identical values), so the first step is a tie that padding's rounding breaks differently.
PROMPTS = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9], [40], [10, 20, 30, 40, 50, 60]]


@pytest.fixture(scope="module")
def network() -> MaskedDiffusionLM:
    return make_network()


def make_network() -> MaskedDiffusionLM:
    """A random network whose greedy outputs are varied (default inits make every masked slot alike).

    Larger q/k weights make attention position-dependent and a larger head sharpens the softmax, so
    confidences differ clearly between positions and greedy decoding produces many distinct tokens.
    """
    config = BackboneConfig(d_model=32, n_heads=4, n_layers=2, mlp_hidden_size=64, vocab_size=VOCAB,
                            max_sequence_length=64, mask_token_id=MASK, eos_token_id=PAD, pad_token_id=PAD,
                            bos_token_id=94)
    net = MaskedDiffusionLM(config).eval()
    generator = torch.Generator().manual_seed(1)
    gains = {"q_proj": 4.0, "k_proj": 4.0, "transformer.ff_out": 3.0}
    with torch.no_grad():
        for name, parameter in sorted(net.named_parameters()):
            if parameter.dim() < 2:
                continue
            if "wte" in name:
                std = 1.0
            else:
                gain = next((g for key, g in gains.items() if key in name), 2.0)
                std = gain / math.sqrt(parameter.shape[1])
            parameter.normal_(0.0, std, generator=generator)
    return net


# ---- reference: LLaDA's generate, transcribed -------------------------------------------------------

def add_gumbel_noise(logits, temperature):
    if temperature == 0:
        return logits
    logits = logits.to(torch.float64)
    noise = torch.rand_like(logits, dtype=torch.float64)
    gumbel_noise = (-torch.log(noise)) ** temperature
    return logits.exp() / gumbel_noise


def get_num_transfer_tokens(mask_index, steps):
    mask_num = mask_index.sum(dim=1, keepdim=True)
    base = mask_num // steps
    remainder = mask_num % steps
    num_transfer_tokens = torch.zeros(mask_num.size(0), steps, dtype=torch.int64) + base
    for i in range(mask_num.size(0)):
        num_transfer_tokens[i, : remainder[i]] += 1
    return num_transfer_tokens


@torch.no_grad()
def reference_generate(model, prompt, steps, gen_length, block_length, temperature=0.0, cfg_scale=0.0,
                       remasking="low_confidence", mask_id=MASK):
    """One prompt [1, P], no padding: LLaDA's loop. Returns (x [1, P+L], reveal_step [1, L])."""
    x = torch.full((1, prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, : prompt.shape[1]] = prompt.clone()
    reveal = torch.full((1, gen_length), -1, dtype=torch.long)
    prompt_index = x != mask_id
    assert gen_length % block_length == 0
    num_blocks = gen_length // block_length
    assert steps % num_blocks == 0
    steps = steps // num_blocks
    for num_block in range(num_blocks):
        block_mask_index = x[:, prompt.shape[1] + num_block * block_length:
                             prompt.shape[1] + (num_block + 1) * block_length] == mask_id
        num_transfer_tokens = get_num_transfer_tokens(block_mask_index, steps)
        for i in range(steps):
            mask_index = x == mask_id
            if cfg_scale > 0.0:
                un_x = x.clone()
                un_x[prompt_index] = mask_id
                x_ = torch.cat([x, un_x], dim=0)
                logits = model(x_)
                logits, un_logits = torch.chunk(logits, 2, dim=0)
                logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
            else:
                logits = model(x)
            proposal_logits = logits.clone()
            proposal_logits[..., mask_id] = -math.inf  # the documented change: never propose [MASK]
            logits_with_noise = add_gumbel_noise(proposal_logits, temperature=temperature)
            x0 = torch.argmax(logits_with_noise, dim=-1)
            if remasking == "low_confidence":
                p = F.softmax(logits, dim=-1)
                x0_p = torch.squeeze(torch.gather(p, dim=-1, index=torch.unsqueeze(x0, -1)), -1)
            else:
                x0_p = torch.rand((x0.shape[0], x0.shape[1]))
            x0_p[:, prompt.shape[1] + (num_block + 1) * block_length:] = -math.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, -math.inf)
            transfer_index = torch.zeros_like(x0, dtype=torch.bool)
            for j in range(confidence.shape[0]):
                _, select_index = torch.topk(confidence[j], k=int(num_transfer_tokens[j, i]))
                transfer_index[j, select_index] = True
            x[transfer_index] = x0[transfer_index]
            reveal[transfer_index[:, prompt.shape[1]:]] = num_block * steps + i
    return x, reveal


def assert_matches_reference(network, prompts, sequences, reveal_step, gen_length, **knobs):
    width = sequences.shape[1]
    for row, prompt in enumerate(prompts):
        expected, expected_reveal = reference_generate(network, torch.tensor([prompt], dtype=torch.long),
                                                       gen_length=gen_length, **knobs)
        start = width - len(prompt) - gen_length
        assert sequences[row, start:].tolist() == expected[0].tolist(), f"row {row}"
        assert (sequences[row, :start] == PAD).all(), f"row {row}: left padding"
        assert reveal_step[row].tolist() == expected_reveal[0].tolist(), f"row {row}"


# ---- equality with the reference ----------------------------------------------------------------------

@pytest.mark.parametrize(
    "gen_length, steps, block_length",
    [
        (24, 9, 8),  # 3 steps per block: reveals [3, 3, 2]
        (16, 4, 16),  # one block, 4 tokens a step
        (8, 12, 4),  # 6 steps per block > block_length: [1, 1, 1, 1, 0, 0]
    ],
)
def test_greedy_batch_equals_unbatched_reference(network, gen_length, steps, block_length):
    sequences, reveal_step, _ = generate_text(network, PROMPTS, gen_length=gen_length, steps=steps,
                                           block_length=block_length, mask_id=MASK, pad_id=PAD)
    assert sequences.shape == (len(PROMPTS), max(map(len, PROMPTS)) + gen_length)
    assert sequences.dtype == reveal_step.dtype == torch.long
    responses = sequences[:, -gen_length:]
    assert len(responses.unique()) > 10, "degenerate test network: greedy output barely varies"
    assert_matches_reference(network, PROMPTS, sequences, reveal_step, gen_length,
                             steps=steps, block_length=block_length)


def test_cfg_equals_reference(network):
    sequences, reveal_step, _ = generate_text(network, PROMPTS, gen_length=16, steps=8, block_length=8,
                                           cfg_scale=1.5, mask_id=MASK, pad_id=PAD)
    plain, _, _ = generate_text(network, PROMPTS, gen_length=16, steps=8, block_length=8, mask_id=MASK, pad_id=PAD)
    assert not torch.equal(sequences, plain), "guidance had no effect"
    assert_matches_reference(network, PROMPTS, sequences, reveal_step, 16, steps=8, block_length=8,
                             cfg_scale=1.5)


def test_equal_length_prompts_use_no_padding(network):
    prompts = [[3, 4, 5, 6], [7, 8, 9, 10]]
    sequences, reveal_step, _ = generate_text(network, prompts, gen_length=16, steps=8, block_length=8,
                                           mask_id=MASK)
    assert_matches_reference(network, prompts, sequences, reveal_step, 16, steps=8, block_length=8)


# ---- schedule and reveal bookkeeping --------------------------------------------------------------------

def test_reveal_schedule_is_llada_even_split():
    assert reveal_schedule(10, 4) == [3, 3, 2, 2]
    assert reveal_schedule(8, 3) == [3, 3, 2]
    assert reveal_schedule(4, 6) == [1, 1, 1, 1, 0, 0]
    for count, steps in [(32, 5), (7, 7), (64, 16)]:
        expected = get_num_transfer_tokens(torch.ones(1, count, dtype=torch.bool), steps)[0].tolist()
        assert reveal_schedule(count, steps) == expected


@pytest.mark.parametrize("temperature, remasking", [(0.0, "low_confidence"), (0.7, "low_confidence"),
                                                    (1.0, "random"), (0.0, "random")])
def test_every_token_revealed_once_block_by_block(network, temperature, remasking):
    gen_length, steps, block_length = 24, 9, 8
    sequences, reveal_step, _ = generate_text(network, PROMPTS, gen_length=gen_length, steps=steps,
                                           block_length=block_length, temperature=temperature,
                                           remasking=remasking, mask_id=MASK, pad_id=PAD, seed=3)
    assert not (sequences[:, -gen_length:] == MASK).any()
    per_block = steps // (gen_length // block_length)
    expected_counts = reveal_schedule(block_length, per_block) * (gen_length // block_length)  # [3,3,2]*3
    for row in range(len(PROMPTS)):
        assert (reveal_step[row] >= 0).all()
        counts = torch.bincount(reveal_step[row], minlength=steps).tolist()
        assert counts == expected_counts, f"row {row}"
        blocks = reveal_step[row].view(-1, block_length)  # [num_blocks, block_length]
        assert (blocks.max(1).values[:-1] < blocks.min(1).values[1:]).all(), f"row {row}: not block by block"


# ---- randomness -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature, remasking", [(0.9, "low_confidence"), (0.0, "random"), (0.9, "random")])
def test_seeded_runs_repeat_and_seeds_differ(network, temperature, remasking):
    def run(seed):
        return generate_text(network, PROMPTS, gen_length=16, steps=8, block_length=8, temperature=temperature,
                             remasking=remasking, mask_id=MASK, pad_id=PAD, seed=seed)

    first, again, other = run(11), run(11), run(12)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not (torch.equal(first[0], other[0]) and torch.equal(first[1], other[1]))


def test_row_randomness_does_not_depend_on_the_other_rows(network):
    knobs = dict(gen_length=16, steps=8, block_length=8, temperature=1.0, remasking="low_confidence",
                 mask_id=MASK, pad_id=PAD, seed=5)
    together, together_steps, _ = generate_text(network, [[1, 2, 3, 4, 5, 6, 7], [8, 9]], **knobs)
    replaced, replaced_steps, _ = generate_text(network, [[30, 31], [8, 9]], **knobs)
    assert torch.equal(together[1, -16:], replaced[1, -16:])
    assert torch.equal(together_steps[1], replaced_steps[1])


def test_row_seeds_are_distinct():
    seeds = {row_seed(seed, row) for seed in range(50) for row in range(50)}
    assert len(seeds) == 2500
    assert all(0 <= s < 2**64 for s in seeds)


def test_gumbel_proposal_samples_softmax_at_temperature():
    # exp(l) / E^τ with E ~ Exp(1) is argmax(l/τ + Gumbel), i.e. x̂ ~ softmax(l/τ); [MASK] (id 3) excluded.
    temperature, draws = 0.5, 20000
    logits = torch.tensor([0.0, 0.3, -0.4, 5.0, 0.1]).expand(1, draws, 5).clone()  # [1, draws, V]
    proposal = _propose(logits, temperature, 3, [torch.Generator().manual_seed(0)])  # [1, draws]
    frequencies = torch.bincount(proposal[0], minlength=5).double() / draws
    expected = torch.softmax(torch.tensor([0.0, 0.3, -0.4, -math.inf, 0.1], dtype=torch.float64) / temperature, 0)
    assert frequencies[3] == 0
    assert torch.allclose(frequencies, expected, atol=0.01), (frequencies, expected)


@pytest.mark.parametrize("temperature", [0.3, 0.9, 1.7])
def test_gumbel_proposal_ranks_like_llada_form_on_the_same_noise(temperature):
    # Same uniforms (same generator state, same shape) through LLaDA's exp(l) / (-log U)^τ.
    logits = torch.randn(2, 6, 40, generator=torch.Generator().manual_seed(7)) * 3  # [N, k, V]
    generators = [torch.Generator().manual_seed(100 + r) for r in range(2)]
    uniforms = torch.stack([torch.rand(6, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(100 + r))
                            for r in range(2)])  # [N, k, V]
    masked = logits.clone()
    masked[..., 0] = -math.inf
    expected = (masked.to(torch.float64).exp() / (-torch.log(uniforms)) ** temperature).argmax(-1)
    assert torch.equal(_propose(logits.clone(), temperature, 0, generators), expected)


def test_greedy_proposal_skips_mask_even_when_it_is_the_argmax():
    logits = torch.tensor([[[0.0, 9.0, 1.0], [2.0, 1.0, 0.0]]])  # [1, 2, 3]
    assert _propose(logits, 0.0, 1, []).tolist() == [[2, 0]]


# ---- outputs, config, dtype ---------------------------------------------------------------------------

def test_empty_prompt_is_all_padding(network):
    sequences, reveal_step, _ = generate_text(network, [[], [1, 2, 3]], gen_length=8, steps=4, block_length=8,
                                           mask_id=MASK, pad_id=PAD)
    assert sequences[0, :3].tolist() == [PAD] * 3 and sequences[1, :3].tolist() == [1, 2, 3]
    assert not (sequences[:, 3:] == MASK).any() and (reveal_step >= 0).all()


def test_outputs_are_ordinary_tensors(network):
    sequences, reveal_step, _ = generate_text(network, [[1, 2]], gen_length=8, steps=4, block_length=8, mask_id=MASK)
    assert not sequences.is_inference() and not reveal_step.is_inference()
    embedded = network.transformer.wte(sequences)  # usable in a graph (the learner re-embeds them)
    embedded.sum().backward()
    network.zero_grad(set_to_none=True)


def test_generate_text_with_config(network):
    cfg = TextSamplerConfig(gen_length=16, steps=8, block_length=8, temperature=0.5, remasking="random",
                            cfg_scale=0.5)
    got = generate_text_with(network, PROMPTS, cfg, mask_id=MASK, pad_id=PAD, seed=4)
    want = generate_text(network, PROMPTS, gen_length=16, steps=8, block_length=8, temperature=0.5,
                         remasking="random", cfg_scale=0.5, mask_id=MASK, pad_id=PAD, seed=4)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert TextSamplerConfig() == TextSamplerConfig(256, 128, 32, 0.9, "low_confidence", 0.0)


def test_bf16_network_samples(network):
    half = MaskedDiffusionLM(network.config).eval()
    half.load_state_dict(network.state_dict())
    half.to(torch.bfloat16)
    sequences, reveal_step, _ = generate_text(half, PROMPTS, gen_length=16, steps=8, block_length=8,
                                           temperature=0.9, mask_id=MASK, pad_id=PAD)
    assert not (sequences[:, -16:] == MASK).any() and (reveal_step >= 0).all()


# ---- errors name the culprit ----------------------------------------------------------------------------

GOOD = dict(gen_length=16, steps=8, block_length=8, temperature=0.0, remasking="low_confidence", cfg_scale=0.0)


@pytest.mark.parametrize(
    "change, culprit",
    [
        (dict(gen_length=0), "gen_length"),
        (dict(gen_length=-8), "gen_length"),
        (dict(gen_length=16.0), "gen_length"),
        (dict(steps=0), "steps"),
        (dict(block_length=0), "block_length"),
        (dict(block_length=True), "block_length"),
        (dict(gen_length=20), "gen_length"),  # 20 % 8
        (dict(steps=7, block_length=4), "steps"),  # 4 blocks do not divide 7 steps
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature="hot"), "temperature"),
        (dict(cfg_scale=-1.0), "cfg_scale"),
        (dict(cfg_scale=float("inf")), "cfg_scale"),
        (dict(remasking="entropy"), "remasking"),
    ],
)
def test_bad_settings_name_the_argument(network, change, culprit):
    knobs = {**GOOD, **change}
    with pytest.raises(ValueError, match=rf"^{culprit}: "):
        generate_text(network, PROMPTS, mask_id=MASK, **knobs)
    with pytest.raises(ValueError, match=rf"^{culprit}: "):
        TextSamplerConfig(**knobs)


@pytest.mark.parametrize(
    "prompts, extra, culprit",
    [
        ([], {}, r"prompts: got an empty list"),
        ("1 2 3", {}, r"prompts: got a str"),
        ([[1, 2], [3, MASK, 4]], {}, r"prompts\[1\]\[1\]: the prompt contains mask_id=96"),
        ([[1, VOCAB]], {}, r"prompts\[0\]\[1\]: token id 97 is outside the vocabulary \[0, 97\)"),
        ([[4, -1]], {}, r"prompts\[0\]\[1\]: token id -1"),
        ([[1.5, 2.0]], {}, r"prompts\[0\]: expected a flat list of integer token ids"),
        ([[[1, 2]]], {}, r"prompts\[0\]: expected a flat list"),
        ([1, 2, 3], {}, r"prompts\[0\]: expected a flat list of integer token ids, got 1"),
        (["hello"], {}, r"prompts\[0\]: expected a flat list"),
        ([[1] * 60], dict(gen_length=8, steps=1, block_length=8), r"gen_length: the longest prompt \(60 tokens\) "
         r"\+ gen_length=8 exceeds the network's max_sequence_length=64"),
        ([[1, 2]], dict(mask_id=VOCAB), r"mask_id: got 97; expected a token id in \[0, 97\)"),
        ([[1, 2]], dict(pad_id=-1), r"pad_id: got -1"),
        ([[1, 2]], dict(seed=1.5), r"seed: got 1.5; expected an integer"),
    ],
)
def test_bad_inputs_name_the_culprit(network, prompts, extra, culprit):
    knobs = {**GOOD, "mask_id": MASK, **extra}
    with pytest.raises(ValueError, match=rf"^{culprit}"):
        generate_text(network, prompts, **knobs)
