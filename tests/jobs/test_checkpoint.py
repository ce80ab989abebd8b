"""CheckpointManager: atomic saves, retention, resume auto/never/path, loud failure, RNG states."""

from __future__ import annotations

import hashlib
import json
import logging
import random

import numpy as np
import pytest
import torch

from actors.config import CheckpointConfig
from jobs.checkpoint import (
    MARKER,
    RUN_FILE,
    CheckpointError,
    CheckpointManager,
    capture_rng_state,
    restore_rng_state,
    verify,
)


@pytest.fixture
def root(tmp_path):
    """A run's checkpoint directory: `<run dir>/checkpoints` (the run id file goes into the run dir)."""
    return tmp_path / "checkpoints"


def run_id_of(root):
    return json.loads((root.parent / RUN_FILE).read_text())["run_id"]


def learner_writer(payload: str):
    def save(directory):
        (directory / "rank_0.pt").write_text(payload)
        (directory / "rank_1.pt").write_text(payload)
    return save


def save(manager, step, **kwargs):
    return manager.save(step, driver_state={"policy_version": step, "cursor": [0, step]}, config_text=f"run: {step}\n",
                        save_learner=learner_writer(f"weights {step}"), **kwargs)


def test_save_writes_everything_and_the_marker_lists_it(root):
    manager = CheckpointManager(root, CheckpointConfig())
    path = save(manager, 5)
    assert path == root / "step_5" and [p.name for p in root.iterdir()] == ["step_5"]
    marker = json.loads((path / MARKER).read_text())
    assert marker["step"] == 5 and marker["run_id"] == manager.run_id == run_id_of(root)
    assert marker["files"] == {"config.yaml": 7, "driver_state.json": (path / "driver_state.json").stat().st_size,
                               "learner/rank_0.pt": 9, "learner/rank_1.pt": 9}
    # sha256 worked out here with hashlib over the bytes we know were written
    assert marker["sha256"] == {"config.yaml": hashlib.sha256(b"run: 5\n").hexdigest(),
                                "driver_state.json": hashlib.sha256((path / "driver_state.json").read_bytes()).hexdigest(),
                                "learner/rank_0.pt": hashlib.sha256(b"weights 5").hexdigest(),
                                "learner/rank_1.pt": hashlib.sha256(b"weights 5").hexdigest()}
    assert verify(path) == {"policy_version": 5, "cursor": [0, 5], "step": 5}
    assert manager.latest_complete() == path


def test_a_save_that_dies_leaves_no_checkpoint_and_is_cleaned_up_later(root):
    manager = CheckpointManager(root, CheckpointConfig(keep_last=1))
    save(manager, 4)

    def crash(directory):
        (directory / "rank_0.pt").write_text("half")
        raise RuntimeError("killed mid-save")

    with pytest.raises(RuntimeError, match="killed mid-save"):
        manager.save(5, driver_state={}, config_text="", save_learner=crash)
    leftovers = sorted(p.name for p in root.iterdir())
    assert leftovers[0].startswith(".step_5.tmp-") and leftovers[1] == "step_4"
    assert manager.latest_complete() == root / "step_4"  # keep_last=1 did not delete the only complete one
    save(manager, 6)
    assert sorted(p.name for p in root.iterdir()) == ["step_6"]  # stale temporary and old checkpoint gone


def test_dirs_without_a_valid_marker_are_ignored(root):
    manager = CheckpointManager(root, CheckpointConfig())
    save(manager, 3)
    (root / "step_9").mkdir()  # e.g. a copy that stopped half-way
    (root / "step_9" / "driver_state.json").write_text('{"step": 9}')
    broken = save(manager, 7)
    (broken / "learner" / "rank_1.pt").unlink()
    truncated = save(manager, 8)
    (truncated / "learner" / "rank_0.pt").write_text("x")
    assert [s for s, _ in manager.complete()] == [3]
    assert [s for s, _ in manager.step_dirs()] == [3, 7, 8, 9]
    with pytest.raises(ValueError, match="listed file learner/rank_1.pt is missing"):
        verify(broken)
    with pytest.raises(ValueError, match="learner/rank_0.pt has 1 bytes, the marker says 9"):
        verify(truncated)
    (truncated / MARKER).write_text("{")
    with pytest.raises(ValueError, match="marker is unreadable"):
        verify(truncated)


