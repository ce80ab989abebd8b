"""jobs/eval.py: the pass@k estimator, an end-to-end eval of the shipped demo policy checked against an
independent loop, settings from the config tree (`--config`, `--set`, the short flags), and the bad-input errors
(exit code 2, the key or file named). That it repeats the training run's evaluation: tests/jobs/test_heldout.py."""

from __future__ import annotations

import itertools
import json
import random
import re
from math import comb
from pathlib import Path

import pytest

from jobs.eval import main
from jobs.evaluate import default_ks, pass_at_k, summarise

REPO = Path(__file__).resolve().parents[2]
HELDOUT = REPO / "data" / "arithmetic" / "heldout.jsonl"


def test_pass_at_k_hand_values():
    # n=4, c=1: pass@1 = 1/4; pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5; pass@4 = 1 (n - c = 3 < 4)
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)
    assert pass_at_k(4, 1, 4) == 1.0
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    # no correct sample: 0 for every k; all correct: 1
    assert pass_at_k(8, 0, 8) == 0.0
    assert pass_at_k(3, 3, 1) == 1.0


def test_pass_at_k_matches_enumeration_over_subsets():
    rng = random.Random(0)
    for _ in range(40):
        n = rng.randint(1, 8)
        c = rng.randint(0, n)
        k = rng.randint(1, n)
        outcomes = [True] * c + [False] * (n - c)
        subsets = list(itertools.combinations(outcomes, k))
        expected = sum(any(subset) for subset in subsets) / len(subsets)
        assert len(subsets) == comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12), (n, c, k)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="k: got 5 with n=4"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c: got 5 correct of n=4"):
        pass_at_k(4, 5, 1)


def test_default_ks_are_powers_of_two_and_k():
    assert default_ks(1) == [1]
    assert default_ks(4) == [1, 2, 4]
    assert default_ks(6) == [1, 2, 4, 6]


def test_summarise_averages_over_problems_and_tasks():
    def row(uid, task, correct, fmt=1.0, tokens=10, forwards=4):
        return {"uid": uid, "task": task, "correct": correct, "format": fmt, "response_tokens": tokens,
                "sampler_forwards": forwards}

    rows = ([row("a", "text", 1.0)] + [row("a", "text", 0.0, fmt=0.0)] * 3  # c=1 of 4
            + [row("b", "text", 1.0)] * 2 + [row("b", "text", None, tokens=20)] * 2  # c=2 of 4 (None: wrong)
            + [row("m", "mmu", 0.0, forwards=8)] * 4)  # c=0 of 4
    summary = summarise(rows, samples=4, ks=[1, 2, 4])
    # pass@2: a = 1 - C(3,2)/C(4,2) = 1/2, b = 1 - C(2,2)/C(4,2) = 5/6, m = 0 -> mean 4/9
    assert summary["pass_at_k"]["1"] == pytest.approx((0.25 + 0.5 + 0.0) / 3)
    assert summary["pass_at_k"]["2"] == pytest.approx((0.5 + 5 / 6) / 3)
    assert summary["pass_at_k"]["4"] == pytest.approx(2 / 3)
    assert summary["format_rate"] == pytest.approx(9 / 12)
    assert summary["unscorable"] == 2
    assert summary["mean_response_tokens"] == pytest.approx((10 * 10 + 2 * 20) / 12)
    assert summary["mean_sampler_forwards"] == pytest.approx((8 * 4 + 4 * 8) / 12)
    assert summary["n_problems"] == 3
    assert summary["per_task"]["text"]["pass_at_k"]["2"] == pytest.approx((0.5 + 5 / 6) / 2)
    assert summary["per_task"]["mmu"] == {"n_problems": 1, "pass_at_k": {"1": 0.0, "2": 0.0, "4": 0.0},
                                          "format_rate": 1.0, "unscorable": 0, "mean_response_tokens": 10.0,
                                          "mean_sampler_forwards": 8.0}


