"""`python -m jobs.sample` runs end to end on the config tree: `--set rollout.sampler.*` and `eval.*` reach the
sampler, the prompts are `sample.prompts` or the held-out problems, and bad input exits 2 naming the key."""

from __future__ import annotations

import json
from collections import Counter

from jobs.config import load_config
from jobs.sample import main, reveal_order

SHORT = ["--set", "rollout.sampler.gen_length=8", "--set", "rollout.sampler.steps=4",
         "--set", "rollout.sampler.block_length=4"]
HELDOUT = "data/arithmetic/heldout.jsonl"  # the demo config's data.eval


def heldout_pairs(n: int) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in open(HELDOUT).read().splitlines()[:n]]
    return [(row["prompt"], row["answer"]) for row in rows]


def test_sample_tiny_twin_and_saved_checkpoint(tmp_path, capsys):
    import model
    from model.tiny import tiny_model

    out = tmp_path / "tiny"
    assert main(["--model", "tiny", "--out", str(out), *SHORT]) == 0
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["answer"]) for r in rows] == heldout_pairs(3)  # no --prompt: data.eval's first three
    for row in rows:
        assert len(row["token_ids"]) == 8
        # 4 steps over 8 tokens in 2 blocks of 4: every step reveals exactly 2 tokens, block 0 first.
        assert Counter(row["reveal_step"]) == {0: 2, 1: 2, 2: 2, 3: 2}
        assert max(row["reveal_step"][:4]) < min(row["reveal_step"][4:])
    resolved = load_config(out / "config.yaml")  # the resolved tree, loadable with --config
    assert (resolved.model.path, resolved.rollout.sampler.gen_length, resolved.sample.out) == ("tiny", 8, str(out))
    assert "wrote" in capsys.readouterr().out

    saved = model.save(tiny_model(seed=0), tmp_path / "ckpt")
    out2 = tmp_path / "ckpt-run"
    assert main(["--model", str(saved), "--out", str(out2), *SHORT, "--prompt", "What is 2 + 2?",
                 "--prompt", "Say \"yes\", then stop."]) == 0
    again = [json.loads(line) for line in (out2 / "samples.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["answer"]) for r in again] == [("What is 2 + 2?", None), ('Say "yes", then stop.', None)]
    assert all(len(r["token_ids"]) == 8 for r in again)


def test_reveal_order_lists_tokens_by_step():
    assert reveal_order(["a", "b", "c"], [2, 0, 1]) == "0:'b' 1:'c' 2:'a'"


def test_default_is_the_demo_configs_policy_on_heldout_problems(tmp_path):
    out = tmp_path / "demo"
    assert main(["--out", str(out), *SHORT]) == 0
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [(r["prompt"], r["answer"]) for r in rows] == heldout_pairs(3)
    resolved = load_config(out / "config.yaml")
    assert resolved.model.path == "model/assets/sign_slip_policy" and resolved.data.thinking is False


def test_set_sampler_knobs_reach_the_sampler(tmp_path, capsys):
    """cache, threshold and gen_length from rollout.sampler, the temperature from eval.temperature (as the held-out
    evaluation samples), thinking from data.thinking: the same tokens as calling the sampler with them directly."""
    import model
    from model.templates import chat_prompt_ids, special_ids
    from model.tiny import tiny_model

    out = tmp_path / "fast"
    assert main(["--model", "tiny", "--out", str(out), "--set", "rollout.sampler.gen_length=8",
                 "--set", "rollout.sampler.steps=8", "--set", "rollout.sampler.block_length=4",
                 "--set", "rollout.sampler.temperature=0.1", "--set", "eval.temperature=0.7",
                 "--set", "rollout.sampler.cache=dual", "--set", "rollout.sampler.threshold=0.2",
                 "--set", "data.thinking=true", "--set", "run.seed=5", "--prompt", "What is 2 + 2?"]) == 0
    (row,) = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    loaded = tiny_model(seed=5)  # model 'tiny' is the tiny twin drawn from run.seed
    special = special_ids(loaded.tokenizer)
    expected = model.generate_text(loaded.network.eval(), [chat_prompt_ids(loaded.tokenizer, "What is 2 + 2?",
                                                                            thinking=True)],
                                   gen_length=8, steps=8, block_length=4, temperature=0.7, cache="dual",
                                   threshold=0.2, mask_id=special.mask, pad_id=special.pad, seed=5)
    assert row["token_ids"] == expected.sequences[0, -8:].tolist()
    assert row["reveal_step"] == expected.reveal_step[0].tolist()
    assert f"{expected.forwards} forward passes" in capsys.readouterr().out
    assert load_config(out / "config.yaml").rollout.sampler.cache == "dual"


def test_a_model_that_is_not_a_checkpoint_exits_2_naming_the_key(tmp_path, capsys):
    assert main(["--model", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (f"error: model.path: {str(tmp_path)!r} has no config.json; give a checkpoint "
                                       "directory in the published format, or 'demo' / 'tiny' / 'tiny-mmada'\n")
    assert not (tmp_path / "out").exists()


def test_bad_settings_and_nothing_to_ask_exit_2_naming_the_key(tmp_path, capsys):
    assert main(["--set", "sample.prompt=hi", "--out", str(tmp_path / "a")]) == 2
    assert "sample.prompt: unknown key; valid keys here: out, prompts" in capsys.readouterr().err
    assert main(["--set", "rollout.sampler.steps=0", "--out", str(tmp_path / "b")]) == 2
    assert "rollout.sampler.steps: " in capsys.readouterr().err
    assert main(["--set", "data.eval=null", "--set", "eval.every=0", "--out", str(tmp_path / "c")]) == 2
    assert "sample.prompts: empty and data.eval is null" in capsys.readouterr().err
    assert main(["--device", "cuda:99", "--out", str(tmp_path / "d")]) == 2  # found when the policy is loaded
    assert "eval.device: 'cuda:99', but torch sees " in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "abcd")
