"""The training driver end to end: 2 rollout workers, 2 learner ranks (ZeRO-2, gloo), and bad configs.

Training test: a random tiny policy scores 0 on correctness, so the run is rewarded by response length
(tests/jobs/helpers/length_reward.py), which gives nonzero group advantages. After two steps:
- every trainable parameter tensor of the exported policy differs from the tiny twin's initial weights.
  The check is per tensor, not per element: an embedding row of a token that never enters the network
  gets no gradient, and AdamW (weight decay 0) leaves it exactly as it was. Rows that must move are
  checked too: the embeddings of every prompt token and of [MASK], and every row of the LM head (the
  softmax spreads gradient over the whole vocabulary);
- both learner ranks hold identical weights, and the export is exactly them;
- the rollout workers hold the learner's weights (checksums) at the final policy version;
- no process of the run (Ray's, the actors', DeepSpeed's rendezvous) listened on all interfaces.
The one-GPU recipe's learner setting (LoRA in bf16 with gradient checkpointing; here with the broadcast sync
and ZeRO-2 too): one step trains the adapters from B = 0, and every rank and worker ends on the same weights.

Bad configs: an unknown key, an impossible resource request and a missing data file make
`python -m jobs.train` exit with code 2 and a message naming the key (or file), before Ray starts;
joined to a running cluster, an impossible request fails before any placement group or actor exists.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jobs.config import load_config
from jobs.train import main, train

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "tests/jobs/configs/tiny_lengths.yaml"
LENGTH_TERM = "tests/jobs/helpers/length_reward.py:response_length"  # the config's reward term, as rows name it


def test_two_workers_two_ranks_train_every_parameter_and_sync(tmp_path, ray_session, monkeypatch, socket_watch):
    from actors.weight_sync import checksum, named_state
    from model import load
    from model.templates import chat_prompt_ids
    from model.tiny import tiny_model

    monkeypatch.chdir(REPO)  # the config's reward file and data paths are relative to the repository
    cfg = load_config(CONFIG, [f"run.output_dir={tmp_path}", "run.name=train", "run.steps=2"])
    summary = train(cfg)
    assert socket_watch.seen and not socket_watch.wildcard(), socket_watch.seen

    assert summary["policy_version"] == 2 and summary["worker_versions"] == [2, 2]
    first, second = summary["learner_checksums"]
    assert first == second, "the two ZeRO-2 ranks hold different weights"
    assert summary["worker_checksums"] == [first, first], "a rollout worker does not hold the learner's weights"

    metrics = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(m["health/rows_zero_advantage"] < 8 and m["loss/pg_loss"] != 0 for m in metrics), "nothing to learn"
    # the fixed schedule of tiny_lengths.yaml: 8 forwards for 16 tokens
    assert all(m["rollout/forwards_per_token"] == 0.5 and m["rollout/tokens_per_forward"] == 2 for m in metrics)

    initial = tiny_model(seed=cfg.run.seed)
    exported = load(summary["export"])
    assert checksum(named_state(exported.network)) == first  # the export is the learner's weights, exactly
    before, after = dict(initial.network.named_parameters()), dict(exported.network.named_parameters())
    assert sorted(before) == sorted(after)
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert not unchanged, f"parameters that did not train: {unchanged}"

    wte, head = "model.transformer.wte.weight", "model.transformer.ff_out.weight"
    rollouts = [json.loads(line) for line in (tmp_path / "train" / "rollouts.jsonl").read_text().splitlines()]
    records = {json.loads(line)["uid"]: json.loads(line)["prompt"]
               for line in (REPO / cfg.data.train).read_text().splitlines()}
    # readable rollouts (logging.rollout_text): the sample's text, its reward by term (the length reward is the
    # response's length in characters), the group z-score the update used (by a loop), the reveal order
    for step in rollouts:
        groups: dict[str, list[dict]] = {}
        for row in step["rows"]:
            groups.setdefault(row["uid"], []).append(row)
            assert row["prompt"] == records[row["uid"]] and row["kind"] == "text" and row["answer"] is not None
            assert row["rewards"] == {LENGTH_TERM: float(len(row["response"]))} == {LENGTH_TERM: row["reward"]}
            assert row["reasons"] == {} and row["total_reason"] is None
            assert 1 <= len(row["reveal"]) <= 16 and all(0 <= s < 8 for s in row["reveal"])  # 8 forwards, 16 slots
        for members in groups.values():
            mean = sum(r["reward"] for r in members) / len(members)
            std = (sum((r["reward"] - mean) ** 2 for r in members) / len(members)) ** 0.5
            expected = [0.0 if std == 0 else (r["reward"] - mean) / (std + 1e-6) for r in members]
            assert [r["advantage"] for r in members] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    seen = {t for step in rollouts for row in step["rows"]
            for t in chat_prompt_ids(initial.tokenizer, records[row["uid"]], thinking=cfg.data.thinking)}
    seen.add(initial.config.mask_token_id)
    moved = (before[wte] != after[wte]).any(dim=1)  # [V] embedding rows that changed
    assert all(moved[t] for t in seen), sorted(t for t in seen if not moved[t])
    assert (before[head] != after[head]).any(dim=1).all(), "an LM-head row did not train"


def test_lora_in_bf16_with_checkpointing_and_broadcast_sync_trains_the_adapters(tmp_path, ray_session, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.chdir(REPO)
    cfg = load_config(CONFIG, [f"run.output_dir={tmp_path}", "run.name=lora", "run.steps=1", "checkpoint.every=0",
                               "learner.lora.rank=4", "learner.dtype=bf16", "learner.gradient_checkpointing=true",
                               "rollout.weight_sync.backend=broadcast"])
    summary = train(cfg)
    assert summary["policy_version"] == 1 and summary["worker_versions"] == [1, 1]
    first = summary["learner_checksums"][0]
    assert summary["learner_checksums"] == [first] * 2 and summary["worker_checksums"] == [first] * 2
    adapter = load_file(Path(summary["export"]) / "adapter" / "adapter_model.safetensors")
    b_matrices = {name: tensor for name, tensor in adapter.items() if "lora_B" in name}
    assert b_matrices and all(t.dtype == torch.bfloat16 for t in adapter.values())
    assert all(t.abs().max() > 0 for t in b_matrices.values()), "an adapter's B stayed at its zero init"


PROBE = """
import contextlib, io, json, sys
import ray

