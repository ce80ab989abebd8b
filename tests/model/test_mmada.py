"""MMaDA layout and prompts: image ids after len(tokenizer), t2i / mmu prompts, checkpoints, the 8B shapes.

Expected ids are written out by hand from docs/models.md §2.2 (tiny tokenizer: BOS 586, EOS 587,
[MASK] 588, <|soi|> 592, <|eoi|> 593, <|t2i|> 594, <|mmu|> 595, [iPAD] 596; 600 text ids).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import model
from model.checkpoint import _resolve_embedding_rows, config_from_json, config_to_json, expected_shapes
from model.mmada import MMaDALayout, T2IPrompt, mmu_prompt, t2i_prompt
from model.tiny import tiny_mmada_model, tiny_model

BOS, EOS, MASK, SOI, EOI, T2I, MMU, IPAD = 586, 587, 588, 592, 593, 594, 595, 596


@pytest.fixture(scope="module")
def tiny():
    return tiny_mmada_model(codebook_size=64, num_vq_tokens=16)


@pytest.fixture(scope="module")
def mm(tiny):
    return MMaDALayout.from_model(tiny.config, tiny.tokenizer)


def test_layout_of_the_tiny_twin(tiny, mm):
    assert len(tiny.tokenizer) == 600
    assert (mm.text_vocab, mm.image_lo, mm.image_hi, mm.codebook_size, mm.num_vq_tokens, mm.vocab_size) == (
        600, 600, 664, 64, 16, 664)
    assert (mm.bos, mm.eos, mm.mask, mm.pad, mm.soi, mm.eoi, mm.t2i, mm.mmu, mm.ipad) == (
        BOS, EOS, MASK, EOS, SOI, EOI, T2I, MMU, IPAD)
    assert mm.task_ids == {SOI, EOI, T2I, MMU, IPAD}
    for name, token in (("soi", "<|soi|>"), ("eoi", "<|eoi|>"), ("t2i", "<|t2i|>"), ("mmu", "<|mmu|>"),
                        ("ipad", "[iPAD]")):
        assert getattr(mm, name) == tiny.tokenizer.convert_tokens_to_ids(token)


def test_code_and_id_conversions(mm):
    assert mm.code_to_id(0) == 600 and mm.code_to_id(63) == 663 and mm.id_to_code(663) == 63
    assert mm.code_to_id([0, 5, 63]) == [600, 605, 663]
    codes = torch.tensor([[1, 2], [3, 4]])
    ids = mm.code_to_id(codes)
    assert isinstance(ids, torch.Tensor) and ids.tolist() == [[601, 602], [603, 604]]
    assert torch.equal(mm.id_to_code(ids), codes)
    with pytest.raises(ValueError, match=r"code_to_id: image code 64 is outside the codebook \[0, 64\)"):
        mm.code_to_id([3, 64])
    with pytest.raises(ValueError, match="code_to_id: image code -1"):
        mm.code_to_id(-1)
    with pytest.raises(ValueError, match="code_to_id: image codes must be integers"):
        mm.code_to_id(torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"id_to_code: token id 599 is not an image code id \[600, 664\)"):
        mm.id_to_code([600, 599])
    with pytest.raises(ValueError, match="id_to_code: token id 664"):
        mm.id_to_code(664)
    with pytest.raises(ValueError, match="id_to_code: token ids must be integers"):
        mm.id_to_code(torch.tensor([True]))


def test_layout_errors(tiny):
    llada = tiny_model()
    with pytest.raises(ValueError, match=r"model_type='llada'.*not an MMaDA config.*missing or not integers: "
                                         r"\['codebook_size', 'num_vq_tokens'\]"):
        MMaDALayout.from_model(llada.config, llada.tokenizer)
    no_slots = dataclasses.replace(tiny.config, mmada={"codebook_size": 64})
    with pytest.raises(ValueError, match=r"missing or not integers: \['num_vq_tokens'\]"):
        MMaDALayout.from_model(no_slots, tiny.tokenizer)
    zero = dataclasses.replace(tiny.config, mmada={"codebook_size": 0, "num_vq_tokens": 16})
    with pytest.raises(ValueError, match="codebook_size=0 and num_vq_tokens=16 must be positive"):
        MMaDALayout.from_model(zero, tiny.tokenizer)
    too_big = dataclasses.replace(tiny.config, mmada={"codebook_size": 65, "num_vq_tokens": 16})
    with pytest.raises(ValueError, match=r"image codes need ids \[len\(tokenizer\)=600, 665\) but the network has "
                                         "664 vocabulary rows"):
        MMaDALayout.from_model(too_big, tiny.tokenizer)
    other_mask = dataclasses.replace(tiny.config, mask_token_id=5)
    with pytest.raises(ValueError, match="tokenizer's \\[MASK\\] id 588 differs from config mask_token_id=5"):
        MMaDALayout.from_model(other_mask, tiny.tokenizer)
    vocab = {token: i for token, i in tiny.tokenizer.get_vocab().items() if token not in ("<|soi|>", "[iPAD]")}
    with pytest.raises(ValueError, match=r"tokenizer lacks the MMaDA task token\(s\) \['soi', 'ipad'\]"):
        MMaDALayout.from_model(tiny.config, FakeTokenizer(vocab, 600, EOS))


class FakeTokenizer:
    """Just what MMaDALayout.from_model reads: len(), get_vocab(), pad_token_id."""

    def __init__(self, vocab: dict[str, int], length: int, pad: int):
        self.vocab, self.length, self.pad_token_id = vocab, length, pad

    def __len__(self) -> int:
        return self.length

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)


# ------------------------------------------------------------------------------------------------ prompts


def test_t2i_prompt_pads_on_the_left_to_the_text_length(mm):
    assert t2i_prompt(mm, [5, 6, 7], 8) == T2IPrompt([IPAD, IPAD, T2I, BOS, 5, 6, 7, EOS, SOI], 2)
    assert t2i_prompt(mm, [BOS, 5, 6, 7], 8) == T2IPrompt([IPAD, IPAD, T2I, BOS, 5, 6, 7, EOS, SOI], 2)  # no 2nd BOS
    # <|t2i|> BOS 5 6 7 8 EOS is 7 > 6 tokens: keep the first 5, end with EOS.
    assert t2i_prompt(mm, [5, 6, 7, 8], 6) == T2IPrompt([T2I, BOS, 5, 6, 7, EOS, SOI], 0)
    assert t2i_prompt(mm, [5, 6], 4) == T2IPrompt([T2I, BOS, 5, EOS, SOI], 0)  # exactly one token cut
    assert t2i_prompt(mm, [5], 4) == T2IPrompt([T2I, BOS, 5, EOS, SOI], 0)  # exact fit, no pads
    assert t2i_prompt(mm, [], 5) == T2IPrompt([IPAD, IPAD, T2I, BOS, EOS, SOI], 2)  # the unconditional input
    assert t2i_prompt(mm, torch.tensor([9, 10]), 3) == T2IPrompt([T2I, BOS, EOS, SOI], 0)  # the whole text is cut


def test_t2i_prompt_errors(mm):
    for bad in (2, 3.0, True, None):
        with pytest.raises(ValueError, match="text_length: got .*; need an integer >= 3"):
            t2i_prompt(mm, [5], bad)
    with pytest.raises(ValueError, match=r"text_ids\[1\]: the prompt contains \[MASK\] \(id 588\)"):
        t2i_prompt(mm, [5, MASK], 8)
    with pytest.raises(ValueError, match=r"text_ids\[0\]: token id 610 is outside the text vocabulary \[0, 600\) "
                                         r"\(an image code id\)"):
        t2i_prompt(mm, [610], 8)
    with pytest.raises(ValueError, match=r"text_ids\[0\]: token id -1 is outside"):
        t2i_prompt(mm, [-1], 8)
    with pytest.raises(ValueError, match=r"text_ids\[1\]: 'a' is not an integer token id"):
        t2i_prompt(mm, [5, "a"], 8)
    with pytest.raises(ValueError, match="text_ids: expected a list of token ids, got str"):
        t2i_prompt(mm, "a cat", 8)


def test_mmu_prompt(mm):
    chat = [BOS, 589, 40, 590, 41, 591]
    assert mmu_prompt(mm, [0, 3, 63], chat) == [MMU, SOI, 600, 603, 663, EOI, *chat]
    assert mmu_prompt(mm, torch.tensor([7]), []) == [MMU, SOI, 607, EOI]
    with pytest.raises(ValueError, match=r"image_codes must be a non-empty flat \[N\] sequence, got shape \(1, 2\)"):
        mmu_prompt(mm, [[1, 2]], chat)
    with pytest.raises(ValueError, match=r"got shape \(0,\)"):
        mmu_prompt(mm, [], chat)
    with pytest.raises(ValueError, match="image code 64 is outside the codebook"):
        mmu_prompt(mm, [64], chat)
    with pytest.raises(ValueError, match=r"chat_prompt_ids\[0\]: token id 600 is outside the text vocabulary"):
        mmu_prompt(mm, [1], [600])


# ------------------------------------------------------------------------------------------- checkpoints


def test_layout_of_an_mmada_checkpoint_survives_save_and_load(tmp_path, layout):
    # MMaDA-8B scaled down: llm_vocab_size 608 (126464) > len(tokenizer) 600 (126349); new_vocab_size
    # 672 (134656) rows in the weights while config.json's vocab_size/embedding_size say 608 (126464).
    fields = layout.published_config(
        model_type="mmada", architectures=["MMadaModelLM"], vocab_size=608, embedding_size=608,
        new_vocab_size=672, llm_vocab_size=608, codebook_size=64, num_vq_tokens=16, num_new_special_tokens=0,
    )  # fmt: skip
    state = layout.random_state_dict({**fields, "embedding_size": 672})
    loaded = model.load(layout.write_checkpoint(tmp_path / "mmada", fields, state))
    assert loaded.config.num_embeddings == 672 and loaded.config.vocab_size == 608
    mm = MMaDALayout.from_model(loaded.config, loaded.tokenizer)
    assert (mm.image_lo, mm.image_hi, mm.vocab_size) == (600, 664, 672)  # after len(tokenizer), not llm_vocab_size
    resaved = model.load(model.save(loaded, tmp_path / "resaved"))
    assert resaved.config == loaded.config
    assert MMaDALayout.from_model(resaved.config, resaved.tokenizer) == mm
    ids = torch.tensor([[MMU, SOI, 600, 663, EOI, BOS, 5, MASK]])
    with torch.no_grad():
        assert torch.equal(resaved.network(ids), loaded.network(ids))


def test_tiny_twin_layout_round_trips(tmp_path, tiny, mm):
    reloaded = model.load(model.save(tiny, tmp_path / "tiny"))
    assert MMaDALayout.from_model(reloaded.config, reloaded.tokenizer) == mm


def test_mmada_8b_layout_on_the_meta_device(layout):
    """The published MMaDA-8B config (models.md §1) and tokenizer ids (§2): shapes only, nothing allocated."""
    raw = layout.published_config(
        d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288, vocab_size=126464,
        embedding_size=126464, mask_token_id=126336, eos_token_id=126081, pad_token_id=126081,
        bos_token_id=126080, model_type="mmada", architectures=["MMadaModelLM"], new_vocab_size=134656,
        llm_vocab_size=126464, codebook_size=8192, num_vq_tokens=1024, num_new_special_tokens=0,
    )  # fmt: skip
    wte_header = {"model.transformer.wte.weight": ((134656, 4096), "BF16", "model-00001-of-00004.safetensors")}
    config = _resolve_embedding_rows(config_from_json(raw), wte_header)  # as model.load does with the headers
    shapes = expected_shapes(config)
    assert shapes["model.transformer.wte.weight"] == shapes["model.transformer.ff_out.weight"] == (134656, 4096)
    total = 0
    for shape in shapes.values():
        total += torch.Size(shape).numel()
    assert total == 8_082_690_048
    assert _resolve_embedding_rows(config_from_json(config_to_json(config, torch.bfloat16)), wte_header) == config
    special = {"<|startoftext|>": 126080, "<|endoftext|>": 126081, "<|mdm_mask|>": 126336,
               "<|start_header_id|>": 126346, "<|end_header_id|>": 126347, "<|eot_id|>": 126348,
               "<|soi|>": 126084, "<|eoi|>": 126085, "<|t2i|>": 126088, "<|mmu|>": 126089, "[iPAD]": 126093,
               "<|r2i|>": 126094}  # fmt: skip
    mm = MMaDALayout.from_model(config, FakeTokenizer(special, 126349, 126081))
    assert (mm.text_vocab, mm.image_lo, mm.image_hi, mm.vocab_size) == (126349, 126349, 134541, 134656)
    assert (mm.soi, mm.eoi, mm.t2i, mm.mmu, mm.ipad, mm.mask, mm.bos, mm.eos) == (
        126084, 126085, 126088, 126089, 126093, 126336, 126080, 126081)
    assert mm.code_to_id(8191) == 134540 and mm.num_vq_tokens == 1024
    # The same checkpoint without the resized rows (a LLaDA file labelled mmada) cannot hold the codes.
    with pytest.raises(ValueError, match=r"image codes need ids \[len\(tokenizer\)=126349, 134541\) but the "
                                         "network has 126464 vocabulary rows"):
        MMaDALayout.from_model(config_from_json(raw), FakeTokenizer(special, 126349, 126081))
