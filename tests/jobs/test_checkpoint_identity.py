"""Checkpoints belong to one run, and are verified by digest before anything unpickles them.

Tracker issue 18, finding 3: `checkpoint.resume: never` in a reused run directory let retention rank the old
run's `step_4..6` with the new run's `step_1, step_2`, deleting the new ones as soon as they were written, and a
later `resume: auto` resumed the old run. Finding 12: the marker recorded sizes only, so a file corrupted in
place (same size) was found, if ever, by DeepSpeed's `torch.load(weights_only=False)`. docs/reliability.md §8-9.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from actors.config import CheckpointConfig
from jobs.checkpoint import MARKER, RUN_FILE, CheckpointError, CheckpointManager, verify


@pytest.fixture
def root(tmp_path) -> Path:
    """The checkpoint directory of a run directory, as jobs.train lays them out (`run_id.json` goes beside it)."""
    return ckpts(tmp_path, "run")


def ckpts(tmp_path: Path, run_name: str) -> Path:
    return tmp_path / run_name / "checkpoints"


def tensor_writer(step: int):
    """A learner stand-in that pickles tensors, as DeepSpeed does (so corruption can hide in tensor bytes)."""
    def save_learner(directory: Path):
        torch.save({"w": torch.full((64,), float(step))}, directory / "rank_0.pt")
        torch.save({"m": torch.arange(32.0) * step}, directory / "rank_1.pt")
    return save_learner


class Unpickler:
    """`load_learner` stand-in: records the directory, then unpickles like DeepSpeed (weights_only=False)."""

    def __init__(self):
        self.loaded: list[Path] = []

    def __call__(self, directory: Path):
        self.loaded.append(directory.parent)
        torch.load(directory / "rank_0.pt", weights_only=False)
        torch.load(directory / "rank_1.pt", weights_only=False)


def save(manager: CheckpointManager, step: int) -> Path:
    return manager.save(step, driver_state={"policy_version": step}, config_text=f"step: {step}\n",
                        save_learner=tensor_writer(step))


def manager(root: Path, resume: str = "auto", keep_last: int = 3) -> CheckpointManager:
    return CheckpointManager(root, CheckpointConfig(resume=resume, keep_last=keep_last))


def old_run(root: Path, steps=(4, 5, 6)) -> str:
    """A finished run in `root` with checkpoints `steps`; returns its run id."""
    old = manager(root, "never")
    old.resume()
    for step in steps:
        save(old, step)
    return old.run_id


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def strip_to_pre_run_id_format(root: Path) -> None:
    """Make `root` look written before run ids and digests: markers hold step, time and sizes only, no run file."""
    for marker in root.glob(f"step_*/{MARKER}"):
        content = json.loads(marker.read_text())
        marker.write_text(json.dumps({k: content[k] for k in ("step", "time", "files")}, indent=1))
    (root.parent / RUN_FILE).unlink()


def flip_one_byte(file: Path, offset: int) -> None:
    data = bytearray(file.read_bytes())
    data[offset] ^= 0x01
    file.write_bytes(bytes(data))


# -- finding 3: one run's checkpoints -------------------------------------------------------------
def test_resume_never_over_another_runs_checkpoints_refuses_naming_them_and_deletes_nothing(root):
    old_id = old_run(root)
    before = snapshot(root.parent)  # the old run's checkpoints and its run id file
    new = manager(root, "never")
    for attempt in (new.preflight, new.resume, lambda: save(new, 1)):  # a save before resume is a fresh run too
        with pytest.raises(CheckpointError) as err:
            attempt()
        text = str(err.value)
        assert text.startswith(f"checkpoint.resume=never: {root} holds checkpoints of another run: "
                               f"step_4 (run {old_id}), step_5 (run {old_id}), step_6 (run {old_id}); ")
        assert "Nothing was deleted" in text and "another run.name or run.output_dir" in text
        assert f"checkpoint.resume=auto, or checkpoint.resume={root / 'step_6'}" in text
        assert "delete those step_N directories" in text
    assert snapshot(root.parent) == before and new.run_id is None


def test_resume_never_refuses_a_leftover_step_dir_without_a_marker(root):
    (root / "step_3").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"step_3 \(no readable marker\)"):
        manager(root, "never").resume()


def test_a_fresh_run_gets_a_new_id_and_a_resumed_run_keeps_its_own(root, tmp_path):
    first = manager(root, "never")
    assert first.resume() is None and len(first.run_id) == 32
    save(first, 1)
    again = manager(root, "auto")
    assert again.resume().step == 1 and again.run_id == first.run_id
    assert json.loads((root.parent / RUN_FILE).read_text()) == {"run_id": first.run_id, "legacy": False}
    assert json.loads((save(again, 2) / MARKER).read_text())["run_id"] == first.run_id
    empty = ckpts(tmp_path, "other")
    fresh = manager(empty, "auto")
    assert fresh.resume() is None and fresh.run_id not in (None, first.run_id)


def test_retention_counts_only_this_runs_checkpoints_and_never_deletes_what_it_just_wrote(tmp_path):
    """The finding as it happened: the old run's higher steps sit next to the new run's (copied in after the
    new run started, the only way past the refusal). keep_last=2 keeps the new run's last two."""
    old_id = old_run(ckpts(tmp_path, "old"))
    root = ckpts(tmp_path, "run")
    new = manager(root, "never", keep_last=2)
    assert new.resume() is None
    for name in ("step_4", "step_5", "step_6"):
        shutil.copytree(ckpts(tmp_path, "old") / name, root / name)
    old_files = snapshot(ckpts(tmp_path, "old"))
    save(new, 1)
    assert (root / "step_1" / MARKER).is_file()  # not deleted right after being written
    save(new, 2)
    save(new, 3)
    assert [s for s, _ in new.complete()] == [2, 3, 4, 5, 6]
    assert {k: v for k, v in snapshot(root).items() if k.split("/")[0] in ("step_4", "step_5", "step_6")} == old_files
    assert {json.loads((root / f"step_{s}" / MARKER).read_text())["run_id"] for s in (4, 5, 6)} == {old_id}