def independent_pass_at_1(limit: int) -> float:
    """Greedy docs/demo.md settings, a \\boxed{} regex and an integer compare; no jobs.eval code."""
    import torch

    import model
    from model.resolve import DEMO_POLICY
    from model.templates import chat_prompt_ids, special_ids

    loaded = model.load(DEMO_POLICY)
    special = special_ids(loaded.tokenizer)
    rows = [json.loads(line) for line in HELDOUT.read_text().splitlines()[:limit]]
    prompts = [chat_prompt_ids(loaded.tokenizer, row["prompt"], thinking=False) for row in rows]
    with torch.no_grad():
        sequences, _, _ = model.generate_text(loaded.network.eval(), prompts, gen_length=40, steps=20, block_length=8,
                                           temperature=0.0, mask_id=special.mask, pad_id=special.pad, seed=0)
    correct = 0
    for row, ids in zip(rows, sequences[:, -40:].tolist()):
        found = re.findall(r"\\boxed\{\s*(-?\d+)\s*\}", loaded.tokenizer.decode(ids, skip_special_tokens=True))
        correct += bool(found) and int(found[-1]) == int(row["answer"])
    return correct / len(rows)


def test_demo_policy_eval_matches_an_independent_loop(tmp_path, capsys):
    out = tmp_path / "eval" / "summary.json"
    # the demo config's evaluation settings (gen 40, 20 steps, block 8, eval.temperature 0) on the gold-SFT policy
    assert main(["--model", "demo", "--limit", "16", "--set", "eval.batch_size=16", "--set", "eval.torch_threads=1",
                 "--out", str(out)]) == 0
    expected = independent_pass_at_1(16)
    summary = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out.split("\nwrote ")[0]) == summary
    assert summary["n_problems"] == 16 and summary["samples_per_problem"] == 1
    assert summary["pass_at_k"] == {"1": pytest.approx(expected)}
    assert 0.0 <= summary["format_rate"] <= 1.0
    assert summary["thinking"] is False  # the demo config: the shipped policies were trained without it
    assert summary["sampler"] == {"gen_length": 40, "steps": 20, "block_length": 8, "temperature": 0.0,
                                  "remasking": "low_confidence", "cfg_scale": 0.0, "cache": "none",
                                  "threshold": None}
    assert summary["mean_sampler_forwards"] == 20  # the fixed schedule: one forward per step
    samples = [json.loads(line) for line in (tmp_path / "eval" / "summary.samples.jsonl").read_text().splitlines()]
    assert len(samples) == 16 and {s["sample_index"] for s in samples} == {0}
    assert sum(s["correct"] for s in samples) / 16 == pytest.approx(expected)
    assert 0 < summary["mean_response_tokens"] <= 40


