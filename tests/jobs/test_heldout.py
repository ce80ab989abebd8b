"""Held-out evaluation (jobs/heldout.py): the driver's evaluator equals `python -m jobs.eval` on the same config and
weights, and the `eval` section's checks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from jobs.config import load_config
from jobs.configtree import ConfigError
from jobs.heldout import HeldoutEvaluator, eval_device, eval_history, load_eval_policy, should_evaluate

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "jobs/configs/demo.yaml"


def test_schedule_is_start_every_and_end():
    assert [s for s in range(0, 11) if should_evaluate(s, every=4, last_step=10)] == [0, 4, 8, 10]
    assert [s for s in range(0, 11) if should_evaluate(s, every=0, last_step=10)] == [0, 10]


TINY = ["model.path=tiny", "model.tiny_size={d_model: 32, n_layers: 1, n_heads: 2, n_kv_heads: 2, mlp_hidden_size: 64}",
        "run.seed=3"]


def weights_of(overrides: list[str]):
    """What the learner would hold at step 0 for the demo config with `overrides`: model.path's weights."""
    from model import load
    from model.resolve import tiny_twin

    cfg = load_config(DEMO, overrides)
    if cfg.model.path == "tiny":
        return tiny_twin("tiny", cfg.run.seed, **cfg.model.tiny_size)
    return load(REPO / "model/assets/demo_policy" if cfg.model.path == "demo" else cfg.model.path)


@pytest.mark.parametrize("overrides", [
    [],  # the demo config as it is: its sign-slip cold start, greedy (the demo's step-0 evaluation)
    ["model.path=demo", "eval.temperature=0.8", "eval.samples=2"],  # two sampled responses per problem
    ["model.path=demo", "eval.dtype=bf16", "data.thinking=true", "run.seed=1"],
    [*TINY, "eval.device=auto"],  # a tiny twin: drawn from run.seed at model.tiny_size on both sides
])
def test_evaluator_equals_jobs_eval_with_the_same_config(tmp_path, overrides):
    """`jobs.eval --config X` repeats the training run's evaluation of the same weights: the same samples, judged
    the same way, so the same pass@1."""
    from jobs.eval import main as eval_main

    policy = weights_of(overrides)
    settings = ["eval.limit=12", "eval.batch_size=5", *overrides]
    cfg = load_config(DEMO, settings)
    evaluator = HeldoutEvaluator(cfg, policy.config, policy.tokenizer, tmp_path, driver_copy=True)
    assert next(evaluator.network.parameters()).dtype == {"fp32": torch.float32, "bf16": torch.bfloat16}[cfg.eval.dtype]
    assert next(evaluator.network.parameters()).device == eval_device(cfg)
    metrics = evaluator.evaluate(7, evaluator.driver_decoder(7, policy.network.state_dict()))
    out = tmp_path / "jobs_eval.json"
    assert eval_main(["--config", str(DEMO), *[a for o in settings for a in ("--set", o)], "--out", str(out)]) == 0
    reference = json.loads(out.read_text())
    assert metrics["eval/pass@1"] == reference["pass_at_k"]["1"]
    assert metrics["eval/format_rate"] == reference["format_rate"]
    assert metrics["eval/problems"] == 12
    rows = [json.loads(line) for line in (tmp_path / "eval" / "step_7.jsonl").read_text().splitlines()]
    assert rows == [json.loads(line) for line in out.with_name("jobs_eval.samples.jsonl").read_text().splitlines()]
    samples = cfg.eval.samples
    assert len(rows) == 12 * samples and {r["sample_index"] for r in rows} == set(range(samples))
    assert all(r["sampler_forwards"] == cfg.rollout.sampler.steps for r in rows)
    correct = sum(r["correct"] == 1.0 for r in rows)
    assert metrics["eval/pass@1"] == pytest.approx(correct / (12 * samples), abs=1e-12)  # pass@1 = mean of samples


def test_weights_that_do_not_fit_the_policy_are_refused(tmp_path):
    from model import load
    from model.tiny import tiny_model

    policy = load(REPO / "model/assets/demo_policy")
    cfg = load_config(DEMO, ["eval.limit=2"])
    evaluator = HeldoutEvaluator(cfg, policy.config, policy.tokenizer, tmp_path, driver_copy=True)
    random_policy = tiny_model(seed=0, d_model=128, n_layers=4, n_heads=4, mlp_hidden_size=384)
    with pytest.raises(RuntimeError, match="at step 8: the learner's weights do not match the policy config"):
        evaluator.driver_decoder(8, {"unexpected.weight": random_policy.network.state_dict()["model.transformer.wte.weight"]})
    without_copy = HeldoutEvaluator(cfg, policy.config, policy.tokenizer, tmp_path)  # as eval.where says
    assert cfg.eval.where == "rollout_workers" and without_copy.network is None  # no policy copy in the driver
    driver = load_config(DEMO, ["eval.limit=2", "eval.where=driver"])
    assert HeldoutEvaluator(driver, policy.config, policy.tokenizer, tmp_path).network is not None
    with pytest.raises(RuntimeError, match="built without driver_copy"):
        without_copy.driver_decoder(8, policy.network.state_dict())


