"""Held-out evaluation during training (jobs/heldout.py) and its config section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.config import load_config
from jobs.configtree import ConfigError
from jobs.heldout import HeldoutEvaluator, eval_history, should_evaluate

REPO = Path(__file__).resolve().parents[2]
HELDOUT = REPO / "data/arithmetic/heldout.jsonl"


def test_schedule_is_start_every_and_end():
    assert [s for s in range(0, 11) if should_evaluate(s, every=4, last_step=10)] == [0, 4, 8, 10]
    assert [s for s in range(0, 11) if should_evaluate(s, every=0, last_step=10)] == [0, 10]


@pytest.mark.parametrize("settings, cli", [
    ([], []),  # greedy, one response per problem
    (["eval.temperature=0.8", "eval.samples=2"], ["--temperature", "0.8", "--samples", "2"]),  # the demo's
])
def test_evaluator_equals_jobs_eval_on_the_same_weights(tmp_path, settings, cli):
    """The driver's evaluation of a state dict gives exactly `python -m jobs.eval`'s numbers."""
    from jobs.eval import main as eval_main
    from model import load
    from model.tiny import tiny_model

    policy = load(REPO / "model/assets/demo_policy")
    cfg = load_config(REPO / "jobs/configs/demo.yaml", ["eval.limit=24", "eval.batch_size=10", *settings])
    samples = cfg.eval.samples
    evaluator = HeldoutEvaluator(cfg, policy.config, policy.tokenizer, tmp_path)
    metrics = evaluator.evaluate(7, policy.network.state_dict())
    out = tmp_path / "eval.json"
    assert eval_main(["--model", "demo", "--data", str(HELDOUT), "--limit", "24", "--batch-size", "10",
                      "--out", str(out), *cli]) == 0
    reference = json.loads(out.read_text())
    assert metrics["eval/pass@1"] == reference["pass_at_k"]["1"]
    assert metrics["eval/format_rate"] == reference["format_rate"]
    assert metrics["eval/problems"] == 24
    rows = [json.loads(line) for line in (tmp_path / "eval" / "step_7.jsonl").read_text().splitlines()]
    assert len(rows) == 24 * samples and {r["sample_index"] for r in rows} == set(range(samples))
    correct = sum(r["correct"] == 1.0 for r in rows)
    assert metrics["eval/pass@1"] == pytest.approx(correct / (24 * samples), abs=1e-12)  # pass@1 = mean of samples

    # other weights give other answers: the evaluator really uses the state dict it is given
    random_policy = tiny_model(seed=0, d_model=128, n_layers=4, n_heads=4, mlp_hidden_size=384)
    with pytest.raises(RuntimeError, match="do not match the policy config"):
        evaluator.evaluate(8, {"unexpected.weight": random_policy.network.state_dict()["model.transformer.wte.weight"]})


def test_eval_history_reads_the_evaluated_steps(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [
        {"step": 0, "eval/pass@1": 0.1}, {"step": 1, "loss/kl": 0.0}, {"step": 2, "eval/pass@1": 0.3, "loss/kl": 1.0}]))
    assert eval_history(path) == [{"step": 0, "eval/pass@1": 0.1}, {"step": 2, "eval/pass@1": 0.3}]
    assert eval_history(tmp_path / "missing.jsonl") == []


@pytest.mark.parametrize("override, message", [
    ("eval.every=-1", "eval.every: -1 is negative"),
    ("eval.limit=0", "eval.limit: 0"),
    ("eval.temperature=-0.5", "eval.temperature: -0.5 is negative"),
    ("eval.batch_size=0", "eval.batch_size: 0"),
    ("eval.samples=0", "eval.samples: 0; need at least 1"),
    ("eval.samples=4 eval.temperature=0", "eval.samples: 4 with eval.temperature 0 and low-confidence remasking"),
    ("eval.torch_threads=0", "eval.torch_threads: 0"),
])
def test_bad_eval_settings_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(REPO / "jobs/configs/demo.yaml", override.split())


def test_several_greedy_samples_are_fine_with_random_remasking():
    cfg = load_config(REPO / "jobs/configs/demo.yaml",
                      ["eval.samples=4", "eval.temperature=0", "rollout.sampler.remasking=random"])
    assert cfg.eval.samples == 4


def test_periodic_evaluation_needs_a_heldout_file():
    with pytest.raises(ConfigError, match="eval.every: 5 needs a held-out file; set data.eval"):
        load_config(REPO / "jobs/configs/demo.yaml", ["data.eval=null", "eval.every=5"])


def test_a_heldout_file_with_image_tasks_is_refused(tmp_path):
    from jobs.data import DataError
    from model import load

    rows = tmp_path / "mixed.jsonl"
    rows.write_text('{"uid": "a", "task": "text", "prompt": "Compute 1 + 1.", "answer": "2"}\n'
                    '{"uid": "b", "task": "t2i", "prompt": "a red circle"}\n')
    policy = load(REPO / "model/assets/demo_policy")
    cfg = load_config(REPO / "jobs/configs/demo.yaml", [f"data.eval={rows}"])
    with pytest.raises(DataError, match=r"rows of task\(s\) \['t2i'\] are not text"):
        HeldoutEvaluator(cfg, policy.config, policy.tokenizer, tmp_path)
