"""Readable rollouts: `rollout_rows` (what jobs.train writes to rollouts.jsonl per sample) and `python -m jobs.show`
(which prints one step of it), on batches built by hand, scored as the reward service scores and with the
advantages of `batch_advantages`, the training step's own function."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from actors.config import LoggingConfig
from jobs.metrics import MetricsLogger
from jobs.show import format_step, main, step_ranges
from jobs.train_parts import StepResult, rollout_rows
from rl.advantages import batch_advantages
from rl.batch import RolloutBatch
from rl.config import AdvantageConfig

REPO = Path(__file__).resolve().parents[2]
EOS = 9


def text_batch() -> RolloutBatch:
    """Two groups of two text samples: `p1` (task math: correctness 2.0 + format 0.5) and `p2` (task story:
    length 1.0); 2 prompt tokens, 3 response slots, EOS = 9, the totals the reward service would write."""
    sequences = torch.tensor([[5, 6, 1, EOS, EOS],   # scored: slots 0-1 (through the first EOS)
                              [5, 6, 2, 3, EOS],     # scored: slots 0-2
                              [7, 8, EOS, EOS, EOS],  # scored: slot 0
                              [7, 8, 4, 4, 4]])      # no EOS: slots 0-2
    reveal = torch.tensor([[1, 0, 2], [0, 2, 1], [2, 1, 0], [1, 1, 0]])  # [B, L] sampler step per slot
    batch = RolloutBatch.from_sampler(
        sequences, reveal, [2] * 4, eos_ids=(EOS,), kind="text", uid=["p1", "p1", "p2", "p2"],
        sample_index=[0, 1, 0, 1], policy_version=[3, 3, 3, 2], task=["math", "math", "story", "story"],
        prompt=["What is 1+1?\nThink.", "What is 1+1?\nThink.", "Tell a story.", "Tell a story."],
        answer=["2", "2", None, None], response=["\\boxed{2}", "two\nlines", "", "once upon"], forwards=3)
    return dataclasses.replace(
        batch,
        rewards={"correctness": [1.0, 0.0, None, None], "format": [1.0, None, None, None],
                 "length": [None, None, None, 0.75]},
        reward_reasons={"correctness": [None, None, "absent", "absent"], "format": [None, "no_answer", "absent", "absent"],
                        "length": ["absent", "absent", "empty", None]},
        total=[2.5, None, None, 0.75], total_reason=[None, "format: no_answer", "length: empty", None])


def step_result(batch: RolloutBatch, cfg: AdvantageConfig | None = None) -> StepResult:
    kept, advantages, _ = batch_advantages(batch, cfg or AdvantageConfig())
    return StepResult(batch, kept, advantages, {})


def test_rollout_rows_carry_text_rewards_advantage_and_reveal_order():
    rows = rollout_rows(step_result(text_batch()), text=True)
    # p1: one scorable total (2.5), the other None -> zero spread, Â = 0 for both; p2 likewise (0.75 and None)
    assert rows == [
        {"uid": "p1", "sample": 0, "task": "math", "version": 3, "reward": 2.5, "kind": "text",
         "prompt": "What is 1+1?\nThink.", "answer": "2", "response": "\\boxed{2}",
         "rewards": {"correctness": 1.0, "format": 1.0}, "reasons": {}, "total_reason": None, "advantage": 0.0,
         "reveal": [1, 0]},
        {"uid": "p1", "sample": 1, "task": "math", "version": 3, "reward": None, "kind": "text",
         "prompt": "What is 1+1?\nThink.", "answer": "2", "response": "two\nlines",
         "rewards": {"correctness": 0.0, "format": None}, "reasons": {"format": "no_answer"},
         "total_reason": "format: no_answer", "advantage": 0.0, "reveal": [0, 2, 1]},
        {"uid": "p2", "sample": 0, "task": "story", "version": 3, "reward": None, "kind": "text",
         "prompt": "Tell a story.", "answer": None, "response": "", "rewards": {"length": None},
         "reasons": {"length": "empty"}, "total_reason": "length: empty", "advantage": 0.0, "reveal": [2]},
        {"uid": "p2", "sample": 1, "task": "story", "version": 2, "reward": 0.75, "kind": "text",
         "prompt": "Tell a story.", "answer": None, "response": "once upon", "rewards": {"length": 0.75},
         "reasons": {}, "total_reason": None, "advantage": 0.0, "reveal": [1, 1, 0]},
    ]
    compact = rollout_rows(step_result(text_batch()), text=False)
    assert compact == [{k: row[k] for k in ("uid", "sample", "task", "version", "reward")} for row in rows]


def test_advantages_are_the_updates_and_a_dropped_group_has_none():
    batch = text_batch()
    batch = dataclasses.replace(batch, total=[2.5, 0.5, 1.0, 0.75], total_reason=[None] * 4)
    rows = rollout_rows(step_result(batch), text=True)
    # p1: totals 2.5, 0.5 -> mean 1.5, population std 1.0 -> ±1 / (1 + 1e-6); p2: 1.0, 0.75 -> ±0.125 / (0.125 + 1e-6)
    assert [row["advantage"] for row in rows] == pytest.approx(
        [1 / (1 + 1e-6), -1 / (1 + 1e-6), 0.125 / (0.125 + 1e-6), -0.125 / (0.125 + 1e-6)], rel=1e-6)
    # p1's mean correctness is 0.5 > 0.4: dropped, so its rows were not trained on (no advantage); p2 has no
    # correctness value and is kept
    rows = rollout_rows(step_result(batch, AdvantageConfig(drop_groups_above=0.4)), text=True)
    assert [row["advantage"] for row in rows][:2] == [None, None]
    assert [row["advantage"] for row in rows][2:] == pytest.approx([1.0, -1.0], rel=1e-4)
    shown = format_step({"step": 5, "rows": rows}, Path("run"), "p1")
    assert "  [0] total 2.5  advantage none (group dropped)  v3  correctness=1 format=1\n" in shown


def t2i_batch() -> RolloutBatch:
    """One t2i prompt, two samples (4 image slots, no EOS), generated 2x2 images of one colour each."""
    images = [np.full((2, 2, 3), 40, np.uint8), np.full((2, 2, 3), 200, np.uint8)]
    batch = RolloutBatch.from_sampler(
        torch.tensor([[5, 6, 11, 12, 13, 14], [5, 6, 12, 12, 13, 13]]), torch.tensor([[0, 1, 1, 0]] * 2), [2, 2],
        eos_ids=(), kind="t2i", uid=["cat", "cat"], sample_index=[0, 1], policy_version=4, task=["t2i"] * 2,
        prompt=["a red cat"] * 2, image=images)
    return dataclasses.replace(batch, rewards={"clip": [0.3, 0.1]}, reward_reasons={"clip": [None, None]},
                               total=[0.3, 0.1], total_reason=[None, None])


def write_run(run_dir: Path, *, text: bool = True) -> Path:
    """A run directory as jobs.train's log_step leaves it: step 1 text, step 2 t2i with its grid, step 3 t2i
    without one (not a sample-table step)."""
    with MetricsLogger(run_dir, LoggingConfig(tensorboard=False, rollout_text=text)) as logger:
        logger.log_rollouts(1, rollout_rows(step_result(text_batch()), text=text))
        batch = t2i_batch()
        logger.log_image_grid(2, [batch.image], ["[t2i] a red cat | rewards: 0.300 0.100"])
        logger.log_rollouts(2, rollout_rows(step_result(batch), text=text))
        logger.log_rollouts(3, rollout_rows(step_result(batch), text=text))
    return run_dir


def show(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_show_prints_a_steps_groups_with_rewards_advantages_and_reveal_order(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    code, out, err = show(capsys, run, "--step", 1)
    assert code == 0 and err == ""
    assert out == f"""{run} step 1: 4 samples of 2 prompts, policy version 2, 3