def test_saving_a_step_another_run_holds_is_refused_and_leaves_it(tmp_path):
    old_run(ckpts(tmp_path, "old"), steps=(2,))
    new = manager(ckpts(tmp_path, "run"), "never")
    new.resume()
    shutil.copytree(ckpts(tmp_path, "old") / "step_2", ckpts(tmp_path, "run") / "step_2")
    before = snapshot(ckpts(tmp_path, "run"))
    with pytest.raises(CheckpointError, match=rf"{ckpts(tmp_path, 'run') / 'step_2'} holds a checkpoint of another run"):
        save(new, 2)
    assert snapshot(ckpts(tmp_path, "run")) == before


def test_resume_auto_never_picks_another_runs_checkpoint(tmp_path):
    """This run has step_1..2; another run's step_4..6 are newer. Auto must not load step_6, and must not start
    a run whose later saves would collide with them: it refuses, naming them, before loading anything."""
    old_id = old_run(ckpts(tmp_path, "old"))
    root = ckpts(tmp_path, "run")
    mine = manager(root, "never")
    mine.resume()
    save(mine, 1), save(mine, 2)
    for name in ("step_4", "step_5", "step_6"):
        shutil.copytree(ckpts(tmp_path, "old") / name, root / name)
    unpickler = Unpickler()
    with pytest.raises(CheckpointError) as err:
        manager(root, "auto").resume(unpickler)
    text = str(err.value)
    assert text.startswith(f"checkpoint.resume=auto: {root} holds checkpoints of another run: step_4 (run {old_id}), ")
    assert f"this directory's run is {mine.run_id} and checkpoint.resume=auto resumes only its own" in text
    assert f"checkpoint.resume={root / 'step_6'}" in text and unpickler.loaded == []


