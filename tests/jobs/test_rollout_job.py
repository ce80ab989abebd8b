"""jobs.rollout end to end on tiny twins, through the config tree: every (uid, sample_index) once and equal to
in-process sampling of the same requests and seeds (text; text + mmu + t2i on the tiny MMaDA twin), bad rows
reported, resume does only the missing shards and reproduces them bit for bit, other settings are refused
naming the key, parquet output, scoring with `rewards.tasks`, a dead or stopped worker is replaced and its shard
re-run, bad keys exit 2."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray

import jobs.rollout
from actors.group import ActorGroup
from actors.rollout import PromptRequest, RolloutWorker
from jobs.config import DEFAULT_CONFIG, load_config
from jobs.rollout import main as rollout_main
from jobs.rollout_plan import RolloutJobError, identity, make_plan
from jobs.rollout_shards import ShardScheduler, await_ready, sampler_submit, shard_path, start_worker
from model.image_sampling import ImageSamplerConfig
from model.resolve import tiny_twin
from model.sampling import TextSamplerConfig
from model.templates import chat_prompt_ids, special_ids
from rl.masking import stable_seed

REPO = Path(__file__).resolve().parents[2]
GOOD_UIDS = ["q1", "q2", "q4", "q6", "q7"]  # shards of 2: [q1, q2], [q4, q6], [q7]
SAMPLES, SEED, BATCH = 2, 3, 3  # a shard of 2 prompts x 2 samples = 4 rows: calls of 3 rows and 1 row
TEXT = TextSamplerConfig(gen_length=8, steps=4, block_length=4, temperature=1.0)
SAMPLER = "rollout.sampler={gen_length: 8, steps: 4, block_length: 4, temperature: 1.0}"


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    directory = tmp_path_factory.mktemp("prompts")
    rows = [
        {"uid": "q1", "prompt": "What is 2+3?", "answer": "5"},
        {"uid": "q2", "prompt": "Name a color.", "answer": "red"},
        {"uid": "q3", "answer": "7"},  # line 3: no prompt
        {"uid": "q4", "prompt": "What is 3*3?", "answer": 9},
        {"uid": "q5", "prompt": "x " * 5000},  # line 5: longer than the model takes
        {"uid": "q6", "prompt": "Count to three."},
        {"uid": "q7", "prompt": "What is 10-4?", "answer": "6"},
    ]
    path = directory / "prompts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def argv(prompts, out, *extra):
    return ["--model", "tiny", "--prompts", str(prompts), "--out", str(out), "--samples-per-prompt", str(SAMPLES),
            "--set", "generate.shard_size=2", "--set", f"generate.batch_size={BATCH}", "--set", f"run.seed={SEED}",
            "--set", "data.thinking=true", "--set", SAMPLER, "--set", "rollout.cpus_per_worker=0.5", *extra]


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def call_seed(shard: int, call: int) -> int:
    return stable_seed("jobs.rollout", SEED, shard, call)  # the documented seed of call j of shard k


@pytest.fixture(scope="module")
def first_run(ray_session, prompts, tmp_path_factory):
    out = tmp_path_factory.mktemp("rollout") / "run"
    assert rollout_main(argv(prompts, out, "--workers", "2")) == 0
    return out


def test_text_rows_are_in_process_sampling_of_the_same_requests(first_run, prompts):
    rows = read_jsonl(first_run / "rollouts.jsonl")
    assert [(r["uid"], r["sample_index"]) for r in rows] == [(u, i) for u in GOOD_UIDS for i in range(SAMPLES)]
    summary = json.loads((first_run / "summary.json").read_text())
    assert summary["shards"] == 3 and summary["shards_generated"] == [0, 1, 2] and summary["rows_generated"] == 10
    assert summary["prompts_per_s"] > 0 and summary["tokens_per_s"] > 0
    assert summary["worker_restarts"] == 0 and summary["worker_timeouts"] == 0
    bad = summary["bad_rows"]
    assert len(bad) == 2 and bad[0] == f"{prompts}:3: missing 'prompt'"
    assert bad[1].startswith(f"{prompts}:5: the chat prompt has")

    # the expected rows, sampled here: the tiny twin of run.seed, the chat prompts with the thinking instruction,
    # each shard's rows in calls of BATCH seeded (run seed, shard, call)
    loaded = tiny_twin("tiny", seed=SEED)
    worker = RolloutWorker(lambda: tiny_twin("tiny", seed=SEED))
    tokenizer, ids = loaded.tokenizer, special_ids(loaded.tokenizer)
    records = {json.loads(line).get("uid"): json.loads(line) for line in prompts.read_text().splitlines()}
    expected = []
    for shard, uids in enumerate([GOOD_UIDS[:2], GOOD_UIDS[2:4], GOOD_UIDS[4:]]):
        requests = [PromptRequest(tuple(chat_prompt_ids(tokenizer, records[u]["prompt"], thinking=True)), u, i, "text",
                                  prompt=records[u]["prompt"],
                                  answer=None if records[u].get("answer") is None else str(records[u]["answer"]))
                    for u in uids for i in range(SAMPLES)]
        for call, start in enumerate(range(0, len(requests), BATCH)):
            part = requests[start:start + BATCH]
            batch = worker.sample(part, text=TEXT, seed=call_seed(shard, call))
            for r, request in enumerate(part):
                response = batch.input_ids[r, -8:].tolist()
                cut = next((i for i, t in enumerate(response) if t in (ids.eos, ids.eot)), 8)
                expected.append({
                    "uid": request.uid, "sample_index": request.sample_index, "task": "text", "kind": "text",
                    "prompt": request.prompt, "answer": request.answer,
                    "prompt_ids": list(request.prompt_ids), "response": tokenizer.decode(response[:cut]),
                    "response_ids": response, "reveal_step": batch.reveal_step[r, -8:].tolist(),
                    "response_length": min(cut + 1, 8), "policy_version": 0, "seed": call_seed(shard, call),
                    "seed_row": r, "shard": shard, "image": None})
    assert rows == expected
    for row in rows:
        assert sorted(row["reveal_step"]) == [0, 0, 1, 1, 2, 2, 3, 3]  # 2 blocks x 2 steps, 2 tokens a step
    assert any(rows[2 * k]["response_ids"] != rows[2 * k + 1]["response_ids"] for k in range(5))  # temperature 1
    for shard in range(3):
        assert read_jsonl(shard_path(first_run, shard, "jsonl")) == [r for r in rows if r["shard"] == shard]


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


def test_a_rerun_with_other_settings_or_data_is_refused_naming_them(first_run, prompts, tmp_path, capsys):
    changed = ["--set", "rollout.sampler.gen_length=16", "--set", "rollout.sampler.steps=4"]
    assert rollout_main(argv(prompts, first_run, *changed)) == 2
    error = capsys.readouterr().err
    assert f"error: {first_run / 'manifest.json'} was written by a run with other settings or data" in error
    assert "rollout.sampler.gen_length: 8 there, 16 now" in error and "use a new generate.out (--out)" in error
    assert "rollout.sampler.steps" not in error  # only what differs is named
    assert rollout_main(argv(prompts, first_run, "--set", "rollout.sampler.cache=dual", "--set",
                             "rollout.sampler.threshold=0.9", "--set", "data.task_kinds={vqa: mmu}")) == 2
    error = capsys.readouterr().err
    assert "rollout.sampler.cache: 'none' there, 'dual' now" in error
    assert "rollout.sampler.threshold: None there, 0.9 now" in error
    assert "data.task_kinds.vqa: (not set) there, 'mmu' now" in error

    other_data = tmp_path / "prompts.jsonl"
    other_data.write_text(prompts.read_text().replace("What is 2+3?", "What is 2+4?"))
    assert rollout_main(argv(other_data, first_run, "--set", "generate.score=true")) == 2
    error = capsys.readouterr().err
    assert "generate.prompts: the prompt data differs from the data of that run" in error
    assert "generate.score: False there, True now" in error
    assert "rewards.tasks.text: (not set) there, [{'name': 'correctness'" in error  # the terms now shape the rows

    old = tmp_path / "old"
    (old / "shards").mkdir(parents=True)
    (old / "manifest.json").write_text(json.dumps({"version": 1, "args": {"model": "tiny"}}))
    assert rollout_main(argv(prompts, old)) == 2
    assert (f"error: {old / 'manifest.json'} was written by another version of jobs.rollout (manifest version 1; "
            "this one writes version 2)") in capsys.readouterr().err


def test_parquet_output_with_scores_matches_the_jsonl_run(first_run, prompts, tmp_path):
    import pyarrow.parquet as pq

    from rewards import RewardsConfig, RewardService, RewardTermConfig, Sample
    from tests.rewards.batches import batch_of

    out = tmp_path / "parquet"
    assert rollout_main(argv(prompts, out, "--workers", "1", "--set", "generate.format=parquet", "--set",
                             "generate.score=true", "--set", "rewards.tasks={text: [{name: format, weight: 0.5}]}")) == 0
    table = pq.read_table(out / "rollouts.parquet")
    rows = table.to_pylist()
    reference = read_jsonl(first_run / "rollouts.jsonl")
    assert table.num_rows == 10 and len(list((out / "shards").glob("shard-*.parquet"))) == 3
    generated = ("uid", "sample_index", "prompt_ids", "response", "response_ids", "reveal_step", "seed", "seed_row")
    # another worker count and format, the same tokens: rows depend only on (seed, shard, call) and the model
    assert [{k: r[k] for k in generated} for r in rows] == [{k: r[k] for k in generated} for r in reference]
    samples = [Sample("text", r["prompt"], r["response"], answer=r["answer"]) for r in rows]
    with RewardService(RewardsConfig(tasks={"text": [RewardTermConfig("format", 0.5)]})) as service:
        expected, _ = service.score(batch_of(samples))
    assert [r["reward"] for r in rows] == expected.total
    assert [r["rewards"] for r in rows] == [{"format": v} for v in expected.rewards["format"]]
    assert [r["reward_reasons"] for r in rows] == [{"format": v} for v in expected.reward_reasons["format"]]


# ------------------------------------------------------------------------------------------------ every kind
MAGVIT = dict(ch=8, z_channels=6, encoder_ch_mult=(1, 1), encoder_num_res_blocks=(1, 1), decoder_ch_mult=(1, 1),
              decoder_num_res_blocks=(1, 1), num_groups=4)  # 64 codes, x2 downsampling: 16 codes = 8 px images
IMAGE = ImageSamplerConfig(steps=4, guidance_scale=1.0, text_length=12)
MIXED = [{"uid": "t1", "task": "text", "prompt": "Compute 2+3.", "answer": "5"},
         {"uid": "c1", "task": "captioning", "prompt": "Describe the image.", "image": "cat.png"},
         {"uid": "i1", "task": "t2i", "prompt": "a cat"},
         {"uid": "c2", "task": "captioning", "prompt": "What is shown?"},  # line 4: an mmu row without its image
         {"uid": "i/2", "task": "t2i", "prompt": "the dog"},
         {"uid": "t2", "task": "text", "prompt": "Compute 4*4.", "answer": "16"}]


def test_text_mmu_and_t2i_rows_are_in_process_sampling_of_the_training_requests(ray_session, tmp_path):
    from PIL import Image

    from jobs.data import load_image
    from model.magvit import MagvitConfig, random_image_tokenizer, save_image_tokenizer

    vq = save_image_tokenizer(random_image_tokenizer(MagvitConfig(**MAGVIT), seed=2), tmp_path / "vq")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(tmp_path / "cat.png")
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in MIXED))
    out = tmp_path / "out"
    assert rollout_main(["--model", "tiny-mmada", "--prompts", str(data), "--out", str(out), "--samples-per-prompt",
                         "2", "--set", "generate.shard_size=3", "--set", "generate.batch_size=4", "--set",
                         f"run.seed={SEED}", "--set", "data.thinking=false", "--set", SAMPLER, "--set",
                         "rollout.image_sampler={steps: 4, guidance_scale: 1.0, text_length: 12}", "--set",
                         f"rollout.image_tokenizer={vq}", "--set", "rollout.cpus_per_worker=0.5"]) == 0
    rows = read_jsonl(out / "rollouts.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bad_rows"] == [f"{data}:4: task 'captioning' needs an image (it is sampled as image "
                                   "understanding); 'image' is missing"]
    uids = ["t1", "c1", "i1", "i/2", "t2"]  # shards of 3 prompts: [t1, c1, i1], [i/2, t2]
    assert [(r["uid"], r["sample_index"]) for r in rows] == [(u, i) for u in uids for i in range(2)]

    # expected: one in-process worker, the requests built here by kind, calls of 4 rows seeded (run seed, shard, call)
    worker = RolloutWorker(lambda: tiny_twin("tiny-mmada", seed=SEED), image_tokenizer=str(vq))
    tokenizer = worker.tokenizer
    records = {row["uid"]: row for row in MIXED}
    kinds = {"text": "text", "captioning": "mmu", "t2i": "t2i"}

    def request(uid, index):
        record, kind = records[uid], kinds[records[uid]["task"]]
        ids = (tokenizer(record["prompt"], add_special_tokens=False)["input_ids"] if kind == "t2i"
               else chat_prompt_ids(tokenizer, record["prompt"], thinking=False))
        image = load_image(tmp_path / record["image"]) if kind == "mmu" else None
        return PromptRequest(tuple(ids), uid, index, kind, task=record["task"], prompt=record["prompt"],
                             answer=record.get("answer"), image=image)

    lo = len(tokenizer)  # image code k is token id len(tokenizer) + k
    at = 0
    for shard, members in enumerate([uids[:3], uids[3:]]):
        requests = [request(u, i) for u in members for i in range(2)]
        for call, start in enumerate(range(0, len(requests), 4)):
            part = requests[start:start + 4]
            batch = worker.sample(part, text=TEXT, image=IMAGE, seed=call_seed(shard, call))
            for r, req in enumerate(part):
                row = rows[at]
                at += 1
                span = slice(int(batch.response_start[r]), int(batch.response_end[r]))
                assert (row["uid"], row["sample_index"], row["kind"], row["task"]) == (req.uid, req.sample_index,
                                                                                       req.kind, req.task)
                assert (row["seed"], row["seed_row"], row["shard"]) == (call_seed(shard, call), r, shard)
                assert row["prompt_ids"] == list(req.prompt_ids) and row["response"] == batch.response[r]
                assert row["reveal_step"] == batch.reveal_step[r, span].tolist()
                if req.kind == "t2i":  # the image codes, and the decoded image as a PNG beside the shards
                    assert row["response_ids"] == [t - lo for t in batch.input_ids[r, span].tolist()]
                    assert len(row["response_ids"]) == row["response_length"] == 16 and row["response"] == ""
                    assert all(0 <= code < 64 for code in row["response_ids"])
                    name = {"i1": "i1", "i/2": "i%2F2"}[req.uid]
                    assert row["image"] == f"images/{name}-{req.sample_index}.png"
                    assert np.array_equal(np.asarray(Image.open(out / row["image"])), batch.image[r])
                else:
                    assert row["response_ids"] == batch.input_ids[r, span].tolist() and len(row["response_ids"]) == 8
                    assert row["image"] is None
    assert at == len(rows) == 10
    assert sorted(p.name for p in (out / "images").iterdir()) == ["i%2F2-0.png", "i%2F2-1.png", "i1-0.png",
                                                                  "i1-1.png"]


# ------------------------------------------------------------------------------------------------ faults
def stop_first_worker_once(monkeypatch, stopped: list):
    """jobs.rollout's `await_ready`, which SIGSTOPs the first worker right after the workers are first ready."""
    def ready(workers, cfg):
        await_ready(workers, cfg)
        if not stopped:
            stopped.append(ray.get(workers[0].__ray_call__.remote(lambda self: os.getpid())))
            os.kill(stopped[0], signal.SIGSTOP)

    monkeypatch.setattr(jobs.rollout, "await_ready", ready)


