"""rl.batch.RolloutBatch: scored mask from sampler output, the row and reward columns, split/concat/select,
serialisation, what a learner receives, validation."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest
import torch

from rl.batch import RolloutBatch, drop_repeated_rows


def test_from_sampler_scores_through_first_eos_inclusive(kit):
    # prompt width 3, responses of 5: row 0 ends at its first EOS (index 2), row 1 has EOT at 4, row 2 none
    seqs = torch.tensor([
        [0, 9, 9, 10, 11, kit.EOS, kit.EOS, kit.EOS],
        [9, 9, 9, 10, 11, 12, 13, kit.EOT],
        [0, 0, 9, 10, 11, 12, 13, 14],
    ])
    batch = RolloutBatch.from_sampler(
        seqs, torch.arange(5).repeat(3, 1), [2, 3, 1], eos_ids=[kit.EOS, kit.EOT], kind="text",
        uid=["a", "a", "b"], sample_index=[0, 1, 0], policy_version=[3, 3, 4], pad_token_id=0)
    assert batch.scored_mask.int().tolist() == [
        [0, 0, 0, 1, 1, 1, 0, 0],  # 10, 11, EOS scored; trailing EOS padding not
        [0, 0, 0, 1, 1, 1, 1, 1],  # EOT is the last token, scored
        [0, 0, 0, 1, 1, 1, 1, 1],  # no EOS: the whole response
    ]
    assert batch.attention_mask.int().tolist()[0] == [0, 1, 1, 1, 1, 1, 1, 1]
    assert batch.attention_mask.int().tolist()[2] == [0, 0, 1, 1, 1, 1, 1, 1]
    assert batch.reveal_step.tolist()[0] == [-1, -1, -1, 0, 1, 2, 3, 4]
    assert batch.response_start.tolist() == [3, 3, 3] and batch.response_end.tolist() == [8, 8, 8]
    assert batch.policy_version == [3, 3, 4] and batch.score_vocab == [None] * 3
    # the row columns' defaults (the kind is the task), and nothing scored yet
    assert batch.kind == batch.task == ["text"] * 3 and batch.prompt == batch.response == [""] * 3
    assert batch.answer == batch.image == batch.meta == batch.forwards == [None] * 3
    assert batch.rewards == batch.reward_reasons == {} and batch.total == batch.total_reason == [None] * 3
    assert batch.scorable().tolist() == [False] * 3


def full_batch(kit) -> RolloutBatch:
    """kit.mixed_batch() (text rows t, mmu rows m, t2i rows i; scored: correctness = total) with every row column
    filled: the mmu rows share their input image, the t2i rows carry their generated images."""
    batch = kit.mixed_batch()
    picture = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    return dataclasses.replace(
        batch, task=["text", "text", "captioning", "captioning", "shapes", "shapes"],
        prompt=["2+2?", "2+2?", "Describe it.", "Describe it.", "a red circle", "a red circle"],
        answer=["4", "4", None, None, None, None], response=["4", "5", "grey", "", "", ""],
        image=[None, None, picture, picture, picture + 1, picture + 2],
        meta=[None, None, {"kw": 1}, {"kw": 1}, {"rgb": [255, 0, 0]}, {"rgb": [255, 0, 0]}],
        forwards=[4, 4, 3, 3, None, None]).validate()


ROW_COLUMNS = ("kind", "score_vocab", "uid", "sample_index", "policy_version", "task", "prompt", "answer",
               "response", "image", "meta", "forwards", "total", "total_reason")


def same_columns(x: RolloutBatch, y: RolloutBatch) -> bool:
    """Every per-row and per-term column equal (images compared as arrays)."""
    from rl.batch import _same

    return all(_same(getattr(x, name), getattr(y, name)) for name in ROW_COLUMNS + ("rewards", "reward_reasons"))


def test_protected_positions_are_prompt_specials_and_image_codes(kit):
    batch = kit.mixed_batch()
    ids, protected = batch.input_ids, batch.protected_mask
    is_special = torch.isin(ids, torch.tensor(kit.SPECIAL))
    is_image = (ids >= kit.IMAGE[0]) & (ids < kit.IMAGE[1])
    expected = (is_special | is_image) & batch.prompt_mask()
    assert torch.equal(protected, expected)
    assert protected[2].sum() == 7  # <|mmu|> <|soi|> 4 codes <|eoi|>
    assert not (protected & batch.response_mask()).any()


def test_concat_repads_on_the_left_and_split_restores_groups(kit):
    batch = kit.mixed_batch()
    assert batch.seq_len == 16 and batch.num_rows == 6 and len(batch) == 6
    assert batch.kind == ["text", "text", "mmu", "mmu", "t2i", "t2i"]
    # the t2i rows (width 12) were shifted right by 4: their response [6, 11) became [10, 15), eoi suffix at 15
    assert batch.response_start[4:].tolist() == [10, 10] and batch.response_end[4:].tolist() == [15, 15]
    assert batch.input_ids[4, 15] == kit.EOI and not batch.attention_mask[4, :6].any()
    parts = batch.split_by_group()
    assert [p.uid for p in parts] == [["t", "t"], ["m", "m"], ["i", "i"]]
    again = RolloutBatch.concat(parts)
    for name in ("input_ids", "attention_mask", "scored_mask", "protected_mask", "reveal_step", "response_start"):
        assert torch.equal(getattr(again, name), getattr(batch, name)), name
    assert again.rewards == batch.rewards and again.score_vocab == batch.score_vocab


def test_select_by_index_and_by_mask(kit):
    batch = kit.text_batch({"a": 2, "b": 2}, rewards=[1.0, None, 0.0, 0.5])
    picked = batch.select([3, 0])
    assert picked.uid == ["b", "a"] and picked.rewards == {"correctness": [0.5, 1.0]}
    assert torch.equal(picked.input_ids, batch.input_ids[[3, 0]])
    by_mask = batch.select(torch.tensor([False, True, True, False]))
    assert by_mask.sample_index == [1, 0]
    assert batch.select(torch.tensor([1])).uid == ["a"]
    with pytest.raises(IndexError, match=r"rows \[7\] are out of range for a batch of 4 rows"):
        batch.select([0, 7])


def test_scorable_reads_the_total(kit):
    batch = kit.text_batch({"a": 3})
    # the service's totals for correctness 2.0 and format 0.5: 2·1 + 0.5·0.5 = 2.25; None; 2·0 + 0.5·1 = 0.5
    batch = kit.scored(batch, {"correctness": [1.0, None, 0.0], "format": [0.5, 1.0, 1.0]}, total=[2.25, None, 0.5])
    assert batch.scorable().tolist() == [True, False, True]
    overflowed = dataclasses.replace(batch, total=[2.25, None, None], total_reason=[None, "unscored", "overflow"])
    assert overflowed.validate().scorable().tolist() == [True, False, False]  # every term finite, no total


def test_select_concat_and_dict_keep_every_column(kit):
    batch = full_batch(kit)
    picked = batch.select([4, 2])
    for name in ROW_COLUMNS:
        if name != "image":  # arrays: compared by identity below
            assert getattr(picked, name) == [getattr(batch, name)[4], getattr(batch, name)[2]], name
    assert picked.image[0] is batch.image[4] and picked.image[1] is batch.image[2]
    assert picked.rewards == {"correctness": [0.3, 0.0]} and picked.reward_reasons == {"correctness": [None, None]}
    again = RolloutBatch.concat(batch.split_by_group())
    assert same_columns(again, batch) and torch.equal(again.input_ids, batch.input_ids)
    for copy in (RolloutBatch.from_dict(batch.to_dict()), pickle.loads(pickle.dumps(batch))):
        assert same_columns(copy, batch)
    assert not same_columns(batch.select([0, 1, 2, 3, 5, 4]), batch)  # the comparison can fail


def test_for_learner_drops_the_driver_columns_and_keeps_what_the_learner_reads(kit):
    batch = full_batch(kit)
    learner = batch.for_learner()
    assert learner.validate() is learner  # what the learner rank validates again
    for name in ("input_ids", "attention_mask", "response_start", "response_end", "scored_mask", "protected_mask",
                 "reveal_step"):
        assert getattr(learner, name) is getattr(batch, name), name  # the same tensors, not copies
    for name in ("kind", "score_vocab", "uid", "sample_index", "policy_version", "task", "forwards", "total"):
        assert getattr(learner, name) == getattr(batch, name), name
    assert learner.prompt == learner.response == learner.answer == learner.image == learner.meta == [None] * 6
    assert learner.total_reason == [None] * 6
    assert learner.rewards == learner.reward_reasons == {}
    assert learner.scorable().tolist() == batch.scorable().tolist() == [True] * 6
    payload = pickle.dumps(learner)
    assert b"Describe it." not in payload and b"grey" not in payload and b"numpy" not in payload
    assert b"Describe it." in pickle.dumps(batch) and b"numpy" in pickle.dumps(batch)  # (the check can fail)
    assert batch.prompt[2] == "Describe it." and batch.image[2] is not None  # the driver's batch keeps them
    from rewards import samples_of

    with pytest.raises(ValueError, match="Sample.prompt: got NoneType"):  # a learner's batch cannot be scored
        samples_of(learner)


def test_round_trips_through_dict_and_pickle(kit):
    batch = kit.mixed_batch()
    data = batch.to_dict()
    assert all(isinstance(v, (torch.Tensor, list, dict, int)) for v in data.values())
    assert data["score_vocab"][4] == [32, 47] and data["kind"][4] == "t2i" and data["total"] == batch.total
    for copy in (RolloutBatch.from_dict(data), pickle.loads(pickle.dumps(batch))):
        assert torch.equal(copy.input_ids, batch.input_ids) and copy.score_vocab == batch.score_vocab
        assert copy.uid == batch.uid and copy.rewards == batch.rewards
    with pytest.raises(ValueError, match=r"unknown keys \['extra'\], missing keys \['uid'\]"):
        RolloutBatch.from_dict({**{k: v for k, v in data.items() if k != "uid"}, "extra": 1})


def _broken(batch: RolloutBatch, **changes) -> RolloutBatch:
    return dataclasses.replace(batch, **changes)


def _edit(tensor: torch.Tensor, index, value) -> torch.Tensor:
    out = tensor.clone()
    out[index] = value
    return out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: {"input_ids": b.input_ids.int()}, "input_ids: need a \\[B, T\\] long tensor"),
        (lambda b: {"attention_mask": b.attention_mask[:, 1:]}, "attention_mask: need a \\[4, 14\\]"),
        (lambda b: {"reveal_step": b.reveal_step.float()}, "reveal_step: need a"),
        (lambda b: {"response_start": b.response_start[:2]}, "response_start: need a \\[4\\] long tensor"),
        (lambda b: {"uid": b.uid[:3]}, "uid: need a list with one entry per row \\(4\\)"),
        (lambda b: {"response_end": _edit(b.response_end, 1, 99)}, "row 1: response span \\[6, 99\\)"),
        (lambda b: {"scored_mask": _edit(b.scored_mask, (2, 1), True)},
         "row 2, column 1: scored_mask is True outside the response span"),
        (lambda b: {"attention_mask": _edit(b.attention_mask, (0, 9), False)},
         "row 0, column 9: attention_mask is False inside the response span"),
        (lambda b: {"protected_mask": _edit(b.protected_mask, (3, 7), True)},
         "row 3, column 7: protected_mask is True inside the response span"),
        (lambda b: {"reveal_step": _edit(b.reveal_step, (1, 6), -1)}, "row 1, column 6: scored token has reveal_step"),
        (lambda b: {"kind": ["text", "audio", "text", "text"]}, "kind\\[1\\] = 'audio': need one of"),
        (lambda b: {"score_vocab": [None, (5, 5), None, None]}, "score_vocab\\[1\\] = \\(5, 5\\)"),
        (lambda b: {"score_vocab": [None, None, (32, 47), None]},
         "row 2: scored token id \\d+ is outside score_vocab \\[32, 47\\)"),
        (lambda b: {"uid": ["a", 7, "b", "b"]}, "uid\\[1\\] = 7: need a str"),
        (lambda b: {"sample_index": [0, -1, 0, 1]}, "sample_index\\[1\\] = -1: need a non-negative int"),
        (lambda b: {"policy_version": [0, 0, True, 0]}, "policy_version\\[2\\] = True"),
        (lambda b: {"task": ["text", "", "text", "text"]}, "task\\[1\\] = '': need a non-empty str"),
        (lambda b: {"prompt": ["q", "q", None, "q"]}, "prompt\\[2\\] = None: need a str \\(or None in every row"),
        (lambda b: {"response": ["r", None, None, None]}, "response\\[1\\] = None: need a str \\(or None in every"),
        (lambda b: {"response": ["r", b"r", "r", "r"]}, "response\\[1\\] = b'r': need a str"),
        (lambda b: {"answer": [None, 4, None, None]}, "answer\\[1\\] = 4: need a str or None"),
        (lambda b: {"image": [None, None, np.zeros((2, 2, 3), np.uint8), None]},
         "image\\[2\\]: a text row has no image, got ndarray"),
        (lambda b: {"kind": ["text", "t2i", "text", "text"], "image": [None, np.zeros((2, 2), np.uint8), None, None]},
         "image\\[1\\]: need None or an H x W x 3 uint8 array, got ndarray shape=\\(2, 2\\) dtype=uint8"),
        (lambda b: {"kind": ["mmu"] * 4, "image": [None, None, None, np.zeros((2, 2, 3), np.float32)]},
         "image\\[3\\]: need None or an H x W x 3 uint8 array, got ndarray shape=\\(2, 2, 3\\) dtype=float32"),
        (lambda b: {"meta": [None, {}, [], None]}, "meta\\[2\\] = \\[\\]: need a dict or None"),
        (lambda b: {"forwards": [4, 0, None, 4]}, "forwards\\[1\\] = 0: need None or a positive int"),
        (lambda b: {"forwards": [4, True, None, 4]}, "forwards\\[1\\] = True: need None or a positive int"),
        (lambda b: {"total": [1.0, float("inf"), 0.0, 0.0]}, "total\\[1\\] = inf: need a finite number or None"),
        (lambda b: {"total_reason": [None, "overflow", None, None]},
         "total_reason\\[1\\] = 'overflow' with total\\[1\\] = 1.0: need None, or a str \\(why\\) where the total"),
        (lambda b: {"total": [1.0, None, 1.0, 1.0], "total_reason": [None, 7, None, None]},
         "total_reason\\[1\\] = 7 with total\\[1\\] = None"),
        (lambda b: {"total": [1.0] * 3}, "total: need a list with one entry per row \\(4\\)"),
        (lambda b: {"reward_reasons": {}}, "reward_reasons has the terms \\[\\], rewards has \\['correctness'\\]"),
        (lambda b: {"reward_reasons": [None] * 4}, "reward_reasons: need a dict of reward term -> per-row list"),
        (lambda b: {"reward_reasons": {"correctness": [None] * 3}},
         "reward_reasons\\['correctness'\\]: need a list with one value per row \\(4\\)"),
        (lambda b: {"rewards": {"correctness": [1.0, None, 1.0, 1.0]}},
         "reward_reasons\\['correctness'\\]\\[1\\] = None with rewards\\['correctness'\\]\\[1\\] = None: need a str"),
        (lambda b: {"reward_reasons": {"correctness": [None, "absent", None, None]}},
         "reward_reasons\\['correctness'\\]\\[1\\] = 'absent' with rewards\\['correctness'\\]\\[1\\] = 1.0"),
        (lambda b: {"sample_index": [0, 0, 0, 1]}, "\\(uid, sample_index\\) \\('a', 0\\) appears more than once"),
        (lambda b: {"rewards": {"correctness": [1.0]}}, "rewards\\['correctness'\\]: need a list with one value"),
        (lambda b: {"rewards": {"correctness": [1.0, float("nan"), 0.0, 0.0]}},
         "rewards\\['correctness'\\]\\[1\\] = nan: need a finite number or None"),
    ],
)
def test_validate_names_the_culprit(kit, change, message):
    batch = kit.text_batch({"a": 2, "b": 2})
    with pytest.raises(ValueError, match=message):
        _broken(batch, **change(batch)).validate()


def test_constructor_and_concat_errors(kit):
    seqs = torch.full((2, 6), 9)
    reveal = torch.zeros(2, 3, dtype=torch.long)
    common = {"eos_ids": [kit.EOS], "kind": "text", "uid": ["a", "a"], "sample_index": [0, 1], "policy_version": 0}
    with pytest.raises(ValueError, match="need shapes \\[B, T\\] and \\[B, L\\] with the same B"):
        RolloutBatch.from_sampler(seqs, reveal[:1], [3, 3], **common)
    with pytest.raises(ValueError, match="prompt_width 4: the response of length 3 must fit"):
        RolloutBatch.from_sampler(seqs, reveal, [3, 3], prompt_width=4, **common)
    with pytest.raises(ValueError, match="prompt_lengths \\[3, 5\\]: need 2 values in \\[0, 3\\]"):
        RolloutBatch.from_sampler(seqs, reveal, [3, 5], **common)
    a = RolloutBatch.from_sampler(seqs, reveal, [3, 3], **common)
    with pytest.raises(ValueError, match="concat: need at least one batch"):
        RolloutBatch.concat([])
    with pytest.raises(ValueError, match="concat: batch 1 pads with 5, batch 0 with 0"):
        RolloutBatch.concat([a, _broken(a, pad_token_id=5)])
    with pytest.raises(ValueError, match="concat: batch 1 has reward terms \\['x'\\], batch 0 has \\[\\]"):
        RolloutBatch.concat([a, _broken(a, rewards={"x": [1.0, 1.0]})])
    # the parts are valid on their own; only their union repeats a key (concat checks what the union can break)
    with pytest.raises(ValueError, match="\\(uid, sample_index\\) \\('a', 0\\) appears more than once"):
        RolloutBatch.concat([a, a.select([0])])
    assert RolloutBatch.concat([a.select([1]), a.select([0])]).sample_index == [1, 0]


# ------------------------------------------------ repeated delivery (issue 18, finding 10)
def _same_batch(x: RolloutBatch, y: RolloutBatch) -> bool:
    return all(torch.equal(getattr(x, n), getattr(y, n)) for n in ("input_ids", "attention_mask", "response_start",
                                                                   "response_end", "scored_mask", "protected_mask",
                                                                   "reveal_step")) and same_columns(x, y)


def test_a_shard_delivered_twice_gives_the_batch_of_one_delivery(kit):
    first = kit.text_batch({"a": 2, "b": 2}, seed=0)
    second = kit.text_batch({"c": 3}, seed=1)
    again = pickle.loads(pickle.dumps(first))  # what a retried Ray task hands back: an equal copy
    kept, dropped = drop_repeated_rows([first, second, again])
    assert dropped == 4 and [b.uid for b in kept] == [["a", "a", "b", "b"], ["c", "c", "c"]]
    assert _same_batch(RolloutBatch.concat(kept), RolloutBatch.concat([first, second]))
    assert drop_repeated_rows([first, second]) == ([first, second], 0)  # nothing repeated: the same objects


def test_a_partly_repeated_shard_keeps_its_new_rows(kit):
    first = kit.text_batch({"a": 2, "b": 2}, seed=0)
    overlap = RolloutBatch.concat([first.select([2, 3]), kit.text_batch({"c": 1}, seed=2)])  # b's rows again + c
    kept, dropped = drop_repeated_rows([first, overlap])
    assert dropped == 2 and [b.uid for b in kept] == [["a", "a", "b", "b"], ["c"]]
    assert _same_batch(kept[1], kit.text_batch({"c": 1}, seed=2))


def test_left_padding_does_not_make_a_repeat_differ(kit):
    narrow = kit.text_batch({"t": 2}, seed=0, eos_at={0: 3})  # width 14
    wide = kit.mixed_batch().select([0, 1])  # the same two rows, re-padded to width 16 by concat
    assert (narrow.seq_len, wide.seq_len) == (14, 16)
    kept, dropped = drop_repeated_rows([narrow, wide])
    assert dropped == 2 and kept == [narrow]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda b: {"input_ids": _edit(b.input_ids, (1, -1), 5)}, "input_ids"),
        (lambda b: {"reveal_step": _edit(b.reveal_step, (1, -1), 0)}, "reveal_step"),
        (lambda b: {"response_start": _edit(b.response_start, 1, int(b.response_start[1]) - 1)}, "response_start"),
        (lambda b: {"policy_version": [0, 3]}, "policy_version"),
        (lambda b: {"image": [None, np.ones((2, 2, 3), dtype=np.uint8)]}, "image"),
        (lambda b: {"meta": [None, {"pixels": np.ones((2, 2), dtype=np.uint8)}]}, "meta"),
        (lambda b: {"response": ["", "another"]}, "response"),
        (lambda b: {"total": [1.0, 0.5]}, "total"),
        (lambda b: {"rewards": {"correctness": [1.0, 0.0]}}, "rewards['correctness']"),
        (lambda b: {"reward_reasons": {"correctness": [None, "timeout"]}}, "reward_reasons['correctness']"),
        (lambda b: {"rewards": {"format": [1.0, 1.0]}}, "rewards (terms)"),  # whole-batch changes: row 0 differs
        (lambda b: {"pad_token_id": 7}, "pad_token_id"),
    ],
)
def test_a_repeated_key_with_a_different_row_is_an_error(kit, change, field):
    row = 0 if field in ("rewards (terms)", "pad_token_id") else 1
    import re

    first = kit.text_batch({"a": 2}, seed=0)  # rewards {"correctness": [1.0, 1.0]}
    first = dataclasses.replace(first, kind=["mmu", "mmu"], image=[None, np.zeros((2, 2, 3), dtype=np.uint8)],
                                meta=[None, {"pixels": np.zeros((2, 2), dtype=np.uint8)}]).validate()
    retry = dataclasses.replace(first, **change(first))
    assert drop_repeated_rows([first, pickle.loads(pickle.dumps(first))])[1] == 2  # arrays in image, meta compare
    with pytest.raises(ValueError, match=re.escape(
            f"(uid, sample_index) ('a', {row}) is delivered twice with different rows (batch 0 row {row}, batch 1 row {row}: "
            f"{field} differs); a repeated delivery must be identical")):
        drop_repeated_rows([first, retry])


def test_row_data_equality_by_hand():
    from rl.batch import _same

    nan = float("nan")
    assert _same({"x": [1, (2.0, nan)]}, {"x": [1, (2.0, nan)]}) and not _same([1], (1,)) and not _same(1, 1.0)
    assert _same(torch.ones(2), torch.ones(2)) and not _same(torch.ones(2), torch.ones(2, dtype=torch.float64))
    assert not _same(torch.ones(2), np.ones(2)) and not _same(np.ones(2), np.ones(3))
    assert _same(np.array([nan]), np.array([nan])) and not _same({"a": 1}, {"b": 1}) and not _same({"a": 1}, [1])
