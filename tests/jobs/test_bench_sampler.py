"""`python -m jobs.bench sampler` runs and reports what it claims (a smoke test; timings are never asserted)."""

from __future__ import annotations

import json

import pytest

from jobs.bench.__main__ import main as bench_main


def test_sampler_bench_smoke(tmp_path):
    out = tmp_path / "sampler.json"
    assert bench_main(["sampler", "--sizes", "tiny", "--temperatures", "0", "--batch", "2", "--gen-length", "16",
                       "--steps", "8", "--block-length", "8", "--repeats", "1", "--out", str(out)]) == 0
    (row,) = json.loads(out.read_text())["results"]
    assert row["n_forwards"] == 8  # one forward per denoising step, nothing revealed without one
    assert abs(row["tokens_per_s"] * row["sampler_s"] - 2 * 16) < 1e-6  # batch x gen_length tokens
    assert row["overhead_ratio"] > 0 and row["inner_ratio"] > 0


def test_unknown_benchmark_lists_the_valid_ones(capsys):
    assert bench_main(["nope"]) == 2
    assert "available: sampler, rewards, pipeline" in capsys.readouterr().err


def test_modes_side_by_side_on_the_same_prompts(tmp_path):
    import torch

    from jobs.bench.sampler import build_network, make_prompts
    from model.sampling import generate_text

    out = tmp_path / "modes.json"
    assert bench_main(["sampler", "--sizes", "tiny", "--temperatures", "0", "--modes", "dual,dual@0.9", "--batch",
                       "2", "--gen-length", "16", "--steps", "8", "--block-length", "8", "--policy-eval", "4",
                       "--policy-batch", "4", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    none, dual, fast = results["modes"]
    assert [none["mode"], dual["mode"], fast["mode"]] == ["none", "dual", "dual@0.9"]  # none first: the reference
    assert none["forwards"] == dual["forwards"] == 8  # fixed schedule: one forward per step, cached or not
    assert 2 <= fast["forwards"] <= 16  # threshold: at least one forward per block, at most one per token
    for row in (none, dual, fast):
        assert row["forwards_per_token"] == row["forwards"] / 16
        assert abs(row["tokens_per_s"] * row["sampler_s"] - 2 * 16) < 1e-6
    assert none["agreement"] == 1.0 and none["speed_ratio"] == 1.0

    # agreement is the fraction of response tokens equal to the exact sampler's, recomputed here
    network, mask_id, pad_id = build_network("tiny")
    prompts = make_prompts(2, 64, network.config.vocab_size, mask_id)
    knobs = dict(gen_length=16, steps=8, block_length=8, temperature=0.0, mask_id=mask_id, pad_id=pad_id)
    with torch.no_grad():
        exact = generate_text(network.eval(), prompts, **knobs).sequences[:, -16:]
        cached = generate_text(network, prompts, **knobs, cache="dual", threshold=0.9).sequences[:, -16:]
    assert fast["agreement"] == (exact == cached).float().mean().item()

    from jobs.eval import main as eval_main

    policy = results["policy"]
    assert [row["mode"] for row in policy] == ["none", "dual", "dual@0.9"]
    summary = tmp_path / "eval.json"
    assert eval_main(["--model", "demo", "--limit", "4", "--set", "eval.batch_size=4", "--out", str(summary)]) == 0  # demo policy, greedy
    assert policy[0]["pass_at_1"] == json.loads(summary.read_text())["pass_at_k"]["1"]
    assert policy[0]["forwards_per_token"] == policy[1]["forwards_per_token"] == 20 / 40  # 2 tokens a step
    assert 5 / 40 <= policy[2]["forwards_per_token"] <= 1  # >= one forward per block of 8, <= one per token
    for row in policy:
        assert row["points_vs_none"] == 100 * (row["pass_at_1"] - policy[0]["pass_at_1"])
        assert 0 <= row["same_response"] <= 1
    assert policy[0]["same_response"] == 1.0
    rows = [json.loads(line) for line in summary.with_name("eval.samples.jsonl").read_text().splitlines()]
    assert policy[0]["pass_at_1"] == sum(row["correct"] for row in rows) / 4


def test_the_policy_rows_sample_with_the_demo_configs_evaluation_sampler():
    """`policy_rows` reads the demo config (its held-out problems, `eval_sampler`, thinking, seed); the header
    jobs/bench/sampler.py prints over them ("greedy, gen 40, block 8, 20 steps") states these values."""
    from jobs.config import DEFAULT_CONFIG, load_config
    from jobs.heldout import eval_sampler

    cfg = load_config(DEFAULT_CONFIG)
    assert eval_sampler(cfg) == {"gen_length": 40, "steps": 20, "block_length": 8, "temperature": 0.0,
                                 "remasking": "low_confidence", "cfg_scale": 0.0, "cache": "none", "threshold": None}
    assert cfg.data.eval == "data/arithmetic/heldout.jsonl" and cfg.data.thinking is False and cfg.run.seed == 0


@pytest.mark.parametrize(("modes", "culprit"), [
    ("full", "--modes: 'full'; expected CACHE or CACHE@THRESHOLD with CACHE one of ['none', 'prefix', 'dual']"),
    ("dual@high", "--modes: 'dual@high'; the threshold after '@' must be a number in (0, 1]"),
    ("dual@1.5", "threshold: got 1.5; expected a confidence in (0, 1]"),
])
def test_bad_modes_are_refused(modes, culprit, capsys):
    with pytest.raises(SystemExit):
        bench_main(["sampler", "--modes", modes])
    assert culprit in capsys.readouterr().err


def test_policy_eval_needs_modes(capsys):
    with pytest.raises(SystemExit):
        bench_main(["sampler", "--policy-eval", "4"])
    assert "--policy-eval needs --modes" in capsys.readouterr().err