def test_a_stopped_worker_is_replaced_and_its_shard_rerun_identically(first_run, prompts, tmp_path, monkeypatch):
    stopped: list[int] = []
    stop_first_worker_once(monkeypatch, stopped)
    out = tmp_path / "run"
    started = time.monotonic()
    try:
        assert rollout_main(argv(prompts, out, "--workers", "2", "--set", "rollout.sample_timeout_s=5")) == 0
    finally:
        try:
            os.kill(stopped[0], signal.SIGCONT)  # if it is still there at all
        except (IndexError, ProcessLookupError):
            pass
    assert time.monotonic() - started < 60  # the stopped worker was given up on at its deadline
    summary = json.loads((out / "summary.json").read_text())
    assert summary["worker_restarts"] == 1 and summary["worker_timeouts"] == 1
    for shard in range(3):
        assert shard_path(out, shard, "jsonl").read_bytes() == shard_path(first_run, shard, "jsonl").read_bytes()
    assert gone(stopped[0])  # killed when it was replaced


def gone(pid: int, within_s: float = 20.0) -> bool:
    import psutil

    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.2)
    return False


def job_config(prompts, *extra):
    return load_config(DEFAULT_CONFIG, ["model.path=tiny", f"generate.prompts={prompts}", "generate.out=unused",
                                        "generate.shard_size=2", f"generate.batch_size={BATCH}", f"run.seed={SEED}",
                                        f"generate.samples_per_prompt={SAMPLES}", "data.thinking=true", SAMPLER,
                                        "rollout.cpus_per_worker=0.5", *extra])


