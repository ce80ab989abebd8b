"""The MaskGIT text-to-image sampler against hand-computed schedules and a plain per-row reference loop.

The reference below runs one prompt at a time with two separate full forward passes (conditional and
unconditional, no batching, the whole vocabulary then sliced), combines them with (1+w)·c − w·u, and
follows models.md §3 literally, drawing its noise in the order documented in model/image_sampling.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from model.image_sampling import (
    ImageSamplerConfig,
    _denoise,
    _guided_logits,
    _inputs,
    codes_of,
    confidence_temperatures,
    cosine_mask_counts,
    generate_images,
    image_logits,
)
from model.mmada import MMaDALayout, t2i_prompt
from model.sampling import row_seed
from model.tiny import tiny_mmada_model

PROMPTS = [[40, 41, 42], [7], [300, 301, 302, 303, 304, 305, 306, 307, 308, 309]]


def tiny(num_vq_tokens=16, codebook_size=64, dtype=torch.float64, **size):
    loaded = tiny_mmada_model(3, codebook_size=codebook_size, num_vq_tokens=num_vq_tokens, dtype=dtype, **size)
    return loaded.network, MMaDALayout.from_model(loaded.config, loaded.tokenizer)


@pytest.fixture(scope="module")
def twin():
    return tiny()


def reference_sample(network, mm, text_ids, cfg, seed, row):
    """(image ids [N], reveal_step [N]) of one prompt, models.md §3 step by step."""
    N, K, T, w = mm.num_vq_tokens, mm.codebook_size, cfg.steps, cfg.guidance_scale
    cond, uncond = t2i_prompt(mm, text_ids, cfg.text_length), t2i_prompt(mm, [], cfg.text_length)
    P = cfg.text_length + 1
    image = [mm.mask] * N
    generator = torch.Generator().manual_seed(row_seed(seed, row))
    reveal = [-1] * N
    tau = cfg.temperature
    for step in range(T):
        r = (step + 1) / T
        tau = tau * (1 - r) if cfg.temperature_schedule == "compound" else cfg.temperature * (1 - r)
        masked = [i for i in range(N) if image[i] == mm.mask]
        keep = 0 if step == T - 1 else max(1, min(len(masked) - 1, math.floor(N * math.cos(math.pi / 2 * r))))
        if keep == len(masked):
            continue

        def logits_of(prompt):
            ids = torch.tensor([prompt.ids + image + [mm.eoi]])
            attend = torch.tensor([[False] * prompt.num_pads + [True] * (ids.shape[1] - prompt.num_pads)])
            with torch.no_grad():
                return network(ids, attend)[0, P : P + N, mm.image_lo : mm.image_hi].double()  # [N, K]

        logits = logits_of(cond)
        if w > 0:
            logits = (1 + w) * logits - w * logits_of(uncond)
        logp = logits[masked].log_softmax(-1)  # [m, K]
        u = torch.empty(len(masked), K, dtype=torch.float64).uniform_(generator=generator)
        codes = (logp + -torch.log(-torch.log(u))).argmax(-1)  # Gumbel-max
        confidence = logp.gather(1, codes[:, None]).squeeze(1)
        if keep > 0 and tau > 0:
            u = torch.empty(len(masked), dtype=torch.float64).uniform_(generator=generator)
            confidence = confidence + tau * -torch.log(-torch.log(u))
        order = sorted(range(len(masked)), key=lambda j: -float(confidence[j]))  # stable: ties keep slot order
        for j in order[: len(masked) - keep]:
            image[masked[j]] = mm.image_lo + int(codes[j])
            reveal[masked[j]] = step
    return image, reveal


# ---------------------------------------------------------------------------------------------- schedule


def test_cosine_mask_counts_by_hand():
    # 16·cos(π/8) = 14.78, 16·cos(π/4) = 11.31, 16·cos(3π/8) = 6.12, then 0 after the last step.
    assert cosine_mask_counts(16, 4) == [14, 11, 6, 0]
    # 1024 slots, 3 steps: 1024·cos(π/6) = 886.8, 1024·cos(π/3) = 512.0000000000001 (float64).
    assert cosine_mask_counts(1024, 3) == [886, 512, 0]
    # 4 slots, 6 steps: ⌊4·cos(π/12)⌋ = 3; ⌊3.46⌋ = 3 capped at 3−1 = 2; ⌊2.83⌋ = 2 capped at 1; then
    # ⌊2⌋ and ⌊1.04⌋ are capped at 0 and raised to 1 (the last slot waits for the last step).
    assert cosine_mask_counts(4, 6) == [3, 2, 1, 1, 1, 0]
    assert cosine_mask_counts(5, 1) == [0] and cosine_mask_counts(1, 3) == [1, 1, 0]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_tokens: got .*; expected a positive integer"):
            cosine_mask_counts(bad, 4)
        with pytest.raises(ValueError, match="steps: got .*; expected a positive integer"):
            cosine_mask_counts(4, bad)


def loop_schedule(N, T):
    """Tokens revealed per step, computed the plain way."""
    masked, revealed = N, []
    for s in range(T):
        target = 0 if s == T - 1 else max(1, min(masked - 1, int(N * math.cos(math.pi / 2 * (s + 1) / T))))
        revealed.append(masked - target)
        masked = target
    return revealed


@pytest.mark.parametrize(("N", "T"), [(16, 4), (16, 15), (9, 1), (9, 2), (4, 6), (25, 7), (1, 3)])
def test_the_sampler_reveals_what_the_cosine_schedule_prescribes(N, T):
    network, mm = tiny(num_vq_tokens=N, dtype=torch.float32)
    cfg = ImageSamplerConfig(steps=T, guidance_scale=2.0, text_length=8)
    out = generate_images(network, mm, PROMPTS, cfg, seed=11)
    assert out.reveal_step.shape == (3, N) and out.reveal_step.min() >= 0 and out.reveal_step.max() < T
    for row in range(3):
        per_step = torch.bincount(out.reveal_step[row], minlength=T).tolist()
        assert per_step == loop_schedule(N, T)
    if (N, T) == (16, 4):
        assert loop_schedule(N, T) == [2, 3, 5, 6]  # from the hand-computed counts above
    if (N, T) == (4, 6):
        assert loop_schedule(N, T) == [1, 1, 1, 0, 0, 1]


def test_confidence_temperatures_by_hand():
    linear = ImageSamplerConfig(steps=4, temperature=2.0)
    assert confidence_temperatures(linear) == [1.5, 1.0, 0.5, 0.0]  # 2·(1 − r), r = 1/4 … 1
    compound = ImageSamplerConfig(steps=4, temperature=2.0, temperature_schedule="compound")
    assert confidence_temperatures(compound) == [1.5, 0.75, 0.1875, 0.0]  # 2·3/4, ·1/2, ·1/4, ·0


# --------------------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize(
    "cfg",
    [
        ImageSamplerConfig(steps=5, guidance_scale=3.5, temperature=1.0, text_length=8),
        ImageSamplerConfig(steps=4, guidance_scale=1.5, temperature=4.5, temperature_schedule="compound",
                           text_length=6),
        ImageSamplerConfig(steps=3, guidance_scale=0.0, temperature=0.0, text_length=12),
        ImageSamplerConfig(steps=20, guidance_scale=0.5, temperature=2.0, text_length=4),  # T > N: idle steps
    ],
)
def test_generate_images_matches_the_per_row_reference(twin, cfg):
    network, mm = twin
    out = generate_images(network, mm, PROMPTS, cfg, seed=5)
    P = cfg.text_length + 1
    assert out.prompt_width == P and out.sequences.shape == (3, P + 16 + 1)
    for row, text in enumerate(PROMPTS):
        prompt = t2i_prompt(mm, text, cfg.text_length)
        assert out.sequences[row, :P].tolist() == prompt.ids and out.prompt_lengths[row] == P - prompt.num_pads
        assert out.sequences[row, -1] == mm.eoi
        image, reveal = reference_sample(network, mm, text, cfg, seed=5, row=row)
        assert out.sequences[row, P : P + 16].tolist() == image
        assert out.reveal_step[row].tolist() == reveal
    codes = codes_of(out.sequences, mm, P)
    assert codes.shape == (3, 16) and torch.equal(codes + mm.image_lo, out.sequences[:, P : P + 16])


def test_guidance_zero_is_the_conditional_only_path(twin):
    network, mm = twin
    cfg = ImageSamplerConfig(steps=4, guidance_scale=0.0, text_length=8)
    batch_sizes = []
    handle = network.model.transformer.wte.register_forward_hook(lambda m, i, o: batch_sizes.append(o.shape[0]))
    try:
        out = generate_images(network, mm, PROMPTS, cfg, seed=2)
        assert batch_sizes == [3] * 4  # no unconditional rows in any forward pass
        # The guided path (unconditional rows in the batch) with w = 0 gives exactly the same images.
        prompts = [t2i_prompt(mm, text, cfg.text_length) for text in PROMPTS]
        inputs, attention = _inputs(mm, prompts, ImageSamplerConfig(guidance_scale=1.0, text_length=8), "cpu")
        assert inputs.shape[0] == 6
        with torch.inference_mode():
            reveal = _denoise(network, mm, inputs, attention, cfg, 3, 2)
    finally:
        handle.remove()
    assert batch_sizes[4:] == [6] * 4
    assert torch.equal(inputs[:3], out.sequences) and torch.equal(reveal, out.reveal_step)
    assert torch.equal(inputs[3:, 9:], out.sequences[:, 9:])  # the unconditional rows followed the same image


def test_guided_logits_equal_two_separate_forwards(twin):
    network, mm = twin
    cfg = ImageSamplerConfig(guidance_scale=2.5, text_length=8)
    prompts = [t2i_prompt(mm, text, cfg.text_length) for text in PROMPTS]
    inputs, attention = _inputs(mm, prompts, cfg, "cpu")  # [6, 26]
    inputs[:, 9:12] = inputs[:, 9:12].clone().fill_(mm.image_lo + 7)  # a few known slots
    positions = torch.tensor([[12, 15, 20]] * 3)
    with torch.no_grad():
        got = _guided_logits(network, mm, inputs, attention, positions, 2, 2.5)  # [3, 3, 64]
        expected = []
        for row in range(3):
            cond = network(inputs[row : row + 1], attention[row : row + 1])[0, [12, 15, 20], 600:664]
            uncond = network(inputs[row + 3 : row + 4], attention[row + 3 : row + 4])[0, [12, 15, 20], 600:664]
            expected.append(3.5 * cond - 2.5 * uncond)
        torch.testing.assert_close(got, torch.stack(expected), rtol=0, atol=1e-12)
        hidden = network.hidden_states(inputs, attention)
        torch.testing.assert_close(image_logits(network, hidden, mm), network(inputs, attention)[..., 600:664],
                                   rtol=0, atol=1e-12)


def test_rows_are_deterministic_and_independent_of_their_batch_mates(twin):
    network, mm = twin
    cfg = ImageSamplerConfig(steps=4, text_length=8)
    first = generate_images(network, mm, PROMPTS, cfg, seed=9)
    again = generate_images(network, mm, PROMPTS, cfg, seed=9)
    assert torch.equal(first.sequences, again.sequences) and torch.equal(first.reveal_step, again.reveal_step)
    mates = generate_images(network, mm, [[1, 2, 3, 4, 5, 6, 7, 8], PROMPTS[1]], cfg, seed=9)  # row 1 kept
    assert torch.equal(mates.sequences[1], first.sequences[1])
    assert torch.equal(mates.reveal_step[1], first.reveal_step[1])
    other = generate_images(network, mm, PROMPTS, cfg, seed=10)
    assert not torch.equal(other.sequences, first.sequences)


def test_truncated_prompts_and_bf16(twin):
    network, mm = tiny(dtype=torch.bfloat16)
    long = list(range(100, 140))
    out = generate_images(network, mm, [long, []], ImageSamplerConfig(steps=3, text_length=6), seed=0)
    assert out.sequences[0, :7].tolist() == [mm.t2i, mm.bos, 100, 101, 102, mm.eos, mm.soi]
    assert out.sequences[1, :7].tolist() == [mm.ipad, mm.ipad, mm.ipad, mm.t2i, mm.bos, mm.eos, mm.soi]
    assert out.prompt_lengths == [7, 4]
    assert ((out.sequences[:, 7:23] >= 600) & (out.sequences[:, 7:23] < 664)).all()


# ------------------------------------------------------------------------------------------------ errors


def test_config_errors():
    for bad in (0, -3, 2.0, True):
        with pytest.raises(ValueError, match="steps: got .*; expected a positive integer"):
            ImageSamplerConfig(steps=bad)
    for name in ("guidance_scale", "temperature"):
        for bad in (-0.5, math.inf, math.nan, "1", False):
            with pytest.raises(ValueError, match=f"{name}: got .*; expected a finite number >= 0"):
                ImageSamplerConfig(**{name: bad})
    with pytest.raises(ValueError, match=r"temperature_schedule: got 'cosine'; expected one of "
                                         r"\['linear', 'compound'\]"):
        ImageSamplerConfig(temperature_schedule="cosine")
    for bad in (2, 0, 8.0, None):
        with pytest.raises(ValueError, match="text_length: got .*; expected an integer >= 3"):
            ImageSamplerConfig(text_length=bad)


def test_generate_images_errors(twin):
    network, mm = twin
    cfg = ImageSamplerConfig(steps=2, text_length=8)
    with pytest.raises(TypeError, match="cfg: got dict; expected an ImageSamplerConfig"):
        generate_images(network, mm, PROMPTS, {"steps": 2})
    with pytest.raises(ValueError, match="seed: got 1.5; expected an integer"):
        generate_images(network, mm, PROMPTS, cfg, seed=1.5)
    for bad in ([], None, "a cat"):
        with pytest.raises(ValueError, match="text_ids: expected a non-empty list of token-id lists"):
            generate_images(network, mm, bad, cfg)
    with pytest.raises(ValueError, match=r"text_ids\[1\]: text_ids\[0\]: the prompt contains \[MASK\]"):
        generate_images(network, mm, [[5], [mm.mask]], cfg)
    with pytest.raises(ValueError, match=r"text_ids\[0\]: text_ids\[0\]: token id 620 is outside the text vocabulary"):
        generate_images(network, mm, [[620]], cfg)
    _, wide = tiny(codebook_size=80)
    with pytest.raises(ValueError, match=r"layout \(image ids \[600, 680\), mask 588\) does not fit the network "
                                         r"\(664 vocabulary rows, mask 588\)"):
        generate_images(network, wide, PROMPTS, cfg)
    short, short_mm = tiny(max_sequence_length=20)
    with pytest.raises(ValueError, match=r"text_length=8 \+ <\|soi\|> \+ 16 slots \+ <\|eoi\|> = 26 exceeds the "
                                         "network's max_sequence_length=20"):
        generate_images(short, short_mm, PROMPTS, cfg)
    with pytest.raises(ValueError, match=r"id_to_code: token id 596 is not an image code id"):
        codes_of(generate_images(network, mm, PROMPTS, cfg).sequences, mm, 0)
    with pytest.raises(ValueError, match="codes_of: sequences of width 26 hold no 16 image slots after "
                                         "prompt_width=20"):
        codes_of(torch.zeros(1, 26, dtype=torch.long), mm, 20)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_rows_are_deterministic_independent_and_follow_the_schedule():
    network, mm = tiny(dtype=torch.bfloat16)
    network = network.cuda()
    cfg = ImageSamplerConfig(steps=4, text_length=8)
    first = generate_images(network, mm, PROMPTS, cfg, seed=9)
    assert first.sequences.device.type == "cuda"
    again = generate_images(network, mm, PROMPTS, cfg, seed=9)
    assert torch.equal(first.sequences, again.sequences) and torch.equal(first.reveal_step, again.reveal_step)
    # Same batch shape (cuBLAS may pick another kernel for another shape), other batch mates.
    mates = generate_images(network, mm, [[1, 2, 3], PROMPTS[1], [9] * 12], cfg, seed=9)
    assert torch.equal(mates.sequences[1], first.sequences[1])
    for row in range(3):
        assert torch.bincount(first.reveal_step[row].cpu(), minlength=4).tolist() == loop_schedule(16, 4)