def test_resume_auto_without_a_run_file_does_not_guess_whose_checkpoints_these_are(root):
    old_id = old_run(root)
    (root.parent / RUN_FILE).unlink()
    unpickler = Unpickler()
    with pytest.raises(CheckpointError) as err:
        manager(root, "auto").resume(unpickler)
    assert f"step_6 (run {old_id}); {root.parent / RUN_FILE} is missing, so nothing says which run" in str(err.value)
    assert f"continue that run (checkpoint.resume={root / 'step_6'})" in str(err.value)
    assert unpickler.loaded == []
    # The explicit path continues that run under its own id.
    resumed = manager(root, str(root / "step_6"))
    assert resumed.resume(unpickler).step == 6 and resumed.run_id == old_id == json.loads(
        (root.parent / RUN_FILE).read_text())["run_id"]


def test_checkpoints_from_before_run_ids_resume_with_auto_and_become_this_runs(root, caplog):
    old = manager(root, "never", keep_last=5)
    old.resume()
    for step in (1, 2, 3):
        save(old, step)
    strip_to_pre_run_id_format(root)
    run = manager(root, "auto", keep_last=2)
    unpickler = Unpickler()
    with caplog.at_level(logging.WARNING, logger="jobs.checkpoint"):
        assert run.resume(unpickler).step == 3
    assert unpickler.loaded == [root / "step_3"]
    assert "written before checkpoints recorded digests: only file sizes were checked" in caplog.text
    assert json.loads((root.parent / RUN_FILE).read_text()) == {"run_id": run.run_id, "legacy": True}
    save(run, 4)  # retention counts the id-less ones as this run's: keep_last=2 keeps 3 and 4
    assert [s for s, _ in run.complete()] == [3, 4]
    later = manager(root, "auto")
    assert later.resume(unpickler).step == 4 and later.run_id == run.run_id and later.legacy
    explicit = manager(root, str(root / "step_3"))  # an id-less one by path: still the same (legacy) run
    assert explicit.resume(unpickler).step == 3 and explicit.run_id == run.run_id and explicit.legacy


def test_checkpoints_from_before_run_ids_are_another_runs_where_a_run_file_says_so(root):
    old_run(root, steps=(2,))
    strip_to_pre_run_id_format(root)
    (root.parent / RUN_FILE).write_text(json.dumps({"run_id": "abc", "legacy": False}))
    with pytest.raises(CheckpointError, match=r"step_2 \(no run id: written before run ids\); this directory's run is abc"):
        manager(root, "auto").resume()


def test_an_explicit_path_into_a_directory_of_another_run_is_refused(tmp_path):
    old_run(ckpts(tmp_path, "a"), steps=(5,))
    b_id = old_run(ckpts(tmp_path, "b"), steps=(1,))
    with pytest.raises(CheckpointError, match=rf"step_1 \(run {b_id}\); resuming {ckpts(tmp_path, 'a') / 'step_5'} "):
        manager(ckpts(tmp_path, "b"), str(ckpts(tmp_path, "a") / "step_5")).resume()


def test_an_explicit_old_path_from_elsewhere_starts_a_new_id(tmp_path):
    old_run(ckpts(tmp_path, "a"), steps=(5,))
    strip_to_pre_run_id_format(ckpts(tmp_path, "a"))
    fork = manager(ckpts(tmp_path, "b"), str(ckpts(tmp_path, "a") / "step_5"))
    assert fork.resume().step == 5 and fork.run_id and not fork.legacy


def test_an_unreadable_run_file_is_an_error_naming_it(root):
    old_run(root, steps=(1,))
    (root.parent / RUN_FILE).write_text("{")
    with pytest.raises(CheckpointError, match=rf"{root.parent / RUN_FILE} is unreadable .*Restore it, or delete it "
                                              "and set checkpoint.resume to the path"):
        manager(root, "auto").resume()
    (root.parent / RUN_FILE).write_text('{"run_id": 7}')
    with pytest.raises(CheckpointError, match="run_id must be a non-empty string"):
        manager(root, "auto").preflight()