def scheduler_for(cfg, group, max_attempts):
    import functools

    return ShardScheduler(group, timeout_s=cfg.rollout.sample_timeout_s, max_attempts=max_attempts,
                          ready=functools.partial(await_ready, cfg=cfg))


def test_a_dead_worker_is_replaced_the_sampler_error_stops_the_run(first_run, prompts, ray_session):
    from jobs.multitask import image_loader
    from jobs.rollout_plan import shard_calls
    from jobs.rollout_shards import shard_rows

    cfg = job_config(prompts)
    plan = make_plan(cfg)
    load = image_loader(4)
    group = ActorGroup("rollout worker", 1, lambda index, generation: start_worker(cfg.rollout, plan.network_source,
                                                                                   "fp32", index, generation))
    try:
        await_ready(list(group), cfg)
        ray.kill(group[0])  # dead before its shard arrives: the shard's calls fail with RayActorError
        scheduler = scheduler_for(cfg, group, max_attempts=2)
        finished = {shard.index: shard_rows(shard, shard_calls(shard, cfg, plan.tokenizer, load), batches, cfg)[0]
                    for shard, batches in scheduler.run(plan.shards, sampler_submit(cfg, plan, load))}
        assert sorted(finished) == [0, 1, 2] and group.restarts == 1 and scheduler.failures == {"died": 1}
        for index, rows in finished.items():  # the redone shard is the undisturbed run's, token for token
            assert rows == read_jsonl(shard_path(first_run, index, "jsonl"))

        def bad_submit(worker, shard):
            return [worker.sample.remote([], text=TEXT)]

        with pytest.raises(RolloutJobError, match="shard 0 failed: ValueError: sample: no requests"):
            list(scheduler_for(cfg, group, max_attempts=2).run(plan.shards[:1], bad_submit))

        ray.kill(group[0])
        with pytest.raises(RolloutJobError, match=r"shard 0: 1 tries failed \(generate.max_attempts 1\); last: "
                                                  r"worker 0: .*Actor"):
            list(scheduler_for(cfg, group, max_attempts=1).run(plan.shards[:1], sampler_submit(cfg, plan, load)))
    finally:
        group.shutdown()