def test_retention_keeps_the_last_k_complete(root):
    manager = CheckpointManager(root, CheckpointConfig(keep_last=2))
    for step in (1, 2, 3, 4):
        save(manager, step)
    assert [s for s, _ in manager.complete()] == [3, 4]
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_saving_the_same_step_again_replaces_it(root):
    manager = CheckpointManager(root, CheckpointConfig())
    save(manager, 2)
    manager.save(2, driver_state={"again": True}, config_text="", save_learner=learner_writer("new"))
    assert verify(root / "step_2")["again"] is True
    assert sorted(p.name for p in root.iterdir()) == ["step_2"]


def test_resume_auto_picks_the_newest_complete(root):
    manager = CheckpointManager(root, CheckpointConfig(resume="auto", keep_last=5))
    assert manager.resume() is None  # nothing yet: a fresh run
    for step in (2, 4):
        save(manager, step)
    (root / "step_6").mkdir()  # partial, newer
    loaded_from = []
    loaded = manager.resume(load_learner=lambda d: loaded_from.append((d / "rank_0.pt").read_text()))
    assert (loaded.step, loaded.path, loaded.config_text) == (4, root / "step_4", "run: 4\n")
    assert loaded.driver_state["cursor"] == [0, 4] and loaded_from == ["weights 4"]


def test_resume_auto_falls_back_to_an_older_one_that_loads(root, caplog):
    manager = CheckpointManager(root, CheckpointConfig(resume="auto", keep_last=5))
    for step in (2, 4):
        save(manager, step)

    def load(directory):
        if "4" in (directory / "rank_0.pt").read_text():
            raise RuntimeError("optimizer partition unreadable")

    with caplog.at_level(logging.WARNING, logger="jobs.checkpoint"):
        assert manager.resume(load_learner=load).step == 2
    assert "step_4: RuntimeError: optimizer partition unreadable" in caplog.text


def test_resume_auto_fails_loudly_when_none_loads(root):
    manager = CheckpointManager(root, CheckpointConfig(resume="auto"))
    save(manager, 2)
    (root / "step_3").mkdir()

    def load(directory):
        raise OSError("disk gone")

    with pytest.raises(CheckpointError) as err:
        manager.resume(load_learner=load)
    text = str(err.value)
    assert "2 checkpoint(s)" in text and "none loads" in text and "another run.name or run.output_dir" in text
    assert f"{root / 'step_3'}: ValueError: no COMPLETE marker" in text
    assert f"{root / 'step_2'}: OSError: disk gone" in text


def test_resume_never_and_explicit_path(root):
    assert CheckpointManager(root, CheckpointConfig(resume="never")).resume() is None  # nothing here yet
    manager = CheckpointManager(root, CheckpointConfig())
    save(manager, 2)
    save(manager, 4)
    explicit = CheckpointManager(root, CheckpointConfig(resume=str(root / "step_2")))
    assert explicit.resume().step == 2
    missing = CheckpointManager(root, CheckpointConfig(resume=str(root / "step_7")))
    with pytest.raises(CheckpointError, match=r"step_7' cannot be loaded: no COMPLETE marker"):
        missing.resume()


def test_when_to_save_and_export():
    manager = CheckpointManager("unused", CheckpointConfig(every=3, export_every=0))
    assert [s for s in range(1, 8) if manager.should_save(s)] == [3, 6]
    assert manager.should_save(7, final=True) and not manager.should_export(6) and manager.should_export(7, final=True)
    never = CheckpointManager("unused", CheckpointConfig(every=0, export_every=2))
    assert not never.should_save(4) and never.should_export(4)


def test_checkpoint_config_checks():
    for kwargs, words in [({"every": -1}, "every"), ({"keep_last": 0}, "keep_last"), ({"resume": ""}, "resume"),
                          ({"export_every": -2}, "export_every")]:
        with pytest.raises(ValueError, match=words):
            CheckpointConfig(**kwargs)


def test_rng_states_round_trip_through_json():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.randn(3), np.random.randn(), random.random()
    state = json.loads(json.dumps(capture_rng_state()))
    expected = (random.random(), np.random.randn(2).tolist(), np.random.randn(), torch.randn(4))
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    restore_rng_state(state)
    got = (random.random(), np.random.randn(2).tolist(), np.random.randn(), torch.randn(4))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])