def test_config_and_set_reach_the_sampler_and_samples_get_distinct_seeds(tmp_path):
    config = tmp_path / "train.yaml"
    config.write_text(f"data:\n  train: {HELDOUT}\n  eval: {HELDOUT}\n  thinking: false\nmodel:\n  path: tiny\n"
                      "rollout:\n  sampler:\n    gen_length: 16\n    steps: 4\n    block_length: 8\n"
                      "    temperature: 0.3\neval:\n  temperature: 1.0\n  torch_threads: 1\n")
    out = tmp_path / "s.json"
    assert main(["--config", str(config), "--samples", "2", "--limit", "3", "--set", "rollout.sampler.steps=8",
                 "--set", "eval.pass_at_k=[2]", "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["model"] == "tiny" and summary["data"] == str(HELDOUT) and summary["thinking"] is False
    # steps from --set, temperature from eval.temperature (not rollout.sampler's 0.3), the rest from rollout.sampler
    assert summary["sampler"] == {"gen_length": 16, "steps": 8, "block_length": 8, "temperature": 1.0,
                                  "remasking": "low_confidence", "cfg_scale": 0.0, "cache": "none",
                                  "threshold": None}
    assert set(summary["pass_at_k"]) == {"2"}  # eval.pass_at_k
    rows = [json.loads(line) for line in out.with_name("s.samples.jsonl").read_text().splitlines()]
    assert [(r["uid"], r["sample_index"]) for r in rows] == [
        (f"arith-heldout-0000{i}", k) for i in range(3) for k in range(2)]
    assert {r["sampler_forwards"] for r in rows} == {8}  # the sampler ran 8 steps: one forward each
    # temperature 1 on a random tiny model: the two samples of a problem come from different seeds
    assert any(rows[2 * i]["response"] != rows[2 * i + 1]["response"] for i in range(3))


@pytest.mark.parametrize(("argv", "culprit"), [
    (["--data", "/nonexistent/held.jsonl"], "data.eval: data file '/nonexistent/held.jsonl' does not exist"),
    (["--samples", "4", "--set", "eval.temperature=0.5", "--set", "eval.pass_at_k=[1, 8]"],
     "eval.pass_at_k: [1, 8]; every k must be in [1, samples=4]"),
    (["--set", "eval.pass_at_k=one"], "eval.pass_at_k: expected a list, got 'one'"),
    (["--model", "/nonexistent/ckpt"], "model.path: '/nonexistent/ckpt' is neither a checkpoint directory"),
    (["--set", "rollout.sampler.block_length=7"],
     "rollout.sampler.gen_length: 40 is not a multiple of block_length=7"),
    (["--config", "/nonexistent/train.yaml"], "config file '/nonexistent/train.yaml' does not exist"),
    (["--samples", "0"], "eval.samples: 0; need at least 1"),
    (["--samples", "2"], "eval.samples: 2 with eval.temperature 0 and low-confidence remasking"),
    (["--set", "rollout.sampler.threshold=1.5"], "rollout.sampler.threshold: got 1.5; expected a confidence in (0, 1]"),
    (["--set", "eval.temperature=.inf"], "eval.temperature: got inf; expected a finite number"),
    (["--limit", "0"], "eval.limit: 0; use a positive number"),
    (["--limit", "all"], "eval.limit: 'all' is not a valid int | null"),
    (["--set", "eval.batch_size=0"], "eval.batch_size: 0; need at least 1"),
    (["--set", "eval.torch_threads=0"], "eval.torch_threads: 0; need at least 1"),
    (["--set", "eval.dtype=fp16"], "eval.dtype: 'fp16' is not one of the valid choices 'fp32', 'bf16'"),
    (["--set", "eval.seed=1"], "eval.seed: unknown key; valid keys here: batch_size, device, dtype, every, limit"),
    (["--device", "gpu"], "eval.device: 'gpu' is not a device; use 'cpu', 'cuda', 'cuda:N'"),
    (["--device", "cuda:99", "--limit", "1"], "eval.device: 'cuda:99', but torch sees"),  # when the job starts
    (["--set", "data.eval=null"], "eval.every: 10 needs a held-out file"),
    (["--set", "data.eval=null", "--set", "eval.every=0"], "data.eval: no held-out file to evaluate on"),
])
def test_bad_inputs_exit_2_naming_the_culprit(argv, culprit, capsys):
    assert main(argv) == 2
    assert culprit in capsys.readouterr().err


def test_directory_that_is_not_a_checkpoint_exits_2(tmp_path, capsys):
    assert main(["--model", str(tmp_path), "--limit", "1"]) == 2
    err = capsys.readouterr().err
    assert f"model.path: {str(tmp_path)!r}" in err and "config.json" in err


def test_bad_config_and_data_without_good_rows_exit_2(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("rollout:\n  sampler:\n    remasking: sideways\n")
    assert main(["--config", str(config)]) == 2
    assert "rollout.sampler.remasking: 'sideways' is not one of the valid choices" in capsys.readouterr().err
    data = tmp_path / "bad.jsonl"
    data.write_text('{"answer": "3"}\n')
    assert main(["--data", str(data), "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "data.eval: no usable rows" in err and f"{data}:1" in err and "missing 'prompt'" in err
