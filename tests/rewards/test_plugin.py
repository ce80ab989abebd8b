"""The example plugin (examples/reward_plugin), installed with pip into a temporary directory, is found through
the `unigrpo.rewards` entry point: by `rewards.get` and by a RewardService running it in a worker process."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PLUGIN = REPO / "examples" / "reward_plugin"

CHECK = textwrap.dedent(
    """
    import rewards
    from rewards import RewardsConfig, RewardService, RewardTermConfig, Sample
    from tests.rewards.batches import batch_of

    samples = [
        Sample("text", "q", "Paris is the capital of France", meta={"keywords": ["paris", "France", "Lyon"]}),
        Sample("text", "q", "no keywords given"),
    ]
    print(rewards.available()["keyword_coverage"])
    reward = rewards.get("keyword_coverage")
    print(reward(samples))
    print(rewards.get("keyword_coverage", case_sensitive=True)(samples))
    config = RewardsConfig(tasks={"text": [RewardTermConfig("keyword_coverage", 3.0), RewardTermConfig("format", 1.0)]})
    with RewardService(config) as service:
        print(service._units[next(iter(service._units))].isolation)
        batch, _ = service.score(batch_of(samples))
    print(batch.total, batch.reward_reasons["keyword_coverage"])
    """
)


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugin")
    source = root / "src"
    shutil.copytree(PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--target", str(target), str(source)],
        check=True, capture_output=True, text=True,
    )
    return target


def test_entry_point_plugin_works_after_pip_install(installed_plugin):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(installed_plugin), str(REPO)]))
    result = subprocess.run([sys.executable, "-c", CHECK], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "entry point unigrpo-example-rewards: unigrpo_example_rewards:KeywordCoverage"
    assert lines[1] == "[0.6666666666666666, None]"  # paris + france of 3 keywords; no keywords -> None
    assert lines[2] == "[0.3333333333333333, None]"  # case-sensitive: only "France"
    assert lines[3] == "process"  # no isolation declared: the service runs it in a worker process
    # total = 3.0 * 2/3 + 1.0 * format(0) = 2.0; the sample without keywords is unscorable
    assert lines[4] == "[2.0, None] [None, 'unscorable']"


def test_plugin_is_not_visible_without_the_install():
    try:
        importlib.metadata.distribution("unigrpo-example-rewards")
        pytest.skip("the example plugin is installed in this environment")
    except importlib.metadata.PackageNotFoundError:
        pass
    env = dict(os.environ, PYTHONPATH=str(REPO))
    code = "import rewards\ntry:\n    rewards.get('keyword_coverage')\nexcept ValueError as e:\n    print(e)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            check=True)
    assert "unknown reward 'keyword_coverage'" in result.stdout


def test_the_guide_one_off_example_runs_as_written(tmp_path, monkeypatch):
    guide = (REPO / "docs" / "custom_rewards.md").read_text()
    block = guide.split("```python\n# my_rewards.py\n", 1)[1].split("```", 1)[0]
    (tmp_path / "my_rewards.py").write_text(block)
    monkeypatch.chdir(tmp_path)
    import rewards

    reward = rewards.get("my_rewards.py:length_penalty", limit=200)
    samples = [rewards.Sample("text", "q", "x" * 100), rewards.Sample("text", "q", "x" * 300)]
    assert reward(samples) == [0.0, -0.5]  # -(300 - 200) / 200
    assert "unigrpo.rewards" in guide and "examples/reward_plugin" in guide
