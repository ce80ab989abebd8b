"""`python -m jobs.sample` (the README's main command until the demo policy lands) runs end to end."""

from __future__ import annotations

import json
from collections import Counter

from jobs.sample import main, reveal_order


def test_sample_tiny_twin_and_saved_checkpoint(tmp_path, capsys):
    import model
    from model.tiny import tiny_model

    out = tmp_path / "tiny"
    assert main(["--model", "tiny", "--out", str(out), "--gen-length", "8", "--steps", "4", "--block-length", "4"]) == 0
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["What is 12 + 7 * 3?", "Compute (8 - 3) * 4.", "If x = 5, what is 2x + 1?"]
    for row in rows:
        assert len(row["token_ids"]) == 8
        # 4 steps over 8 tokens in 2 blocks of 4: every step reveals exactly 2 tokens, block 0 first.
        assert Counter(row["reveal_step"]) == {0: 2, 1: 2, 2: 2, 3: 2}
        assert max(row["reveal_step"][:4]) < min(row["reveal_step"][4:])
    assert json.loads((out / "args.json").read_text())["gen_length"] == 8
    assert "wrote" in capsys.readouterr().out

    saved = model.save(tiny_model(seed=0), tmp_path / "ckpt")
    out2 = tmp_path / "ckpt-run"
    assert main(["--model", str(saved), "--out", str(out2), "--gen-length", "8", "--steps", "4",
                 "--block-length", "4", "--prompt", "What is 2 + 2?"]) == 0
    (again,) = [json.loads(line) for line in (out2 / "samples.jsonl").read_text().splitlines()]
    assert again["prompt"] == "What is 2 + 2?" and len(again["token_ids"]) == 8


def test_reveal_order_lists_tokens_by_step():
    assert reveal_order(["a", "b", "c"], [2, 0, 1]) == "0:'b' 1:'c' 2:'a'"


def test_default_is_the_shipped_policy_on_heldout_problems(tmp_path):
    out = tmp_path / "demo"
    assert main(["--out", str(out), "--gen-length", "8", "--steps", "4", "--block-length", "4"]) == 0
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    heldout = [json.loads(line) for line in open("data/arithmetic/heldout.jsonl").read().splitlines()[:3]]
    assert [(r["prompt"], r["answer"]) for r in rows] == [(h["prompt"], h["answer"]) for h in heldout]
    assert json.loads((out / "args.json").read_text())["model"] == "demo"


def test_cache_and_threshold_flags_reach_the_sampler(tmp_path, capsys):
    import model
    from model.templates import chat_prompt_ids, special_ids
    from model.tiny import tiny_model

    out = tmp_path / "fast"
    assert main(["--model", "tiny", "--out", str(out), "--gen-length", "8", "--steps", "8", "--block-length", "4",
                 "--temperature", "0.7", "--cache", "dual", "--threshold", "0.2", "--prompt", "What is 2 + 2?"]) == 0
    (row,) = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    loaded = tiny_model(seed=0)
    special = special_ids(loaded.tokenizer)
    expected = model.generate_text(loaded.network.eval(), [chat_prompt_ids(loaded.tokenizer, "What is 2 + 2?",
                                                                            thinking=True)],
                                   gen_length=8, steps=8, block_length=4, temperature=0.7, cache="dual",
                                   threshold=0.2, mask_id=special.mask, pad_id=special.pad, seed=0)
    assert row["token_ids"] == expected.sequences[0, -8:].tolist()
    assert row["reveal_step"] == expected.reveal_step[0].tolist()
    assert f"{expected.forwards} forward passes" in capsys.readouterr().out
    assert json.loads((out / "args.json").read_text())["cache"] == "dual"


def test_a_model_that_is_not_a_checkpoint_exits_2_naming_the_flag(tmp_path, capsys):
    assert main(["--model", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (f"error: --model: {str(tmp_path)!r} has no config.json; give a checkpoint "
                                       "directory in the published format, or 'demo' / 'tiny' / 'tiny-mmada'\n")
    assert not (tmp_path / "out").exists()