def tripwire(*args, **kwargs):
    raise AssertionError("ray.init was called: the bad config was not caught before Ray started")

ray.init = tripwire
from jobs.train import main

results = {}
for case, argv in json.loads(sys.argv[1]).items():
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = main(argv)
    results[case] = {"code": code, "stderr": stderr.getvalue()}
print(json.dumps({"results": results, "ray_initialized": ray.is_initialized()}))
"""


def test_bad_configs_fail_before_ray_starts_naming_the_key(tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text(CONFIG.read_text().replace("zero_stage: 2", "zero_stag: 2"))
    base = ["--set", f"run.output_dir={tmp_path}"]
    cases = {
        "unknown_key": ["--config", str(typo), *base],
        "too_many_ranks": ["--config", str(CONFIG), *base, "--set", "learner.num_ranks=64",
                           "--set", "run.prompts_per_step=32"],  # 64 rows: divisible, but 64 + 2 CPUs > 4
        "gpu_on_cpu_node": ["--config", str(CONFIG), *base, "--set", "rollout.gpus_per_worker=1",
                            "--set", "cluster.num_gpus=0"],
        "missing_data": ["--config", str(CONFIG), *base, "--set", f"data.train={tmp_path / 'nope.jsonl'}"],
    }
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(cases)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    results = report["results"]
    assert not report["ray_initialized"]
    assert {case: r["code"] for case, r in results.items()} == dict.fromkeys(cases, 2)
    assert "learner.zero_stag" in results["unknown_key"]["stderr"]
    assert "zero_stage" in results["unknown_key"]["stderr"]  # the valid keys are listed
    assert "ResourceError" in results["too_many_ranks"]["stderr"]
    assert "learner.num_ranks" in results["too_many_ranks"]["stderr"]
    assert "rollout.gpus_per_worker=1" in results["gpu_on_cpu_node"]["stderr"]
    assert "nope.jsonl" in results["missing_data"]["stderr"] and "DataError" in results["missing_data"]["stderr"]


def test_impossible_resources_on_a_joined_cluster_start_no_actor(tmp_path, ray_session, capsys):
    import ray
    from ray._private import state  # the GCS tables (the public state API needs the dashboard)

    actors_before, groups_before = set(state.actors()), set(ray.util.placement_group_table())
    code = main(["--config", str(CONFIG), "--set", f"run.output_dir={tmp_path}", "--set", "learner.cpus_per_rank=8"])
    assert code == 2
    assert "learner.cpus_per_rank=8" in capsys.readouterr().err
    assert set(state.actors()) == actors_before and set(ray.util.placement_group_table()) == groups_before
