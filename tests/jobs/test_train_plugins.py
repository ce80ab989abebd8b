"""Plugin names in the run config: a bad estimator, KL estimator or masking schedule fails at load naming its
dotted key; a `path/to/file.py:fn` estimator trains the tiny pipeline, and runs inside the learner ranks
(separate Ray processes that resolve the config string themselves)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from jobs.config import ConfigError, load_config
from jobs.train import train

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "tests/jobs/configs/tiny_lengths.yaml"
FORMS = "or a plugin 'pkg.mod:fn' / 'path/to/file.py:fn'"


@pytest.mark.parametrize(("override", "problem"), [
    ("algo.estimator=grpo",
     f"algo.estimator: got 'grpo'; expected one of ['coupled', 'diffu_grpo', 'random_masking', 'unigrpo'] {FORMS}"),
    ("algo.kl.estimator=kl", f"algo.kl.estimator: got 'kl'; expected one of ['k1', 'k2', 'k3'] {FORMS}"),
    ("algo.masking.schedule=linear",
     f"algo.masking.schedule: got 'linear'; expected one of ['ramp', 'random', 'stratified'] {FORMS}"),
    ("algo.estimator=missing_dir/est.py:fn",
     f"algo.estimator: estimator file not found: {REPO}/missing_dir/est.py; expected 'path/to/file.py:function'"),
])
def test_bad_names_fail_at_load_naming_the_key(override, problem, monkeypatch):
    monkeypatch.chdir(REPO)  # a relative plugin path is relative to the working directory
    with pytest.raises(ConfigError) as err:
        load_config(CONFIG, [override])
    assert err.value.problems == [problem]


def test_the_defaults_still_resolve_to_the_builtins():
    algo = load_config(CONFIG).algo
    assert (algo.estimator, algo.kl.estimator, algo.masking.schedule) == ("unigrpo", "k3", "stratified")


ESTIMATOR = '''
"""UniGRPO's estimator, through the registry, recording where and when it ran."""
import json, os
from rl.estimators import get_estimator

def marked_unigrpo(batch, cfg, *, iteration, step, run_seed, mask_token_id):
    with open({marker!r}, "a") as out:
        out.write(json.dumps({{"pid": os.getpid(), "rank": os.environ.get("RANK"), "iteration": iteration,
                              "step": step, "rows": batch.num_rows}}) + "\\n")
    return get_estimator("unigrpo")(batch, cfg, iteration=iteration, step=step, run_seed=run_seed,
                                    mask_token_id=mask_token_id)
'''


def test_a_file_estimator_plugin_runs_in_every_learner_rank(tmp_path, ray_session, monkeypatch):
    from rl import estimators

    monkeypatch.chdir(REPO)  # the config's reward file and data paths are relative to the repository
    monkeypatch.setattr(estimators, "ESTIMATORS", dict(estimators.ESTIMATORS))  # the plugin leaves with the test
    marker = tmp_path / "calls.jsonl"
    plugin = tmp_path / "my_estimator.py"
    plugin.write_text(ESTIMATOR.format(marker=str(marker)))
    cfg = load_config(CONFIG, [f"run.output_dir={tmp_path}", "run.name=plugin", "run.steps=1",
                               f"algo.estimator={plugin}:marked_unigrpo"])
    assert not marker.exists()  # checking the config loaded the plugin without calling it
    summary = train(cfg)
    assert summary["policy_version"] == 1
    calls = [json.loads(line) for line in marker.read_text().splitlines()]
    # 1 step, μ = 2 inner iterations, 2 learner ranks, each with half of the 4 prompts × 2 samples = 4 rows
    assert sorted((c["rank"], c["iteration"], c["step"], c["rows"]) for c in calls) == [
        ("0", 1, 1, 4), ("0", 2, 1, 4), ("1", 1, 1, 4), ("1", 2, 1, 4)]
    pids = {c["rank"]: c["pid"] for c in calls}
    assert len(set(pids.values())) == 2 and os.getpid() not in pids.values()  # two processes, neither the driver
    metrics = json.loads((tmp_path / "plugin" / "metrics.jsonl").read_text().splitlines()[0])
    assert metrics["loss/pg_loss"] != 0  # the update used the plugin's views
