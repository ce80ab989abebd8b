"""Registry: built-ins, entry points, one-offs, option checking, and every error branch."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import rewards
from rewards import Sample, registry
from rewards.format import FormatReward

REPO = Path(__file__).resolve().parents[2]
SAMPLES = [Sample("text", "q", "<think>a</think>b", "1"), Sample("text", "q", "no", None)]


def test_builtins_are_listed_without_importing_them():
    listed = rewards.available()
    for name in ("correctness", "format", "remote", "clip", "image_reward"):
        assert listed[name] == "built-in"


def test_import_rewards_pulls_in_no_heavy_dependency():
    code = ("import sys, rewards; heavy = [m for m in ('math_verify', 'sympy', 'torch', 'torchvision', "
            "'open_clip', 'numpy', 'ray', 'deepspeed') if m in sys.modules]; print(heavy)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_builtin_by_name_with_options():
    assert isinstance(rewards.get("format"), FormatReward)
    correctness = rewards.get("correctness", sample_timeout_s=2.5, num_workers=1)
    assert (correctness.sample_timeout_s, correctness.num_workers) == (2.5, 1)


def test_unknown_name_lists_what_is_available():
    with pytest.raises(ValueError) as info:
        rewards.get("corectness")
    message = str(info.value)
    assert "unknown reward 'corectness'" in message
    for name in ("correctness (built-in)", "format (built-in)", "clip (built-in)", "image_reward (built-in)"):
        assert name in message
    assert "'package.module:function'" in message and "'path/to/file.py:function'" in message


def test_unknown_and_missing_options_name_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown option\(s\) timeout; valid options: sample_timeout_s, num_workers"):
        rewards.get("correctness", timeout=3)
    with pytest.raises(ValueError, match=r"missing required option\(s\) url"):
        rewards.get("remote")
    with pytest.raises(ValueError, match="sample_timeout_s: got -1"):
        rewards.get("correctness", sample_timeout_s=-1)
    with pytest.raises(ValueError, match=r"valid options: none"):
        rewards.get("format", strict=True)


def test_module_function_one_off():
    reward = rewards.get("rewards.format:FormatReward")  # a class: instantiated with the options
    assert reward(SAMPLES) == [1.0, 0.0]


def test_module_one_off_errors():
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_xyz'"):
        rewards.get("no_such_module_xyz:score")
    with pytest.raises(ValueError, match="module 'rewards.format' has no attribute 'nope'; callables there: .*FormatReward"):
        rewards.get("rewards.format:nope")
    with pytest.raises(ValueError, match="'THINK_OPEN' is a str, not a callable"):
        rewards.get("rewards.format:THINK_OPEN")


def test_file_one_off_function_receives_options_on_every_call(misbehaving):
    reward = rewards.get(misbehaving("constant"), value=0.25)
    assert reward(SAMPLES) == [0.25, 0.25]
    assert rewards.get(misbehaving("constant"))(SAMPLES) == [1.0, 1.0]
    with pytest.raises(ValueError, match=r"unknown option\(s\) scale; valid options: value"):
        rewards.get(misbehaving("constant"), scale=2)


def test_file_one_off_errors(tmp_path):
    with pytest.raises(ValueError, match="reward file not found: .*missing.py"):
        rewards.get(f"{tmp_path}/missing.py:score")
    broken = tmp_path / "broken.py"
    broken.write_text("def score(samples):\n    return [\n")
    with pytest.raises(ValueError, match=r"reward file .*broken.py failed to load: SyntaxError"):
        rewards.get(f"{broken}:score")
    exits = tmp_path / "exits.py"
    exits.write_text("raise SystemExit(2)\n")
    with pytest.raises(ValueError, match="failed to load: SystemExit"):
        rewards.get(f"{exits}:score")
    good = tmp_path / "good.py"
    good.write_text("def score(samples):\n    return [0.5] * len(samples)\n")
    with pytest.raises(ValueError, match="has no attribute 'scroe'; callables there: score"):
        rewards.get(f"{good}:scroe")


def test_file_reward_pickles_by_path_and_works_in_a_fresh_interpreter(misbehaving, tmp_path):
    reward = rewards.get(misbehaving("constant"), value=0.75)
    blob = tmp_path / "reward.pkl"
    blob.write_bytes(pickle.dumps((reward, SAMPLES)))
    code = "import pickle, sys; reward, samples = pickle.load(open(sys.argv[1], 'rb')); print(reward(samples))"
    result = subprocess.run([sys.executable, "-c", code, str(blob)], cwd=REPO, capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[0.75, 0.75]"
    assert "constant" in repr(reward)


def test_relative_file_names_are_made_absolute(misbehaving, monkeypatch):
    path, attr = misbehaving("constant").rsplit(":", 1)
    monkeypatch.chdir(Path(path).parent)
    assert registry.canonical_name(f"misbehaving.py:{attr}") == f"{path}:{attr}"
    assert registry.canonical_name("format") == "format"
    assert registry.canonical_name("rewards.format:FormatReward") == "rewards.format:FormatReward"


def test_check_resolves_without_building(misbehaving):
    registry.check("clip")  # built-in: not imported
    registry.check(misbehaving("constant"))
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        registry.check("nope")
    with pytest.raises(ValueError, match="reward name: got ''"):
        registry.check("")


def test_register_refuses_a_second_owner_of_a_name():
    class Other:
        def __call__(self, samples):
            return [0.0] * len(samples)

    with pytest.raises(ValueError, match="'format' is already registered to rewards.format.FormatReward"):
        registry.register("format")(Other)
    assert registry.register("format")(FormatReward) is FormatReward  # same owner again is fine


def test_builtin_module_failures_are_explained(monkeypatch):
    monkeypatch.setitem(registry.BUILTIN_MODULES, "broken_builtin", "rewards._no_such_module")
    with pytest.raises(ValueError, match="needs module rewards._no_such_module, which failed to import: ModuleNotFound"):
        rewards.get("broken_builtin")
    monkeypatch.setitem(registry.BUILTIN_MODULES, "unregistered_builtin", "rewards.extract")
    with pytest.raises(ValueError, match=r"imported but did not @register\('unregistered_builtin'\)"):
        rewards.get("unregistered_builtin")


def test_isolation_of():
    assert registry.isolation_of(rewards.get("format")) == "thread"
    assert registry.isolation_of(lambda samples: samples) == "process"

    class Odd:
        isolation = "gpu"

    with pytest.raises(ValueError, match="isolation='gpu'; expected 'process' or 'thread'"):
        registry.isolation_of(Odd())


def _fake_distribution(root: Path, dist: str, entry_points: dict[str, str], module_source: str = "") -> None:
    """A minimal installed distribution (dist-info with entry_points.txt) that importlib.metadata finds."""
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[unigrpo.rewards]\n{lines}\n")
    if module_source:
        (root / f"{dist}_mod.py").write_text(textwrap.dedent(module_source))


def test_entry_points_resolve_and_conflicts_are_errors(tmp_path, monkeypatch):
    source = """
        class Half:
            def __init__(self, *, scale=1.0):
                self.scale = scale
            def __call__(self, samples):
                return [0.5 * self.scale] * len(samples)
    """
    _fake_distribution(tmp_path / "a", "fake_a", {"half": "fake_a_mod:Half", "format": "fake_a_mod:Half",
                                                  "dup": "fake_a_mod:Half", "gone": "fake_a_missing:Thing"}, source)
    _fake_distribution(tmp_path / "b", "fake_b", {"dup": "fake_b_mod:Other"})
    monkeypatch.syspath_prepend(str(tmp_path / "a"))
    monkeypatch.syspath_prepend(str(tmp_path / "b"))

    assert rewards.available()["half"] == "entry point fake_a: fake_a_mod:Half"
    assert rewards.get("half", scale=2.0)(SAMPLES) == [1.0, 1.0]
    with pytest.raises(ValueError, match="'format' is ambiguous: it is a built-in and also an entry point .* fake_a"):
        rewards.get("format")
    with pytest.raises(ValueError, match="'dup' is provided by several entry points: fake_"):
        rewards.get("dup")
    with pytest.raises(ValueError, match=r"entry point 'gone' \(fake_a: fake_a_missing:Thing\) failed to load"):
        rewards.get("gone")