def test_workers_that_cannot_build_are_one_clear_error(prompts, tmp_path, ray_session, capsys):
    from model.magvit import MagvitConfig, random_image_tokenizer, save_image_tokenizer

    vq = save_image_tokenizer(random_image_tokenizer(MagvitConfig(**MAGVIT), seed=2), tmp_path / "vq")
    for weights in vq.glob("*.safetensors"):
        weights.unlink()  # config.json is there (the driver reads it), the weights are not
    data = tmp_path / "t2i.jsonl"
    data.write_text(json.dumps({"task": "t2i", "prompt": "a cat"}) + "\n")
    assert rollout_main(["--model", "tiny-mmada", "--prompts", str(data), "--out", str(tmp_path / "out"), "--set",
                         f"rollout.image_tokenizer={vq}", "--set", "rollout.cpus_per_worker=0.5"]) == 2
    error = capsys.readouterr().err
    assert (f"error: the rollout workers could not build model.path 'tiny-mmada' (rollout.image_tokenizer "
            f"'{vq}'): start failed on rollout worker 0 of 1: ") in error


# ------------------------------------------------------------------------------------------------ inputs
def test_bad_inputs_exit_2_before_anything_starts(prompts, tmp_path, capsys):
    cases = [
        (["--set", "generate.shard_size=0"], "generate.shard_size: 0; need at least 1"),
        (["--set", "generate.shards=2"], "generate.shards"),
        (["--set", "generate.format=csv"], "generate.format"),
        (["--set", "generate.prompts=p.txt"], "generate.prompts: 'p.txt' must be a .jsonl or .parquet file"),
        (["--workers", "0"], "rollout.num_workers: 0; need at least 1 rollout worker"),
        (["--set", "rollout.sampler.threshold=0.9", "--set", "rollout.sampler.remasking=random"],
         "threshold: 0.9 needs remasking='low_confidence'"),
        (["--set", "rollout.cpus_per_worker=0"], "rollout.cpus_per_worker=0 and rollout.gpus_per_worker=0"),
        (["--set", "rollout.sampler={gen_length: 4064, steps: 127, block_length: 32}"],
         f"no prompt the model can take:\n  {prompts}:1: the chat prompt has"),
        (["--set", "generate.score=true", "--set", "rewards.tasks={math: [{name: format}]}"],
         "rewards.tasks: no reward terms for the data task 'text'"),
    ]
    for extra, culprit in cases:
        assert rollout_main(argv(prompts, tmp_path / "a", *extra)) == 2, extra
        assert culprit in capsys.readouterr().err, extra

    assert rollout_main(argv(prompts, tmp_path / "a")[:4] + ["--out", ""]) == 2
    assert "generate.out: empty string" in capsys.readouterr().err
    assert rollout_main(["--model", "tiny", "--prompts", str(prompts)]) == 2
    assert "error: invalid config:\n  generate.out: not set; give the output directory (--out DIR" in \
        capsys.readouterr().err
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({"task": "t2i", "prompt": "a cat"}) + "\n")
    assert rollout_main(argv(mixed, tmp_path / "b")) == 2
    error = capsys.readouterr().err
    assert "model.path: 'tiny' has no image vocabulary" in error and "rollout.image_tokenizer: not set" in error

    stray = tmp_path / "d" / "shards"
    stray.mkdir(parents=True)
    (stray / "shard-00000.jsonl").write_text("{}\n")
    assert rollout_main(argv(prompts, tmp_path / "d")) == 2
    assert "has files but" in capsys.readouterr().err
    assert rollout_main(["--model", str(tmp_path), "--out", "x"]) == 2
    assert f"model.path: {str(tmp_path)!r} has no config.json" in capsys.readouterr().err
    assert rollout_main(argv(tmp_path / "missing.jsonl", tmp_path / "f")) == 2
    assert "does not exist" in capsys.readouterr().err


