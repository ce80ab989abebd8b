"""jobs/sft.py, jobs/sft_data.py and the `sft` section of the one config tree (jobs/config.py): batching, the step
function the learner ranks run, the config (loading, printing, errors), one end-to-end run on the learner group,
and the shipped demo policy's held-out accuracy (docs/demo.md), measured by the evaluation `python -m jobs.eval`
runs. The objective itself: tests/rl/test_sft.py; the learning-rate schedule: tests/rl/test_lr_schedule.py."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch

from jobs.config import load_config
from jobs.sft import SFT_CONFIG, check_sft, main
from jobs.sft_data import Example, collate, make_batch, shard, tokenize_examples
from model.resolve import DEMO_POLICY
from rl.sft import sft_step

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = REPO / "jobs" / "configs" / "sft_demo.yaml"
TRAIN_ONLY = ["data.train=x.jsonl"]  # the tree's defaults, plus the one key every job needs
MASK, PAD = 588, 587  # tiny tokenizer: <|mdm_mask|>, <|endoftext|>


@pytest.fixture(scope="module")
def tiny():
    from model.tiny import tiny_model

    return tiny_model(0, d_model=32, n_layers=2, n_heads=2, mlp_hidden_size=64)


def sft_evaluation(loaded, config: Path, *, limit: int):
    """What `jobs.sft.run` evaluates with (jobs/heldout.py, as in training and `python -m jobs.eval`) on the first
    `limit` held-out problems of `config`, in one batch: (records, scored rows, summary)."""
    from jobs.evaluate import local_decoder
    from jobs.heldout import evaluate_heldout, heldout_records

    cfg = load_config(config, [f"eval.limit={limit}", f"eval.batch_size={limit}",
                               f"data.eval={REPO / load_config(config).data.eval}"])
    records, _ = heldout_records(cfg)
    return (records, *evaluate_heldout(cfg, loaded.tokenizer, loaded.config, records,
                                       decode=local_decoder(loaded.network)))


def examples_of(*pairs) -> list[Example]:
    return [Example(f"u{i}", tuple(p), tuple(r), None) for i, (p, r) in enumerate(pairs)]


def test_collate_left_pads_prompts_and_marks_responses():
    batch = collate(examples_of(([5, 6, 7], [8, 9]), ([4], [3, PAD])), PAD)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [PAD, PAD, 4, 3, PAD]]
    assert batch["response_mask"].tolist() == [[False, False, False, True, True]] * 2
    assert batch["attention_mask"].tolist() == [[True] * 5, [False, False, True, True, True]]
    assert collate(examples_of(([5], [8]), ([4], [3])), PAD)["attention_mask"] is None


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(tiny):
    import copy

    from actors.config import LearnerConfig
    from actors.learner import LearnerContext
    from rl.update import PlainEngine

    network = copy.deepcopy(tiny.network).train()
    engine = PlainEngine(network, torch.optim.AdamW(network.parameters(), lr=1e-2), grad_clip=1.0)
    cfg = LearnerConfig(micro_batch_size=3)
    ctx = LearnerContext(engine, network, 0, 1, cfg, torch.device("cpu"))
    examples = examples_of(*[([5 + i, 6], [20 + i, 30, 40, PAD, PAD]) for i in range(6)])
    job_cfg = load_config(None, [*TRAIN_ONLY, "sft.batch_size=6"])
    batch = make_batch(examples, step=0, cfg=job_cfg, mask_id=MASK, pad_id=PAD)
    losses = [sft_step(ctx, **batch, num_sequences_global=6)["loss"] for _ in range(8)]
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.7 * losses[0], losses


def test_make_batch_masks_are_a_function_of_run_seed_and_step():
    examples = examples_of(*[([5 + i, 6], [20 + i, 30, 40, PAD, PAD]) for i in range(4)])
    cfg = load_config(None, [*TRAIN_ONLY, "sft.batch_size=4", "sft.mask_eps=0.5"])
    first, again = (make_batch(examples, step=3, cfg=cfg, mask_id=MASK, pad_id=PAD) for _ in range(2))
    assert all(torch.equal(first[k], again[k]) for k in ("noisy_ids", "masked", "mask_ratio"))
    assert not torch.equal(first["mask_ratio"], make_batch(examples, step=4, cfg=cfg, mask_id=MASK,
                                                           pad_id=PAD)["mask_ratio"])
    assert not first["masked"][:, :2].any() and torch.equal(first["noisy_ids"] == MASK, first["masked"])


def test_shard_splits_rows_evenly():
    batch = {"a": torch.arange(6).reshape(6, 1), "b": None}
    parts = shard(batch, 2)
    assert [p["a"].flatten().tolist() for p in parts] == [[0, 1, 2], [3, 4, 5]] and parts[1]["b"] is None


def test_tokenize_examples_pads_with_eos_and_rejects_bad_rows(tiny):
    from jobs.data import PromptRecord

    tokenizer = tiny.tokenizer
    good = PromptRecord("u1", "text", "Compute 1 + 2.", "3", meta={"response": "<think>1+2=3</think>\\boxed{3}"})
    [example] = tokenize_examples([good], tokenizer, column="response", thinking=False, gen_length=24,
                                  eos_id=PAD)
    body = tokenizer(good.meta["response"], add_special_tokens=False)["input_ids"]
    assert example.response_ids == tuple(body) + (PAD,) * (24 - len(body)) and len(example.response_ids) == 24
    with pytest.raises(ValueError, match="leaves no room for an EOS"):
        tokenize_examples([good], tokenizer, column="response", thinking=False, gen_length=len(body),
                          eos_id=PAD)
    missing = PromptRecord("u2", "text", "Compute 1 + 2.", "3", source="f.jsonl:7")
    with pytest.raises(ValueError, match="f.jsonl:7: no reference response"):
        tokenize_examples([missing], tokenizer, column="response", thinking=False, gen_length=24, eos_id=PAD)


def test_the_sft_demo_config_loads_into_the_sections_of_the_tree():
    cfg = load_config(DEMO_CONFIG)
    assert (cfg.run.name, cfg.run.seed, cfg.data.train, cfg.data.eval, cfg.data.thinking) == (
        "sft_demo", 0, "data/arithmetic/train.jsonl", "data/arithmetic/heldout.jsonl", False)
    assert cfg.model.path == "tiny" and cfg.model.tiny_size == {
        "d_model": 128, "n_layers": 4, "n_heads": 4, "mlp_hidden_size": 384, "rope_theta": 10000.0}
    assert (cfg.sft.max_steps, cfg.sft.min_steps, cfg.sft.batch_size, cfg.sft.mask_eps, cfg.sft.log_every,
            cfg.sft.patience, cfg.sft.select, cfg.sft.export_to) == (10000, 5000, 32, 0.1, 25, 4, "best", None)
    sampler = cfg.rollout.sampler
    assert (sampler.gen_length, sampler.steps, sampler.block_length) == (40, 20, 8)
    assert (cfg.eval.every, cfg.eval.limit, cfg.eval.batch_size, cfg.eval.samples, cfg.eval.temperature,
            cfg.eval.torch_threads) == (500, 256, 128, 1, 0.0, 1)
    learner = cfg.learner
    assert (learner.num_ranks, learner.zero_stage, learner.lr, learner.lr_warmup_steps, learner.lr_decay,
            learner.min_lr_ratio, learner.weight_decay, learner.grad_clip, learner.micro_batch_size) == (
        1, 0, 2e-3, 100, "cosine", 0.1, 0.01, 1.0, 32)
    assert cfg.cluster.num_cpus == 2
    check_sft(cfg)  # and the SFT-only checks pass


def test_print_config_shows_the_sft_section_with_its_docs(capsys):
    assert main(["--print-config", "--set", "sft.patience=7"]) == 0  # no --config: sft_demo.yaml
    printed = capsys.readouterr().out
    assert "\nsft:  # The steps, batch, masking" in printed and "  patience: 7  # Stop after this many evaluations" in printed
    assert "  select: best  # The run's policy" in printed and "  max_steps: 10000  # Optimizer steps at most" in printed
    assert "  name: sft_demo  #" in printed
    assert SFT_CONFIG == DEMO_CONFIG


@pytest.mark.parametrize(("overrides", "message"), [
    (["sft.bogus=1"], "sft.bogus: unknown key; valid keys here: batch_size, export_to"),
    (["sft.batch_size=3", "learner.num_ranks=2"],
     "sft.batch_size: 3 is not divisible by learner.num_ranks=2; every rank needs an equal shard"),
    (["data.eval=null", "eval.every=0"], "data.eval: SFT picks its policy by held-out pass@1; set it"),
    (["sft.mask_eps=0"], "sft.mask_eps: 0.0 must lie in (0, 1)"),
    (["sft.min_steps=-1"], "sft.min_steps: -1 must be >= 0"),
    (["sft.patience=0", "sft.max_steps=0"], "sft.max_steps: 0; need at least 1\n  sft.patience: 0; need at least 1"),
    (["sft.select=final"], "sft.select: 'final' is not one of the valid choices 'best', 'last'"),
    (["model.tiny_size={d_model: 1.5}"], "model.tiny_size: {'d_model': 1.5} must be positive integers"),
    (["model.tiny_size={rope_theta: 0.0}"], "model.tiny_size.rope_theta: 0.0 must be a positive RoPE base"),
])
def test_config_errors_name_the_key_and_exit_2(overrides, message, capsys):
    """Errors of the tree's load (sft, model) and of jobs.sft's own checks, printed as the other jobs print them."""
    assert main(["--config", str(DEMO_CONFIG), *[x for o in overrides for x in ("--set", o)]]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: invalid config") and message in error, error
    assert "Traceback" not in error


def test_the_tiny_policy_is_sized_by_the_model_section_and_a_bad_path_names_the_key(tmp_path):
    from jobs.sft import run
    from model.resolve import ModelSpecError, model_parts

    cfg = load_config(DEMO_CONFIG)
    parts = model_parts(cfg.model.path, key="model.path", seed=cfg.run.seed, size=cfg.model.tiny_size)
    shipped = json.loads((DEMO_POLICY / "config.json").read_text())  # the policy sft_demo.yaml trained
    for key in ("d_model", "n_layers", "n_heads", "mlp_hidden_size", "rope_theta", "vocab_size", "mask_token_id"):
        assert getattr(parts.config, key) == shipped[key], key
    bad = load_config(DEMO_CONFIG, [f"run.output_dir={tmp_path}", f"model.path={tmp_path / 'nowhere'}",
                                    "model.tiny_size={}"])
    with pytest.raises(ModelSpecError, match=r"^model\.path: '.*nowhere' is neither a checkpoint directory"):
        run(bad)


def in_own_ray(job, *args):
    """`job(*args)` (jobs.sft's `run` or `main`, which start Ray unless it runs), and Ray shut down after it if
    it started there, so the next test starts from the state it found."""
    import ray

    started_here = not ray.is_initialized()
    try:
        return job(*args)
    finally:
        if started_here:
            ray.shutdown()


def test_end_to_end_run_on_the_learner_group(tmp_path):
    """A few steps of `jobs.sft.run` on a 1-rank DeepSpeed group: outputs written, loss down, policy loads;
    with `sft.select=last` the exported policy is the last step's weights, and best_policy the best step's."""

    import model
    from jobs.eval import main as eval_main
    from jobs.sft import run
    from jobs.tasks.arithmetic import generate, write_jsonl

    splits = generate(64, 8, seed=1)
    write_jsonl(splits["train"], tmp_path / "train.jsonl")
    write_jsonl(splits["heldout"], tmp_path / "heldout.jsonl")
    cfg = load_config(DEMO_CONFIG, [
        f"run.output_dir={tmp_path}", "run.name=e2e", f"sft.export_to={tmp_path / 'exported'}",
        f"data.train={tmp_path / 'train.jsonl'}", f"data.eval={tmp_path / 'heldout.jsonl'}",
        "model.tiny_size={d_model: 32, n_layers: 1, n_heads: 2, mlp_hidden_size: 64, rope_theta: 10000.0}",
        "sft.max_steps=12", "sft.batch_size=16", "learner.lr_warmup_steps=2", "sft.log_every=4", "eval.every=6",
        "eval.limit=8", "rollout.sampler.gen_length=48", "rollout.sampler.steps=6", "rollout.sampler.block_length=16",
        "learner.micro_batch_size=8", "learner.lr=0.003", "sft.select=last"])
    summary = in_own_ray(run, cfg)
    lines = [json.loads(x) for x in (tmp_path / "e2e" / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if "loss/sft" in x]
    assert [x["step"] for x in lines if "eval/pass@1" in x] == [0, 6, 12] and [x["step"] for x in train] == [4, 8, 12]
    assert train[-1]["loss/sft"] < train[0]["loss/sft"]
    # step s's rate: the schedule's (s - 1)th, 2 steps of warm-up then cosine to 0.1 x lr over the other 10
    assert [x["loss/lr"] for x in train] == pytest.approx(
        [0.003 * (0.1 + 0.9 * (1 + math.cos(math.pi * (s - 3) / 10)) / 2) for s in (4, 8, 12)], rel=1e-12)
    assert list((tmp_path / "e2e" / "tensorboard").glob("events.out.tfevents.*"))  # logging.tensorboard: true
    assert summary["steps"] == 12 and (tmp_path / "e2e" / "config.yaml").is_file()
    loaded = model.load(tmp_path / "exported")
    assert loaded.config.d_model == 32 and loaded.tokenizer is not None
    assert summary["policy"] == str(tmp_path / "e2e" / "last_policy")
    exported = {f.name: f.read_bytes() for f in (tmp_path / "exported").iterdir()}
    assert exported == {f.name: f.read_bytes() for f in (tmp_path / "e2e" / "last_policy").iterdir()}
    # best_policy is the checkpoint its samples were decoded with, and SFT's evaluation is `python -m jobs.eval`'s:
    # the same command on best_policy reproduces the samples, their judgement and the logged pass@1 exactly.
    best = model.load(tmp_path / "e2e" / "best_policy")
    best_samples = [json.loads(x) for x in (tmp_path / "e2e" / "best_samples.jsonl").read_text().splitlines()]
    assert eval_main(["--model", str(tmp_path / "e2e" / "best_policy"), "--data", str(tmp_path / "heldout.jsonl"),
                      "--limit", "8", "--set", "rollout.sampler.gen_length=48", "--set", "rollout.sampler.steps=6",
                      "--set", "rollout.sampler.block_length=16", "--set", "eval.temperature=0",
                      "--set", "data.thinking=false", "--set", "run.seed=0",
                      "--set", f"eval.batch_size={cfg.eval.batch_size}",
                      "--out", str(tmp_path / "eval" / "best.json")]) == 0
    evaluated = [json.loads(x) for x in (tmp_path / "eval" / "best.samples.jsonl").read_text().splitlines()]
    assert evaluated == best_samples and len(best_samples) == 8
    logged = next(x for x in lines if "eval/pass@1" in x and x["step"] == summary["best_step"])
    assert json.loads((tmp_path / "eval" / "best.json").read_text())["pass_at_k"]["1"] == logged["eval/pass@1"]
    assert logged["eval/pass@1"] == sum(r["correct"] for r in best_samples) / 8
    # Nothing is solved in 12 steps, so the step-0 evaluation stays the best and the last policy is another one.
    assert summary["best_step"] == 0 and summary["best_pass1"] == 0.0
    last = model.load(tmp_path / "e2e" / "last_policy")
    assert any(not torch.equal(a, b) for a, b in zip(last.network.state_dict().values(),
                                                     best.network.state_dict().values()))


def test_lora_sft_saves_the_merged_policy_and_its_adapter_in_peft_layout(tmp_path):
    """learner.lora in jobs.sft: the adapters train and the saved policy carries `adapter/` beside the merged
    weights, each adapted weight being the tiny twin's + (alpha / rank) · B A of the saved adapter."""
    from safetensors.torch import load_file

    import model
    from jobs.sft import run
    from jobs.tasks.arithmetic import generate, write_jsonl
    from model.resolve import tiny_twin

    splits = generate(32, 4, seed=1)
    write_jsonl(splits["train"], tmp_path / "train.jsonl")
    write_jsonl(splits["heldout"], tmp_path / "heldout.jsonl")
    size = {"d_model": 32, "n_layers": 1, "n_heads": 2, "mlp_hidden_size": 64}
    cfg = load_config(DEMO_CONFIG, [
        f"run.output_dir={tmp_path}", "run.name=lora", f"data.train={tmp_path / 'train.jsonl'}",
        f"data.eval={tmp_path / 'heldout.jsonl'}", f"model.tiny_size={json.dumps(size)}", "sft.max_steps=3",
        "sft.batch_size=8", "eval.every=0", "eval.limit=4", "rollout.sampler.gen_length=48",
        "rollout.sampler.steps=3", "rollout.sampler.block_length=16", "learner.micro_batch_size=8",
        "learner.lr=0.01", "sft.select=last", "learner.lora={rank: 4, alpha: 8.0}"])
    summary = in_own_ray(run, cfg)
    saved = Path(summary["policy"])
    assert {f.name for f in (saved / "adapter").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    assert (Path(summary["best_policy"]) / "adapter" / "adapter_model.safetensors").is_file()
    adapter = load_file(saved / "adapter" / "adapter_model.safetensors")
    merged = model.load(saved).network.state_dict()
    base = tiny_twin("tiny", cfg.run.seed, **size).network.state_dict()
    layers = [name[len("base_model.model."):-len(".lora_A.weight")] for name in adapter if ".lora_A." in name]
    assert len(layers) == 7  # every block linear of the one block
    for layer in layers:
        a = adapter[f"base_model.model.{layer}.lora_A.weight"]  # [r, in]
        b = adapter[f"base_model.model.{layer}.lora_B.weight"]  # [out, r]
        assert b.abs().max() > 0  # trained from its zero init
        torch.testing.assert_close(merged[f"{layer}.weight"], base[f"{layer}.weight"] + 2.0 * b @ a)
    untouched = [k for k in base if not any(k == f"{layer}.weight" for layer in layers)]
    assert all(torch.equal(merged[k], base[k]) for k in untouched)  # embeddings, norms, LM head: frozen


def test_sft_steps_skipped_in_a_row_stop_the_run_with_status_3(tmp_path, capsys):
    """A learning rate of 1e38 (the warm-up's first step: 1e36) sends the weights past what fp32 can multiply: from
    the second step on every gradient is non-finite and skipped; with learner.max_nonfinite_steps 2 the run stops
    at step 3 naming the best policy so far, which the step-0 evaluation saved."""

    from jobs.tasks.arithmetic import generate, write_jsonl

    write_jsonl(generate(32, 4, seed=1)["train"], tmp_path / "t.jsonl")
    overrides = [f"run.output_dir={tmp_path}", "run.name=nan", f"data.train={tmp_path / 't.jsonl'}", "eval.every=0",
                 "eval.limit=4", "sft.max_steps=8", "sft.log_every=1", "sft.batch_size=8",
                 "learner.micro_batch_size=8", "learner.lr=1e38", "learner.max_nonfinite_steps=2",
                 "model.tiny_size={d_model: 32, n_layers: 1, n_heads: 2, mlp_hidden_size: 64}"]
    assert in_own_ray(main, [arg for o in overrides for arg in ("--set", o)]) == 3
    err = capsys.readouterr().err
    assert (f"aborted: step 3: the last 2 SFT steps were skipped entirely (a NaN or inf loss or gradient on a learner "
            f"rank; learner.max_nonfinite_steps is 2); stopped. The best policy so far (step 0, held-out pass@1 0.000) "
            f"is in {tmp_path / 'nan' / 'best_policy'}") in err
    assert (tmp_path / "nan" / "best_policy" / "config.json").is_file()
    lines = [json.loads(x) for x in (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()]
    assert [x["health/nonfinite_skips"] for x in lines if "loss/sft" in x] == [0.0, 1.0]  # step 3 stops before its line


def test_a_lost_learner_rank_is_status_4_not_a_traceback(monkeypatch, capsys, tmp_path):
    """`job_main`'s handling of an exception with an `exit_code`, here `ActorLost` (what LearnerGroup raises for a
    rank that died or overran its deadline: tests/actors/test_deadlines.py makes one for real): the run stands in
    for that here, the handler is real."""
    import jobs.sft
    from actors.group import ActorLost, Outcome

    def lost(cfg):
        raise ActorLost("learner rank 0 of 1: no answer within 3 s (learner.call_timeout_s)", Outcome("timeout"))

    monkeypatch.setattr(jobs.sft, "run", lost)
    assert main(["--set", f"run.output_dir={tmp_path}", "--set", "run.name=lost"]) == 4
    assert capsys.readouterr().err == "aborted: learner rank 0 of 1: no answer within 3 s (learner.call_timeout_s)\n"
    monkeypatch.setattr(jobs.sft, "run", lambda cfg: {}["no such key"])  # any other exception is not swallowed
    with pytest.raises(KeyError, match="no such key"):
        main(["--set", f"run.output_dir={tmp_path}"])


DEMO_HELDOUT_CORRECT_OF_32 = 4  # docs/demo.md: greedy pass@1 of the shipped policy on the first 32 held-out rows
"""Greedy decoding is deterministic, so on the machine that recorded it the count is exact; elsewhere a different
BLAS / CPU can round a logit differently and flip an argmax or a reveal order where two candidates are within
~1e-6, which changes at most a problem or so. The test allows 2 of 32 either way."""


def test_shipped_demo_policy_matches_its_documented_accuracy():
    import model

    size = sum(f.stat().st_size for f in DEMO_POLICY.iterdir())
    assert size <= 20 * 2**20, f"{DEMO_POLICY} is {size / 2**20:.1f} MiB; the budget is 20 MiB"
    loaded = model.load(DEMO_POLICY)
    _, rows, scores = sft_evaluation(loaded, DEMO_CONFIG, limit=32)
    correct = round(scores["pass_at_k"]["1"] * 32)
    assert abs(correct - DEMO_HELDOUT_CORRECT_OF_32) <= 2, (correct, rows[:4])
    assert scores["format_rate"] >= 0.9


SIGN_SLIP_POLICY = REPO / "model" / "assets" / "sign_slip_policy"
SIGN_SLIP_CONFIG = REPO / "jobs" / "configs" / "sft_sign_slip.yaml"
SIGN_SLIP_OF_32 = {"slipped": 28, "right_up_to_sign": 9, "correct": 1}
"""docs/demo.md §6: greedy answers of the shipped cold start on the first 32 held-out rows (as for
DEMO_HELDOUT_CORRECT_OF_32, a different CPU may flip a problem or two; the test allows 2 either way)."""


def test_shipped_sign_slip_policy_slips_where_the_demo_policy_does_not():
    """The cold start of the embedded RL demo: demo_policy's arithmetic, with most answers boxed negated."""
    import model

    size = sum(f.stat().st_size for f in SIGN_SLIP_POLICY.iterdir())
    assert size <= 20 * 2**20, f"{SIGN_SLIP_POLICY} is {size / 2**20:.1f} MiB; the budget is 20 MiB"
    cfg = load_config(SIGN_SLIP_CONFIG)
    assert REPO / cfg.model.path == DEMO_POLICY and cfg.sft.select == "last"
    counts = {}
    for name, path in (("slip", SIGN_SLIP_POLICY), ("demo", DEMO_POLICY)):
        records, rows, _ = sft_evaluation(model.load(path), SIGN_SLIP_CONFIG, limit=32)
        boxed = [re.findall(r"\\boxed\{([^}]*)\}", row["response"]) for row in rows]
        last = [b[-1] if b else None for b in boxed]
        counts[name] = {"slipped": sum(b is not None and b.startswith("-") for b in last),
                        "right_up_to_sign": sum(b is not None and b.lstrip("-") == r.answer
                                                for b, r in zip(last, records)),
                        "correct": sum(row["correct"] for row in rows)}
    for key, expected in SIGN_SLIP_OF_32.items():
        assert abs(counts["slip"][key] - expected) <= 2, counts
    assert counts["demo"]["slipped"] == 0 and abs(counts["demo"]["correct"] - DEMO_HELDOUT_CORRECT_OF_32) <= 2
