"""`python -m jobs.train --dry-run` (jobs/preflight.py): config, data schema and memory plan, exit before Ray; the
four 8B recipes of jobs/configs pass it and fit where they say; a GPU run logs its memory plan at start."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest
from PIL import Image

from jobs.config import CONFIG_DIR, load_config
from jobs.preflight import log_gpu_plan
from jobs.train import main

GSM8K_ROWS = [{"uid": f"gsm8k-{i}", "prompt": f"Tom has {i} apples and buys 3 more. How many now?",
               "answer": str(i + 3), "task": "text"} for i in range(3)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def mixed_rows(tmp_path):
    """A text row, an image-understanding row with its image, a text-to-image row."""
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "cat.png")
    return [GSM8K_ROWS[0], {"uid": "cap-1", "task": "captioning", "prompt": "Describe the image.", "image": "cat.png",
                            "answer": "a black square"}, {"uid": "t2i-1", "task": "t2i", "prompt": "a red circle"}]


def dry_run(monkeypatch, capsys, *args):
    """jobs.train's main with --dry-run, in this process, with Ray's modules hidden from sys.modules (other tests
    may have imported Ray): (exit status, stdout, stderr, whether Ray was imported by the dry run)."""
    for name in [n for n in sys.modules if n == "ray" or n.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    status = main([*args, "--dry-run"])
    out, err = capsys.readouterr()
    return status, out, err, any(n == "ray" or n.startswith("ray.") for n in sys.modules)


RECIPES = ["llada8b_gsm8k_full_8gpu", "llada8b_gsm8k_lora_1gpu", "llada8b_gsm8k_lora_8gpu", "mmada8b_mixed_node"]
"""Each puts a learner rank and a rollout worker on every GPU (colocation)."""


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_pass_the_dry_run_and_fit_80_gib(recipe, tmp_path, monkeypatch, capsys):
    rows = mixed_rows(tmp_path) if recipe.startswith("mmada") else GSM8K_ROWS
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    status, out, err, ray_imported = dry_run(monkeypatch, capsys, "--config", str(CONFIG_DIR / f"{recipe}.yaml"),
                                             "--set", f"data.train={train}")
    assert status == 0, err
    assert not ray_imported
    assert f"data.train: {len(rows)} usable row(s) in {train}" in out
    assert "is not downloaded yet" in out  # planned from the published shape
    line = next(line for line in out.splitlines() if "one GPU holds" in line)
    assert line.startswith("  one GPU holds a learner rank + rollout worker: ") and line.endswith("fits in 80 GiB"), line
    if recipe.startswith("mmada"):
        assert "kinds {'mmu': 1, 't2i': 1, 'text': 1}" in out
        assert "note: rollout.image_tokenizer: checkpoints/magvitv2 not found" in out
    else:
        assert "note: data.eval: data/gsm8k/test.jsonl not found" in out


def test_the_one_gpu_lora_recipe_has_no_reference_copy_and_sums_both_processes():
    from jobs.bench.memory import plan_for

    cfg = load_config(CONFIG_DIR / "llada8b_gsm8k_lora_1gpu.yaml")
    plan = plan_for(cfg)
    rows = {r.what: r.bytes for r in plan.learner}
    assert rows["reference"] == 0 and plan.colocated
    assert plan.per_gpu() == {"learner rank + rollout worker": plan.learner_bytes + plan.worker_bytes}
    assert plan.fits


def test_dry_run_errors_exit_2_before_ray(tmp_path, monkeypatch, capsys):
    demo = str(CONFIG_DIR / "demo.yaml")
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"prompt": "Hi", "answer": "1", "task": "poetry"}])
    status, out, err, ray_imported = dry_run(monkeypatch, capsys, "--config", demo, "--set", f"data.train={odd}")
    assert status == 2 and not ray_imported
    assert "error: rewards.tasks: no reward terms for the data task 'poetry'" in err
    assert "data.train: 1 usable row(s)" in out and "dry run: errors above" in out

    empty = write_jsonl(tmp_path / "empty.jsonl", [{"answer": "no prompt"}])
    status, out, err, _ = dry_run(monkeypatch, capsys, "--config", demo, "--set", f"data.train={empty}")
    assert status == 2 and "error: data.train: " in err

    status, _, err, ray_imported = dry_run(monkeypatch, capsys, "--config", demo, "--set", "model.path=/x/unknown")
    assert status == 2 and not ray_imported
    assert "model.path: '/x/unknown' has no config.json and its name is none of the published checkpoints" in err

    status, _, err, _ = dry_run(monkeypatch, capsys, "--config", str(CONFIG_DIR / "llada8b_gsm8k_lora_1gpu.yaml"),
                                "--set", "rollout.weight_sync.backend=broadcast")
    assert status == 2
    assert ("rollout.weight_sync.backend: broadcast with learner.gpus_per_rank 0.6: a learner rank and a rollout "
            "worker may share a GPU, and NCCL refuses two members of one group on a GPU; use object_store") in err


def test_a_gpu_run_logs_its_plan(caplog):
    caplog.set_level(logging.INFO, logger="unigrpo.train")
    log_gpu_plan(load_config(CONFIG_DIR / "demo.yaml"))  # CPU: nothing
    assert not caplog.records
    log_gpu_plan(load_config(CONFIG_DIR / "llada8b_gsm8k_lora_1gpu.yaml"))
    assert [r.levelname for r in caplog.records] == ["INFO"]
    assert "one GPU holds a learner rank + rollout worker" in caplog.records[0].getMessage()
    caplog.clear()
    # full fine-tuning of 8B on one GPU: policy, reference, gradients and fp32 optimizer state do not fit
    log_gpu_plan(load_config(CONFIG_DIR / "llada8b_gsm8k_lora_1gpu.yaml", ["learner.lora=null"]))
    assert [r.levelname for r in caplog.records] == ["INFO", "WARNING"]
    assert "does NOT fit in 80 GiB" in caplog.records[0].getMessage()
    caplog.clear()
    log_gpu_plan(load_config(CONFIG_DIR / "demo.yaml", ["model.path=/x/unknown", "learner.gpus_per_rank=1"]))
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "no memory plan: model.path: '/x/unknown'" in caplog.records[0].getMessage()
