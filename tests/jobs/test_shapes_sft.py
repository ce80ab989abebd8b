"""The toy text-to-image warm start (jobs/tasks/shapes_sft.py): rows laid out as the image sampler lays them out,
a masked-image loss over the image columns only, and a deterministic checkpoint that `model.load` reads."""

from __future__ import annotations

import json
import math

import pytest
import torch

from jobs.tasks.shapes import shape_images
from jobs.tasks.shapes_sft import learning_rate_factor, main, masked_image_loss, train_sft, training_rows

TOY_VQ = dict(ch=16, z_channels=6, encoder_ch_mult=(1, 2, 2), encoder_num_res_blocks=(1, 1, 1),
              decoder_ch_mult=(1, 2, 2), decoder_num_res_blocks=(1, 1, 1), num_groups=8)  # 32 px -> 64 codes
SMALL = {"d_model": 32, "n_layers": 1, "n_heads": 2, "mlp_hidden_size": 64}


@pytest.fixture(scope="module")
def vq_dir(tmp_path_factory):
    from model.magvit import MagvitConfig, random_image_tokenizer, save_image_tokenizer

    torch.set_num_threads(1)
    return save_image_tokenizer(random_image_tokenizer(MagvitConfig(**TOY_VQ), seed=0), tmp_path_factory.mktemp("vq"))


@pytest.fixture(scope="module")
def policy():
    from model.mmada import MMaDALayout
    from model.tiny import tiny_mmada_model

    loaded = tiny_mmada_model(0, codebook_size=64, num_vq_tokens=64, **SMALL)
    return loaded, MMaDALayout.from_model(loaded.config, loaded.tokenizer)


def test_rows_are_the_samplers_layout(policy):
    from model.mmada import t2i_prompt

    loaded, layout = policy
    _, specs = shape_images(2, seed=3)
    codes = torch.arange(128).reshape(2, 64) % 64
    ids, attention, width = training_rows(layout, loaded.tokenizer, specs, codes, text_length=16)
    assert width == 17 and ids.shape == attention.shape == (2, 17 + 64 + 1)
    for row, spec in enumerate(specs):
        prompt = t2i_prompt(layout, loaded.tokenizer(f"a {spec.colour} {spec.shape}", add_special_tokens=False)["input_ids"], 16)
        assert ids[row, :17].tolist() == list(prompt.ids)
        assert ids[row, 17:81].tolist() == (codes[row] + layout.image_lo).tolist() and ids[row, 81] == layout.eoi
        assert attention[row].tolist() == [False] * prompt.num_pads + [True] * (82 - prompt.num_pads)


def test_loss_is_over_the_image_columns_of_masked_slots(policy):
    import copy

    loaded, layout = policy
    _, specs = shape_images(4, seed=1)
    codes = torch.randint(0, 64, (4, 64), generator=torch.Generator().manual_seed(0))
    ids, attention, width = training_rows(layout, loaded.tokenizer, specs, codes, text_length=16)
    network = copy.deepcopy(loaded.network)
    head = dict(network.named_parameters())["model.transformer.ff_out.weight"]  # [V, d]
    with torch.no_grad():
        head[layout.image_lo:layout.image_hi] = 0.0  # uniform over the image columns
    loss = masked_image_loss(network, layout, ids, attention, width, torch.Generator().manual_seed(5))
    assert float(loss.detach()) == pytest.approx(math.log(64), abs=1e-6)  # whatever the text columns' logits are
    with torch.no_grad():
        head[:layout.image_lo] += 5.0  # huge text logits change nothing
    again = masked_image_loss(network, layout, ids, attention, width, torch.Generator().manual_seed(5))
    assert float(again.detach()) == pytest.approx(math.log(64), abs=1e-6)
    again.backward()
    grad = head.grad  # [V, d]
    assert torch.count_nonzero(grad[:layout.image_lo]) == 0 and torch.count_nonzero(grad[layout.image_hi:]) == 0


def test_training_is_deterministic_and_loads_as_an_mmada_checkpoint(vq_dir, tmp_path):
    import model

    first, record = train_sft(vq_dir, seed=2, steps=3, batch_size=4, size=SMALL, log=lambda line: None)
    second, _ = train_sft(vq_dir, seed=2, steps=3, batch_size=4, size=SMALL, log=lambda line: None)
    assert all(torch.equal(a, b) for a, b in zip(first.network.state_dict().values(), second.network.state_dict().values()))
    assert [h["step"] for h in record["loss"]] == [0, 2] and all(math.isfinite(h["loss"]) for h in record["loss"])
    assert main(["--out", str(tmp_path / "sft"), "--vq", str(vq_dir), "--seed", "2", "--steps", "3",
                 "--batch-size", "4"]) == 0
    loaded = model.load(tmp_path / "sft")
    assert loaded.config.mmada["codebook_size"] == 64 and loaded.config.mmada["num_vq_tokens"] == 64
    assert json.loads((tmp_path / "sft" / "training.json").read_text())["settings"]["steps"] == 3
    with pytest.raises(ValueError, match="steps=0"):
        train_sft(vq_dir, steps=0)


def test_learning_rate_warms_up_then_decays_to_zero():
    # 200 steps: 50 warm-up steps (1/50 .. 1), then cos over the remaining 150, 0 after the last step
    assert learning_rate_factor(0, 200) == pytest.approx(1 / 50) and learning_rate_factor(49, 200) == 1.0
    assert learning_rate_factor(50, 200) == pytest.approx(0.5 * (1 + math.cos(math.pi / 150)))
    assert learning_rate_factor(124, 200) == pytest.approx(0.5) and learning_rate_factor(199, 200) == pytest.approx(0.0)
    # 3 steps: warm-up min(50, 3 // 2) = 1 step
    assert [learning_rate_factor(i, 3) for i in range(3)] == pytest.approx([1.0, 0.5, 0.0])