# -- finding 12: digests before unpickling --------------------------------------------------------
def test_a_same_size_corruption_is_caught_before_unpickling_and_auto_falls_back(root, caplog):
    run = manager(root, "never")
    run.resume()
    save(run, 1)
    newest = save(run, 2)
    weights = newest / "learner" / "rank_0.pt"
    size = weights.stat().st_size
    flip_one_byte(weights, size - 100)  # inside the tensor bytes: torch.load would return wrong numbers, no error
    assert weights.stat().st_size == size and verify(newest, digests=False)["step"] == 2  # sizes cannot tell
    unpickler = Unpickler()
    with caplog.at_level(logging.WARNING, logger="jobs.checkpoint"):
        loaded = manager(root, "auto").resume(unpickler)
    assert loaded.step == 1 and unpickler.loaded == [root / "step_1"]  # step_2 was never unpickled
    assert f"resuming from {root / 'step_1'}; newer checkpoints failed to load" in caplog.text
    assert f"{newest}: ValueError: listed file learner/rank_0.pt has sha256 " in caplog.text
    assert "(changed after it was written: corrupted in place)" in caplog.text


def test_a_corrupted_explicit_path_or_last_checkpoint_is_an_error_naming_the_file(root):
    run = manager(root, "never")
    run.resume()
    only = save(run, 3)
    flip_one_byte(only / "config.yaml", 0)
    unpickler = Unpickler()
    with pytest.raises(CheckpointError, match=r"1 checkpoint\(s\) in .* but none loads:\n  .*step_3: ValueError: "
                                              r"listed file config.yaml has sha256 [0-9a-f]{64}, the marker says"):
        manager(root, "auto").resume(unpickler)
    with pytest.raises(CheckpointError, match=rf"resume='{only}' cannot be loaded: listed file config.yaml has sha256"):
        manager(root, str(only)).resume(unpickler)
    assert unpickler.loaded == []


def test_a_marker_whose_digests_do_not_name_its_files_is_unreadable(root):
    run = manager(root, "never")
    run.resume()
    path = save(run, 1)
    content = json.loads((path / MARKER).read_text())
    del content["sha256"]["learner/rank_1.pt"]
    (path / MARKER).write_text(json.dumps(content))
    with pytest.raises(ValueError, match="its sha256 list does not name exactly its files"):
        verify(path)


# -- the driver -----------------------------------------------------------------------------------
def test_the_driver_refuses_another_runs_directory_before_writing_or_starting_anything(tmp_path, monkeypatch, capsys):
    """`python -m jobs.train` with resume=never over an old run: exit 2 with the message, the old run's config.yaml
    not overwritten, no actor started (the refusal comes first in jobs.train.setup)."""
    import jobs.train
    from jobs.train import main

    def tripwire(*args, **kwargs):  # Ray itself may be up already: other tests of this process started it
        raise AssertionError("the actors started before the run directory was checked")

    monkeypatch.setattr(jobs.train, "start_actors", tripwire)
    repo = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(repo)  # the config's reward file and data paths are relative to the repository
    run_dir = tmp_path / "reused"
    old_id = old_run(run_dir / "checkpoints", steps=(4,))
    (run_dir / "config.yaml").write_text("the old run's config\n")
    before = snapshot(run_dir)
    code = main(["--config", str(repo / "tests/jobs/configs/tiny_lengths.yaml"), "--set", f"run.output_dir={tmp_path}",
                 "--set", "run.name=reused", "--set", "checkpoint.resume=never"])
    error = capsys.readouterr().err
    assert code == 2 and snapshot(run_dir) == before
    assert error.startswith(f"CheckpointError: checkpoint.resume=never: {run_dir / 'checkpoints'} holds checkpoints of "
                            f"another run: step_4 (run {old_id}); ")
