"""jobs.rollout end to end on the tiny twin: every (uid, sample_index) once, bad rows reported, resume does
only the missing shards and reproduces them bit for bit, other arguments are refused, parquet output,
scoring, and a shard whose worker died is redone by a fresh worker."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
import ray

from jobs.rollout import main as rollout_main
from jobs.rollout import parse_args
from jobs.rollout_plan import IDENTITY_ARGS, RolloutJobError, identity, make_plan, shard_calls, shard_seed
from jobs.rollout_shards import ShardScheduler, sampler_submit, shard_path, shard_rows, start_rollout_workers

GOOD_UIDS = ["q1", "q2", "q4", "q6", "q7"]  # shards of 2: [q1, q2], [q4, q6], [q7]
SAMPLES = 2
SAMPLING = ["--gen-length", "8", "--steps", "4", "--block-length", "4", "--temperature", "1.0"]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    directory = tmp_path_factory.mktemp("prompts")
    (directory / "pic.png").write_bytes(b"not really a png")
    rows = [
        {"uid": "q1", "prompt": "What is 2+3?", "answer": "5"},
        {"uid": "q2", "prompt": "Name a color.", "answer": "red"},
        {"uid": "q3", "answer": "7"},  # line 3: no prompt
        {"uid": "q4", "prompt": "What is 3*3?", "answer": 9},
        {"uid": "q5", "prompt": "Draw a cat", "task": "t2i"},  # line 5: not a text task
        {"uid": "q6", "prompt": "Count to three."},
        {"uid": "q7", "prompt": "What is 10-4?", "answer": "6"},
        {"uid": "q8", "prompt": "Describe it.", "image": "pic.png"},  # line 8: needs the image sampler
    ]
    path = directory / "prompts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def argv(prompts, out, *extra):
    return ["--model", "tiny", "--prompts", str(prompts), "--out", str(out), "--samples-per-prompt", str(SAMPLES),
            "--shard-size", "2", "--seed", "3", *SAMPLING, *extra]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def first_run(ray_session, prompts, tmp_path_factory):
    out = tmp_path_factory.mktemp("rollout") / "run"
    assert rollout_main(argv(prompts, out, "--workers", "2")) == 0
    return out


def test_every_row_once_with_bad_rows_reported(first_run, prompts):
    rows = read_jsonl(first_run / "rollouts.jsonl")
    assert [(r["uid"], r["sample_index"]) for r in rows] == [(u, i) for u in GOOD_UIDS for i in range(SAMPLES)]
    summary = json.loads((first_run / "summary.json").read_text())
    assert summary["shards"] == 3 and summary["shards_generated"] == [0, 1, 2] and summary["rows_generated"] == 10
    assert summary["prompts_per_s"] > 0 and summary["tokens_per_s"] > 0 and summary["worker_restarts"] == 0
    bad = summary["bad_rows"]
    assert len(bad) == 3
    assert bad[0] == f"{prompts}:3: missing 'prompt'"
    assert bad[1] == f"{prompts}:5: task 't2i'; jobs.rollout samples text only (task 'text')"
    assert bad[2].startswith(f"{prompts}:8: has an image")
    for shard, uids in enumerate([GOOD_UIDS[:2], GOOD_UIDS[2:4], GOOD_UIDS[4:]]):
        shard_rows_ = read_jsonl(shard_path(first_run, shard, "jsonl"))
        assert [r["uid"] for r in shard_rows_] == [u for u in uids for _ in range(SAMPLES)]
        assert all(r["shard"] == shard and r["seed"] == shard_seed(3, shard, 0) for r in shard_rows_)
        assert [r["seed_row"] for r in shard_rows_] == list(range(len(shard_rows_)))  # one call per shard

    from model.templates import chat_prompt_ids, special_ids
    from model.tiny import tiny_model

    tokenizer = tiny_model(0).tokenizer
    ids = special_ids(tokenizer)
    first = rows[0]
    assert first["prompt"] == "What is 2+3?" and first["answer"] == "5" and first["task"] == "text"
    assert first["prompt_ids"] == chat_prompt_ids(tokenizer, "What is 2+3?", thinking=True)
    assert rows[4]["answer"] == "9" and rows[6]["answer"] is None  # numbers become text; missing stays null
    for row in rows:
        assert len(row["response_ids"]) == len(row["reveal_step"]) == 8 and row["policy_version"] == 0
        assert sorted(row["reveal_step"]) == [0, 0, 1, 1, 2, 2, 3, 3]  # 2 blocks x 2 steps, 2 tokens a step
        cut = next((i for i, t in enumerate(row["response_ids"]) if t in (ids.eos, ids.eot)), 8)
        assert row["response"] == tokenizer.decode(row["response_ids"][:cut])
        assert row["response_length"] == min(cut + 1, 8)
    # temperature 1.0: the two samples of a prompt differ (different rows of the sampler call)
    assert any(rows[2 * k]["response_ids"] != rows[2 * k + 1]["response_ids"] for k in range(5))


def test_resume_redoes_only_missing_or_incomplete_shards_and_reproduces_them(first_run, prompts, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(first_run, out)
    merged = (out / "rollouts.jsonl").read_bytes()
    original = {k: shard_path(out, k, "jsonl").read_bytes() for k in range(3)}
    shard_path(out, 1, "jsonl").unlink()  # lost
    lines = original[2].splitlines(keepends=True)
    shard_path(out, 2, "jsonl").write_bytes(lines[0])  # a shard file with rows missing
    partial = out / "shards" / ".shard-00001.jsonl.tmp-deadbeef"
    partial.write_bytes(original[1][:40])  # what a kill during a write leaves
    untouched = shard_path(out, 0, "jsonl").stat().st_mtime_ns
    (out / "rollouts.jsonl").unlink()

    assert rollout_main(argv(prompts, out, "--workers", "2")) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["shards_generated"] == [1, 2] and summary["shards_complete_before"] == 1
    assert shard_path(out, 0, "jsonl").stat().st_mtime_ns == untouched
    assert not partial.exists()
    assert {k: shard_path(out, k, "jsonl").read_bytes() for k in range(3)} == original
    assert (out / "rollouts.jsonl").read_bytes() == merged

    assert rollout_main(argv(prompts, out, "--workers", "2")) == 0  # nothing left to do: no Ray, no worker
    assert json.loads((out / "summary.json").read_text())["shards_generated"] == []
    assert (out / "rollouts.jsonl").read_bytes() == merged


def test_a_rerun_with_other_arguments_or_data_is_refused(first_run, prompts, tmp_path, capsys):
    changed = ["--gen-length", "16", "--steps", "4", "--block-length", "4"]
    assert rollout_main(argv(prompts, first_run, *changed)) == 2
    error = capsys.readouterr().err
    assert f"error: {first_run / 'manifest.json'} was written by a run with other arguments or data" in error
    assert "--gen-length: 8 there, 16 now" in error and "use a new --out" in error
    assert "--steps" not in error  # only what differs is named
    assert rollout_main(argv(prompts, first_run, "--cache", "dual", "--threshold", "0.9")) == 2
    error = capsys.readouterr().err
    assert "--cache: 'none' there, 'dual' now" in error and "--threshold: None there, 0.9 now" in error

    other_data = tmp_path / "prompts.jsonl"
    other_data.write_text(prompts.read_text().replace("What is 2+3?", "What is 2+4?"))
    assert rollout_main(argv(other_data, first_run, "--score", "format")) == 2
    error = capsys.readouterr().err
    assert "--prompts: the prompt data differs from the data of that run" in error
    assert "--score: [] there, ['format'] now" in error


def test_parquet_output_with_scores_matches_the_jsonl_run(first_run, prompts, tmp_path):
    import pyarrow.parquet as pq

    from rewards import RewardsConfig, RewardService, RewardTermConfig, Sample
    from tests.rewards.batches import batch_of

    out = tmp_path / "parquet"
    assert rollout_main(argv(prompts, out, "--workers", "1", "--format", "parquet", "--score", "format")) == 0
    table = pq.read_table(out / "rollouts.parquet")
    rows = table.to_pylist()
    reference = read_jsonl(first_run / "rollouts.jsonl")
    assert table.num_rows == 10 and len(list((out / "shards").glob("shard-*.parquet"))) == 3
    generated = ("uid", "sample_index", "prompt_ids", "response", "response_ids", "reveal_step", "seed", "seed_row")
    # another worker count and format, the same tokens: rows depend only on (seed, shard) and the model
    assert [{k: r[k] for k in generated} for r in rows] == [{k: r[k] for k in generated} for r in reference]
    samples = [Sample("text", r["prompt"], r["response"], answer=r["answer"]) for r in rows]
    with RewardService(RewardsConfig(tasks={"text": [RewardTermConfig("format", 0.5)]})) as service:
        expected, _ = service.score(batch_of(samples))
    assert [r["reward"] for r in rows] == expected.total
    assert [r["rewards"] for r in rows] == [{"format": v} for v in expected.rewards["format"]]
    assert [r["reward_reasons"] for r in rows] == [{"format": v} for v in expected.reward_reasons["format"]]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["health/reward_actor_restarts"] == 0.0


def test_a_shard_whose_worker_died_goes_to_a_fresh_worker(first_run, prompts, ray_session):
    args = parse_args(argv(prompts, "unused", "--workers", "2"))
    plan = make_plan(args)
    started = []

    def start_worker():
        started.append(start_rollout_workers(args, plan.network_source, 1)[0])
        return started[-1]

    doomed = start_rollout_workers(args, plan.network_source, 1)[0]
    ray.kill(doomed)  # dead before its shard arrives: the shard's calls fail with RayActorError
    scheduler = ShardScheduler([doomed], start_worker, max_attempts=2)
    try:
        finished = {shard.index: shard_rows(shard, shard_calls(shard, args), batches)
                    for shard, batches in scheduler.run(plan.shards, sampler_submit(args))}
        assert sorted(finished) == [0, 1, 2] and scheduler.restarts == 1 and scheduler.workers == started
        for index, rows in finished.items():  # the redone shard is the undisturbed run's, token for token
            assert rows == read_jsonl(shard_path(first_run, index, "jsonl"))

        def bad_submit(worker, shard):
            return [worker.sample.remote([], gen_length=8, steps=4, block_length=4)]

        with pytest.raises(RolloutJobError, match="shard 0 failed: ValueError: sample: no requests"):
            list(ShardScheduler(scheduler.workers, start_worker, max_attempts=2).run(plan.shards[:1], bad_submit))
    finally:
        for worker in scheduler.workers:
            ray.kill(worker)


def test_scheduler_gives_up_after_max_attempts(prompts, ray_session):
    args = parse_args(argv(prompts, "unused"))
    plan = make_plan(args)

    def dead_worker():
        worker = start_rollout_workers(args, plan.network_source, 1)[0]
        ray.kill(worker)
        return worker

    scheduler = ShardScheduler([dead_worker()], dead_worker, max_attempts=2)
    with pytest.raises(RolloutJobError, match=r"shard 0: its worker died 2 time\(s\) \(--max-attempts 2\)"):
        list(scheduler.run(plan.shards[:1], sampler_submit(args)))
    assert scheduler.restarts == 2


def test_a_model_the_workers_cannot_load_is_one_clear_error(prompts, tmp_path, ray_session, capsys):
    import model
    from model.tiny import tiny_model

    checkpoint = model.save(tiny_model(0), tmp_path / "policy")
    for weights in checkpoint.glob("*.safetensors"):
        weights.unlink()  # config and tokenizer are there (the driver reads them), the weights are not
    assert rollout_main(["--model", str(checkpoint), "--prompts", str(prompts), "--out", str(tmp_path / "out"),
                         *SAMPLING]) == 2
    error = capsys.readouterr().err
    assert f"error: --model {checkpoint}: the rollout workers could not build it: " in error


def test_usage_errors_fail_before_anything_starts(prompts, tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_args(argv(prompts, tmp_path / "a", "--workers", "0"))
    assert "--workers: 0; need at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(argv(prompts, tmp_path / "a", "--gen-length", "10"))
    assert "sampler settings: " in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(argv(prompts, tmp_path / "a", "--threshold", "0.9", "--remasking", "random"))
    assert "sampler settings: threshold: 0.9 needs remasking='low_confidence'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(argv(prompts, tmp_path / "a", "--cpus-per-worker", "0"))
    assert "both 0" in capsys.readouterr().err

    too_long = ["--gen-length", "4064", "--steps", "127", "--block-length", "32"]
    assert rollout_main(argv(prompts, tmp_path / "b", *too_long)) == 2
    error = capsys.readouterr().err
    assert f"error: no usable rows in {prompts}" in error
    assert f"{prompts}:1: the chat prompt has 70 tokens; with --gen-length 4064 that exceeds the model's " \
           "max_sequence_length 4096" in error

    assert rollout_main(argv(prompts, tmp_path / "c", "--score", "no_such_reward")) == 2
    assert "error: --score: unknown reward 'no_such_reward'; available: " in capsys.readouterr().err

    stray = tmp_path / "d" / "shards"
    stray.mkdir(parents=True)
    (stray / "shard-00000.jsonl").write_text("{}\n")
    assert rollout_main(argv(prompts, tmp_path / "d")) == 2
    assert "has files but" in capsys.readouterr().err

    assert rollout_main(["--model", str(tmp_path), "--prompts", str(prompts), "--out", str(tmp_path / "e")]) == 2
    assert (f"error: --model: {str(tmp_path)!r} has no config.json; give a checkpoint directory in the published "
            "format, or 'demo' / 'tiny' / 'tiny-mmada'") in capsys.readouterr().err
    assert rollout_main(argv(tmp_path / "missing.jsonl", tmp_path / "f")) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["demo", "tiny", "tiny-mmada"])
def test_a_named_model_is_recorded_by_name_and_a_path_as_an_absolute_path(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    named = identity(argparse.Namespace(**{**{name: None for name in IDENTITY_ARGS}, "model": model}))
    assert named["model"] == model
    path = identity(argparse.Namespace(**{**{name: None for name in IDENTITY_ARGS}, "model": "ckpt"}))
    assert path["model"] == str(tmp_path / "ckpt")