== p1  (group 1/2, task math, kind text)
  prompt: What is 1+1?
          Think.
  answer: 2
  [0] total 2.5  advantage +0.0000  v3  correctness=1 format=1
    response: \\boxed{{2}}
    reveal: 1 0
  [1] total None (format: no_answer)  advantage +0.0000  v3  correctness=0 format=None (no_answer)
    response: two
              lines
    reveal: 0 2 1

== p2  (group 2/2, task story, kind text)
  prompt: Tell a story.
  [0] total None (length: empty)  advantage +0.0000  v3  length=None (empty)
    response: (empty)
    reveal: 2
  [1] total 0.75  advantage +0.0000  v2  length=0.75
    response: once upon
    reveal: 1 1 0
"""
    code, out, _ = show(capsys, run, "--step", 1, "--uid", "p2")
    assert code == 0 and "== p2  (group 1/1" in out and "p1" not in out


def test_show_lists_the_image_grid_of_a_t2i_step(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    assert json.loads((run / "rollouts.jsonl").read_text().splitlines()[1])["images"] == ["samples/step_2.png"]
    code, out, _ = show(capsys, run, "--step", 2)
    assert code == 0
    assert f"image grid: {run / 'samples' / 'step_2.png'}\n  row 0: [t2i] a red cat | rewards: 0.300 0.100\n" in out
    assert "  [0] total 0.3  advantage +1.0000  v4  clip=0.3\n  [1] total 0.1  advantage -1.0000  v4  clip=0.1" in out
    assert "response" not in out and "reveal" not in out  # an image is not text
    code, out, _ = show(capsys, run)  # the last step: 3, a t2i step without a grid
    assert code == 0 and out.startswith(f"{run} step 3:")
    assert "(no image grid at this step: grids are written every logging.sample_table_every steps)" in out


def test_show_of_a_run_logged_without_text(tmp_path, capsys):
    run = write_run(tmp_path / "run", text=False)
    assert "images" not in json.loads((run / "rollouts.jsonl").read_text().splitlines()[1])  # today's compact rows
    code, out, _ = show(capsys, run, "--step", 1, "--uid", "p1")
    assert code == 0 and out == (f"{run} step 1: 4 samples of 2 prompts, policy version 2, 3\n"
                                 "(logged with logging.rollout_text: false: no prompt, response or rewards by term)\n\n"
                                 "== p1  (group 1/1, task math)\n  [0] total 2.5  v3\n  [1] total None  v3\n")


def test_show_errors_name_what_is_missing_and_what_is_there(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    code, out, err = show(capsys, tmp_path / "nope")
    assert code == 2 and out == "" and f"{tmp_path / 'nope'}: no such run directory" in err
    (tmp_path / "empty").mkdir()
    assert show(capsys, tmp_path / "empty")[2] == (f"jobs.show: {tmp_path / 'empty'} has no rollouts.jsonl: no step "
                                                   "has been logged there yet (is it a jobs.train run directory?)\n")
    code, _, err = show(capsys, run, "--step", 7)
    assert code == 2 and f"step 7 is not in {run / 'rollouts.jsonl'}; steps there: 1-3" in err
    code, _, err = show(capsys, run, "--step", 1, "--uid", "p9")
    assert code == 2 and "uid 'p9' is not in step 1; its uids: p1, p2" in err
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "rollouts.jsonl").write_text("not json\n")
    assert "holds no step" in show(capsys, tmp_path / "blank")[2]


def test_a_torn_last_line_falls_back_to_the_step_before(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    with (run / "rollouts.jsonl").open("a") as handle:
        handle.write('{"step": 4, "rows": [{"uid": "p')  # a kill while writing step 4
    code, out, _ = show(capsys, run)
    assert code == 0 and out.startswith(f"{run} step 3:")
    code, _, err = show(capsys, run, "--step", 4)
    assert code == 2 and f"the line of step 4 in {run / 'rollouts.jsonl'} is torn" in err
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "rollouts.jsonl").write_text('{"step": 1, "ro\n')
    assert "and so is every line before it" in show(capsys, tmp_path / "torn")[2]


def test_step_ranges():
    assert step_ranges([7, 1, 3, 2, 9, 10]) == "1-3, 7, 9-10"


def test_show_imports_neither_torch_nor_ray():
    probe = "import sys, jobs.show; print(sorted(m for m in ('torch', 'ray', 'numpy') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr
