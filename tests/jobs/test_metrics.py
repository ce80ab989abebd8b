"""MetricsLogger: namespaced keys, JSONL per step, TensorBoard scalars and text, sample tables, resume."""

from __future__ import annotations

import io
import json
import math
import shutil
import sys

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from actors.config import LoggingConfig
from jobs.metrics import GRID_GAP, MetricsLogger, check_key, image_grid, markdown_table


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def tb_scalars(run_dir, tag):
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_jsonl_and_tensorboard_get_every_step(tmp_path):
    with MetricsLogger(tmp_path, LoggingConfig()) as logger:
        logger.log(1, {"loss/policy": 0.5, "reward/correctness/mean": torch.tensor(1.5), "health/worker_restarts": 0})
        logger.log(2, {"loss/policy": float("nan"), "perf/step_s": 2, "rollout/tokens_per_s": True})
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["reward/correctness/mean"] == 1.5 and rows[0]["health/worker_restarts"] == 0.0
    assert rows[1]["loss/policy"] is None and rows[1]["perf/step_s"] == 2.0 and rows[1]["rollout/tokens_per_s"] == 1.0
    assert all(isinstance(r["wall_time"], float) for r in rows)
    policy = tb_scalars(tmp_path, "loss/policy")
    assert policy[0] == (1, 0.5) and policy[1][0] == 2 and math.isnan(policy[1][1])


@pytest.mark.parametrize("key,words", [
    ("policy_loss", "expected '<namespace>/<name>'"),
    ("losses/policy", "namespace one of loss, reward, rollout, perf, health"),
    ("loss/", "expected '<namespace>/<name>'"),
    ("reward/mean", "reward metrics are 'reward/<term>/<name>'"),
])
def test_bad_keys_are_refused_naming_the_key(key, words):
    with pytest.raises(ValueError, match="metric key") as err:
        check_key(key)
    assert repr(key) in str(err.value) and words in str(err.value)


def test_non_numbers_are_refused(tmp_path):
    with MetricsLogger(tmp_path, LoggingConfig(tensorboard=False)) as logger, \
            pytest.raises(ValueError, match="metric 'loss/x': expected a number, got str"):
        logger.log(1, {"loss/x": "high"})


def test_sample_table_every_k_steps_to_jsonl_and_tensorboard(tmp_path):
    cfg = LoggingConfig(sample_table_every=2, sample_table_rows=2)
    rows = [{"uid": "a", "response": "x | y\nz", "reward": 1.0}, {"uid": "b", "response": "w" * 500}, {"uid": "c"}]
    with MetricsLogger(tmp_path, cfg) as logger:
        assert [s for s in range(1, 7) if logger.should_log_samples(s)] == [2, 4, 6]
        logger.log_samples(2, rows)
        logger.log_samples(4, [])  # nothing to write
    (entry,) = read_jsonl(tmp_path / "samples.jsonl")
    assert entry["step"] == 2 and entry["rows"] == rows[:2]  # full text in the jsonl, only the first 2 rows
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    (event,) = acc.Tensors("samples/text_summary")
    text = event.tensor_proto.string_val[0].decode()
    assert event.step == 2 and "| uid | response | reward |" in text and "x \\| y<br>z" in text
    assert ("w" * 400 + "…") in text and "w" * 401 not in text
    assert not MetricsLogger(tmp_path / "off", LoggingConfig(sample_table_every=0, tensorboard=False)).should_log_samples(10)


def test_markdown_table_columns_in_first_seen_order():
    assert markdown_table([{"a": 1}, {"b": None, "a": 2}]) == "| a | b |\n|---|---|\n| 1 |  |\n| 2 |  |"


def test_resume_drops_steps_after_the_checkpoint_everywhere(tmp_path):
    cfg = LoggingConfig(sample_table_every=1)
    with MetricsLogger(tmp_path, cfg) as logger:  # the run that died after logging step 5, checkpoint at 3
        for step in range(1, 6):
            logger.log(step, {"loss/policy": float(step)})
            logger.log_samples(step, [{"step": step}])
    with (tmp_path / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 6, "loss/pol')  # the kill tore the last line
    with MetricsLogger(tmp_path, cfg, resume_step=3) as logger:
        for step in (4, 5):
            logger.log(step, {"loss/policy": 10.0 * step})
            logger.log_samples(step, [{"step": step}])
    assert [(r["step"], r["loss/policy"]) for r in read_jsonl(tmp_path / "metrics.jsonl")] == \
        [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0)]
    assert [r["step"] for r in read_jsonl(tmp_path / "samples.jsonl")] == [1, 2, 3, 4, 5]
    assert tb_scalars(tmp_path, "loss/policy") == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0)]


def test_sinks_can_be_switched_off(tmp_path):
    with MetricsLogger(tmp_path, LoggingConfig(tensorboard=False, jsonl=False)) as logger:
        logger.log(1, {"loss/policy": 1.0})
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "tensorboard").exists()


def test_wandb_requested_but_missing_names_the_key(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):  # the environment may or may not have wandb: make it absent
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(ImportError, match=r"logging.wandb_project='proj' needs the wandb package"):
        MetricsLogger(tmp_path, LoggingConfig(wandb_project="proj", tensorboard=False))


def test_logging_config_checks():
    with pytest.raises(ValueError, match="sample_table_every"):
        LoggingConfig(sample_table_every=-1)
    with pytest.raises(ValueError, match="sample_table_rows"):
        LoggingConfig(sample_table_rows=0)
    with pytest.raises(ValueError, match="wandb_project: empty"):
        LoggingConfig(wandb_project=" ")


def solid(h: int, w: int, value: int) -> np.ndarray:
    return np.full((h, w, 3), value, dtype=np.uint8)


def test_image_grid_places_every_image_in_its_cell():
    a, b, c = solid(4, 5, 10), solid(4, 5, 20), solid(2, 3, 30)
    grid = image_grid([[a, b], [c]])
    g = GRID_GAP
    # 2 rows x 2 columns of 4x5 cells, gaps of g white pixels around and between them
    assert grid.shape == (2 * 4 + 3 * g, 2 * 5 + 3 * g, 3) and grid.dtype == np.uint8
    assert (grid[g:g + 4, g:g + 5] == 10).all()
    assert (grid[g:g + 4, 2 * g + 5:2 * g + 10] == 20).all()
    assert (grid[2 * g + 4:2 * g + 6, g:g + 3] == 30).all()  # the smaller image sits top-left in its cell
    painted = np.zeros(grid.shape[:2], dtype=bool)
    painted[g:g + 4, g:g + 5] = painted[g:g + 4, 2 * g + 5:2 * g + 10] = painted[2 * g + 4:2 * g + 6, g:g + 3] = True
    assert (grid[~painted] == 255).all()  # everything else is white: gaps, the rest of c's cell, the empty cell


@pytest.mark.parametrize(("rows", "words"), [
    ([], "no images"),
    ([[]], "no images"),
    ([[solid(2, 2, 0)], [np.zeros((2, 2), np.uint8)]], "rows[1][0]: expected a non-empty HxWx3 uint8"),
    ([[np.zeros((2, 2, 3), np.float32)]], "rows[0][0]"),
    ([[np.zeros((0, 2, 3), np.uint8)]], "rows[0][0]"),
    ([["image.png"]], "got str"),
])
def test_image_grid_refuses_what_is_not_an_image(rows, words):
    with pytest.raises(ValueError, match="image_grid") as err:
        image_grid(rows)
    assert words in str(err.value)


def test_image_grid_goes_to_png_json_and_tensorboard(tmp_path):
    from PIL import Image

    rows = [[solid(6, 6, 0), solid(6, 6, 128)], [solid(6, 6, 255), solid(6, 6, 64)]]
    with MetricsLogger(tmp_path, LoggingConfig()) as logger:
        path = logger.log_image_grid(3, rows, ["a red circle", "a blue square"])
        with pytest.raises(ValueError, match="1 captions for 2 rows"):
            logger.log_image_grid(4, rows, ["one"])
    assert path == tmp_path / "samples" / "step_3.png"
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), image_grid(rows))
    assert json.loads((tmp_path / "samples" / "step_3.json").read_text()) == {
        "step": 3, "png": "step_3.png", "rows": ["a red circle", "a blue square"]}
    assert not (tmp_path / "samples" / "step_4.png").exists()
    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    (event,) = acc.Images("samples/t2i")
    assert (event.step, event.height, event.width) == (3, 2 * 6 + 3 * GRID_GAP, 2 * 6 + 3 * GRID_GAP)
    decoded = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
    assert np.array_equal(decoded, image_grid(rows))
    (caption,) = acc.Tensors("samples/t2i/captions/text_summary")
    assert caption.tensor_proto.string_val[0].decode() == "0. a red circle\n1. a blue square"


def test_a_fresh_run_in_an_old_run_directory_drops_every_old_line(tmp_path):
    """jobs.train passes resume_step=-1 when it starts fresh (no checkpoint, or resume: never)."""
    cfg = LoggingConfig(tensorboard=False)
    with MetricsLogger(tmp_path, cfg) as old:
        for step in (0, 1, 2):
            old.log(step, {"loss/kl": float(step)})
        old.log_rollouts(1, [{"uid": "a"}])
    with MetricsLogger(tmp_path, cfg, resume_step=-1) as fresh:
        fresh.log(0, {"loss/kl": 9.0})
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(line["step"], line["loss/kl"]) for line in lines] == [(0, 9.0)]
    assert (tmp_path / "rollouts.jsonl").read_text() == ""


FAKE_WANDB = '''"""Stand-in for the wandb client (a third-party service): records what the logger asks of it."""
inits, logged, finished = [], [], []


class _Run:
    def log(self, values, step=None):
        logged.append((step, dict(values)))

    def finish(self):
        finished.append(True)


def init(**kwargs):
    inits.append(kwargs)
    return _Run()
'''


def test_a_resumed_run_continues_its_wandb_run(tmp_path, monkeypatch):
    """The W&B run id is the run's id (run_id.json), which a resumed run keeps and a fresh run draws anew:
    jobs.train's setup passes `CheckpointManager.run_id` to the logger after `resume`, as done here."""
    from actors.config import CheckpointConfig
    from jobs.checkpoint import CheckpointManager

    (tmp_path / "site" / "wandb").mkdir(parents=True)
    (tmp_path / "site" / "wandb" / "__init__.py").write_text(FAKE_WANDB)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    import wandb

    run_dir, cfg = tmp_path / "run", LoggingConfig(wandb_project="proj", tensorboard=False)

    def start(resume: str = "auto") -> tuple[CheckpointManager, int]:
        checkpoints = CheckpointManager(run_dir / "checkpoints", CheckpointConfig(resume=resume))
        loaded = checkpoints.resume(lambda directory: None)
        return checkpoints, -1 if loaded is None else loaded.step

    first, resume_step = start()
    with MetricsLogger(run_dir, cfg, run_name="r", run_id=first.run_id, resume_step=resume_step) as logger:
        logger.log(1, {"loss/kl": 0.5})
    first.save(1, driver_state={"policy_version": 1}, config_text="", save_learner=lambda directory: None)
    resumed, resume_step = start()
    assert resume_step == 1
    with MetricsLogger(run_dir, cfg, run_name="r", run_id=resumed.run_id, resume_step=resume_step) as logger:
        logger.log(2, {"loss/kl": 0.25})
    shutil.rmtree(run_dir / "checkpoints")
    fresh, _ = start("never")
    with MetricsLogger(run_dir, cfg, run_name="r", run_id=fresh.run_id, resume_step=-1):
        pass
    run_id = json.loads((run_dir / "run_id.json").read_text())["run_id"]
    assert len(first.run_id) == 32 and resumed.run_id == first.run_id != fresh.run_id == run_id
    assert [(init["id"], init["resume"], init["project"], init["name"]) for init in wandb.inits] == [
        (first.run_id, "allow", "proj", "r"), (first.run_id, "allow", "proj", "r"), (fresh.run_id, "allow", "proj", "r")]
    assert wandb.logged == [(1, {"loss/kl": 0.5}), (2, {"loss/kl": 0.25})] and len(wandb.finished) == 3