def test_print_config_shows_the_tree_with_the_aliases_and_imports_no_ray(prompts):
    probe = ("import contextlib, io, json, sys\nimport jobs.rollout\n"
             "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
             f"    code = jobs.rollout.main(['--out', 'o', '--workers', '3', '--prompts', {str(prompts)!r}, "
             "'--samples-per-prompt', '4', '--model', 'tiny', '--print-config'])\n"
             "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'deepspeed'))\n"
             "print(json.dumps({'code': code, 'text': out.getvalue(), 'loaded': loaded}))\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["code"] == 0 and report["loaded"] == []
    cfg = load_config(DEFAULT_CONFIG, ["generate.out=o", "rollout.num_workers=3", f"generate.prompts={prompts}",
                                       "generate.samples_per_prompt=4", "model.path=tiny"])
    from jobs.configtree import commented_yaml

    assert report["text"] == commented_yaml(cfg)  # each alias is its one --set


@pytest.mark.parametrize("model", ["demo", "tiny", "tiny-mmada"])
def test_a_named_model_is_recorded_by_name_and_a_path_as_an_absolute_path(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert identity(load_config(DEFAULT_CONFIG, [f"model.path={model}"]))["model.path"] == model
    settings = identity(load_config(DEFAULT_CONFIG, ["model.path=ckpt", "rollout.image_tokenizer=vq"]))
    assert settings["model.path"] == str(tmp_path / "ckpt") and settings["rollout.image_tokenizer"] == str(tmp_path / "vq")
    assert "rewards.tasks.text" not in settings  # not scored: the reward terms shape nothing


def test_build_requests_takes_the_sample_count(prompts):
    from jobs.multitask import build_requests

    cfg = job_config(prompts)
    plan = make_plan(cfg)
    requests = build_requests(plan.records[:2], plan.tokenizer, cfg, lambda path: None, samples=3)
    assert [(r.uid, r.sample_index) for r in requests] == [(u, i) for u in ("q1", "q2") for i in range(3)]
