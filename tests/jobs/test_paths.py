"""jobs/paths.py: a relative input path is found from the current directory, then in the installed project, and
a config loaded from another directory reads the shipped demo's files (the `unigrpo train` of a plain install)."""

from __future__ import annotations

import pytest

from jobs.config import CONFIG_DIR, DEFAULT_CONFIG, load_config
from jobs.configtree import ConfigError
from jobs.paths import INPUT_KEYS, PROJECT_ROOT, resolve_input, resolve_inputs

POLICY = "model/assets/sign_slip_policy"  # the demo config's model.path
TRAIN, HELDOUT = "data/arithmetic/train.jsonl", "data/arithmetic/heldout.jsonl"


def test_the_project_root_holds_the_packages_and_the_demo_data():
    assert (PROJECT_ROOT / "jobs" / "paths.py").is_file() and (PROJECT_ROOT / TRAIN).is_file()


def test_a_path_is_found_in_the_current_directory_first_then_in_the_project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_input(POLICY) == str(PROJECT_ROOT / POLICY)  # only in the project: absolute
    (tmp_path / "data" / "arithmetic").mkdir(parents=True)
    (tmp_path / TRAIN).write_text('{"prompt": "1+1", "answer": "2"}\n')
    assert resolve_input(TRAIN) == TRAIN  # a file of the current directory wins, kept as written
    assert resolve_input("nowhere/train.jsonl") == "nowhere/train.jsonl"  # its reader reports it, by key
    absolute = str(tmp_path / "elsewhere.jsonl")
    assert resolve_input(absolute) == absolute
    assert [resolve_input(name) for name in ("tiny", "demo", "auto", "never")] == ["tiny", "demo", "auto", "never"]


def test_every_input_key_of_the_raw_tree_is_resolved_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = {"model": {"path": POLICY, "tiny_size": {}},
           "data": {"train": [TRAIN, {"path": HELDOUT, "weight": 2.0}], "eval": HELDOUT, "shuffle": True},
           "rollout": {"image_tokenizer": "model/assets/shapes_vq"}, "generate": {"prompts": TRAIN, "out": "data"},
           "checkpoint": {"resume": "auto"}, "run": {"output_dir": "model"}, "sample": {"out": "data"}}
    out = resolve_inputs(raw)
    assert out == {"model": {"path": str(PROJECT_ROOT / POLICY), "tiny_size": {}},
                   "data": {"train": [str(PROJECT_ROOT / TRAIN), {"path": str(PROJECT_ROOT / HELDOUT), "weight": 2.0}],
                            "eval": str(PROJECT_ROOT / HELDOUT), "shuffle": True},
                   "rollout": {"image_tokenizer": str(PROJECT_ROOT / "model/assets/shapes_vq")},
                   "generate": {"prompts": str(PROJECT_ROOT / TRAIN), "out": "data"},  # outputs stay relative
                   "checkpoint": {"resume": "auto"}, "run": {"output_dir": "model"}, "sample": {"out": "data"}}
    assert raw["data"]["train"][0] == TRAIN  # the input is not modified
    assert {key.split(".")[0] for key in INPUT_KEYS} == {"model", "data", "rollout", "generate", "checkpoint"}
    assert resolve_inputs({"model": "not a section", "data": {"train": 3}}) == {"model": "not a section",
                                                                              "data": {"train": 3}}


def test_the_default_config_loads_from_another_directory_with_the_project_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(DEFAULT_CONFIG, ["rollout.image_tokenizer=model/assets/shapes_vq"])
    assert (cfg.model.path, cfg.data.train, cfg.data.eval, cfg.rollout.image_tokenizer) == (
        str(PROJECT_ROOT / POLICY), str(PROJECT_ROOT / TRAIN), str(PROJECT_ROOT / HELDOUT),
        str(PROJECT_ROOT / "model/assets/shapes_vq"))
    assert cfg.run.output_dir == "runs"
    assert load_config("jobs/configs/demo.yaml") == load_config(DEFAULT_CONFIG)  # --config is found there too
    with pytest.raises(ConfigError, match="config file 'jobs/configs/nowhere.yaml' does not exist"):
        load_config("jobs/configs/nowhere.yaml")


def test_from_the_project_root_the_paths_read_as_written(monkeypatch):
    monkeypatch.chdir(PROJECT_ROOT)
    cfg = load_config(CONFIG_DIR / "demo.yaml")
    assert (cfg.model.path, cfg.data.train, cfg.data.eval) == (POLICY, TRAIN, HELDOUT)