def test_jobs_train_refuses_an_eval_dtype_the_rollout_workers_do_not_run(capsys, tmp_path):
    """On the workers the policy runs in learner.dtype: another eval.dtype is refused before Ray starts (and by
    --dry-run), naming both keys and both ways out; each way out passes."""
    from jobs.heldout import check_placement
    from jobs.train import main as train_main

    message = ("eval.dtype: bf16, but eval.where: rollout_workers evaluates on the rollout workers, which hold the "
               "policy in learner.dtype fp32; set eval.dtype to fp32, or eval.where: driver to evaluate a bf16 copy "
               "in the driver")
    with pytest.raises(ConfigError, match=re.escape(message)):
        check_placement(load_config(DEMO, ["eval.dtype=bf16"]))
    for fine in (["eval.where=driver"], ["learner.dtype=bf16"], ["data.eval=null", "eval.every=0"]):
        check_placement(load_config(DEMO, ["eval.dtype=bf16", *fine]))
    assert train_main(["--set", "eval.dtype=bf16", "--dry-run"]) == 2
    assert message in capsys.readouterr().err
    assert train_main(["--set", "eval.dtype=bf16", "--set", f"run.output_dir={tmp_path}"]) == 2  # before Ray starts
    assert message in capsys.readouterr().err and not (tmp_path / "demo").exists()


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
    ("eval.pass_at_k=[1,2]", r"eval.pass_at_k: \[1, 2\]; every k must be in \[1, samples=1\]"),
    ("eval.dtype=fp16", "eval.dtype: 'fp16' is not one of the valid choices 'fp32', 'bf16'"),
    ("eval.out=[a]", "eval.out: "),
    ("eval.device=gpu", r"eval.device: 'gpu' is not a device; use 'cpu', 'cuda', 'cuda:N' \(N = 0, 1, ...\) or 'auto'"),
    ("eval.device=cuda:-1", "eval.device: 'cuda:-1' is not a device"),
    ("eval.device=CPU", "eval.device: 'CPU' is not a device"),
    ("sample.prompts=hello", "sample.prompts: expected a list, got 'hello'"),
])
def test_bad_eval_settings_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DEMO, override.split())


def test_several_greedy_samples_are_fine_with_random_remasking():
    cfg = load_config(DEMO,
                      ["eval.samples=4", "eval.temperature=0", "rollout.sampler.remasking=random"])
    assert cfg.eval.samples == 4


def test_periodic_evaluation_needs_a_heldout_file():
    with pytest.raises(ConfigError, match="eval.every: 5 needs a held-out file; set data.eval"):
        load_config(DEMO, ["data.eval=null", "eval.every=5"])


def test_a_heldout_file_with_image_tasks_is_refused(tmp_path):
    from jobs.data import DataError
    from model import load

    rows = tmp_path / "mixed.jsonl"
    rows.write_text('{"uid": "a", "task": "text", "prompt": "Compute 1 + 1.", "answer": "2"}\n'
                    '{"uid": "b", "task": "t2i", "prompt": "a red circle"}\n')
    policy = load(REPO / "model/assets/demo_policy")
    cfg = load_config(DEMO, [f"data.eval={rows}"])
    with pytest.raises(DataError, match=r"rows of task\(s\) \['t2i'\] are not text"):
        HeldoutEvaluator(cfg, policy.config, policy.tokenizer, tmp_path, driver_copy=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine where torch sees no GPU")
def test_auto_is_the_cpu_where_torch_sees_no_gpu():
    cfg = load_config(DEMO, [*TINY, "eval.device=auto", "eval.limit=1"])
    assert eval_device(cfg) == torch.device("cpu")
    assert next(load_eval_policy(cfg).network.parameters()).device == torch.device("cpu")


def test_a_cuda_device_torch_does_not_see_is_refused_naming_the_key(tmp_path):
    """Before any weight moves: a clear ConfigError naming eval.device, not a CUDA traceback (on any machine: one
    index past the devices torch sees; on a CPU-only one, plain 'cuda' too)."""
    from model import load

    visible = torch.cuda.device_count()
    names = [f"cuda:{visible}"] + ([] if visible else ["cuda"])
    policy = load(REPO / "model/assets/demo_policy")
    for name in names:
        cfg = load_config(DEMO, ["eval.limit=1", f"eval.device={name}"])
        message = (f"eval.device: '{name}', but torch sees {visible} CUDA device(s) here; use 'cpu', 'auto' (cuda "
                   "when torch sees one, else cpu) or 'cuda:N' with N below that count")
        with pytest.raises(ConfigError, match=re.escape(message)):
            HeldoutEvaluator(cfg, policy.config, policy.tokenizer, tmp_path, driver_copy=True)
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_eval_policy(cfg)
