"""Open registries: `algo.estimator`, `algo.kl.estimator` and `algo.masking.schedule` accept a registered name
or a plugin, `pkg.mod:fn` or `path/to/file.py:fn` (resolved by the reward registry's `load_plugin`).

Checking a config loads the plugin and registers it under the config's string; a process that never saw the
config (a learner rank) resolves the same string by itself on first lookup. Every error names the key and
what would be right.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rl.config import AlgoConfig, KLConfig, MaskingConfig
from rl.estimators import ESTIMATORS, build_views, get_estimator
from rl.losses import KL_ESTIMATORS, get_kl, policy_loss
from rl.masking import SCHEDULES, get_schedule, ratio_schedule, register_schedule, timestep_schedule

REPO = Path(__file__).resolve().parents[2]
FORMS = "or a plugin 'pkg.mod:fn' / 'path/to/file.py:fn'"


@pytest.fixture(autouse=True)
def clean_registries():
    """Plugins register themselves for the life of the process; give every test the built-ins only."""
    before = {id(r): dict(r) for r in (ESTIMATORS, KL_ESTIMATORS, SCHEDULES)}
    yield
    for registry in (ESTIMATORS, KL_ESTIMATORS, SCHEDULES):
        registry.clear()
        registry.update(before[id(registry)])


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(("make", "message"), [
    (lambda: AlgoConfig(estimator="ppo"),
     f"estimator: got 'ppo'; expected one of ['coupled', 'diffu_grpo', 'random_masking', 'unigrpo'] {FORMS}"),
    (lambda: KLConfig(estimator="k4"), f"estimator: got 'k4'; expected one of ['k1', 'k2', 'k3'] {FORMS}"),
    (lambda: KLConfig(estimator=3), f"estimator: got 3; expected one of ['k1', 'k2', 'k3'] {FORMS}"),
    (lambda: MaskingConfig(schedule="cosine"),
     f"schedule: got 'cosine'; expected one of ['ramp', 'random', 'stratified'] {FORMS}"),
])
def test_an_unknown_name_lists_the_registered_ones_and_the_plugin_forms(make, message):
    with pytest.raises(ValueError) as err:
        make()
    assert str(err.value) == message


def test_plugin_errors_name_the_key_and_the_problem(tmp_path):
    broken = write(tmp_path, "broken.py", "raise RuntimeError('boom')\n")
    plain = write(tmp_path, "plain.py", "NOT_A_FUNCTION = 3\ndef fn(): pass\n")
    cases = {
        lambda: AlgoConfig(estimator=f"{tmp_path}/missing.py:fn"):
            f"estimator: estimator file not found: {tmp_path}/missing.py; expected 'path/to/file.py:function'",
        lambda: KLConfig(estimator=f"{broken}:fn"):
            f"estimator: KL estimator file {broken} failed to load: RuntimeError: boom",
        lambda: MaskingConfig(schedule=f"{plain}:nope"):
            f"schedule: masking schedule file {plain} has no attribute 'nope'; callables there: fn",
        lambda: MaskingConfig(schedule=f"{plain}:NOT_A_FUNCTION"):
            f"schedule: masking schedule file {plain}: 'NOT_A_FUNCTION' is a int, not a callable masking schedule",
        lambda: AlgoConfig(estimator="no_such_pkg_xyz.mod:fn"):
            "estimator: estimator 'no_such_pkg_xyz.mod:fn': cannot import module 'no_such_pkg_xyz.mod': "
            "ModuleNotFoundError: No module named 'no_such_pkg_xyz'",
    }
    for make, message in cases.items():
        with pytest.raises(ValueError) as err:
            make()
        assert str(err.value) == message
    assert sorted(ESTIMATORS) == ["coupled", "diffu_grpo", "random_masking", "unigrpo"]  # nothing half-registered


def test_a_module_plugin_kl_is_registered_under_the_config_string():
    name = "rl.losses:kl_k2"  # k2 under another name: ½·Δ²
    assert KLConfig(estimator=name).estimator == name
    assert KL_ESTIMATORS[name] is KL_ESTIMATORS["k2"] and get_kl(name) is KL_ESTIMATORS["k2"]
    logp = torch.tensor([[-1.0, -2.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -2.0]], dtype=torch.float64)
    loss, stats = policy_loss(logp, logp, ref, torch.zeros(1, dtype=torch.float64), torch.ones(1, 2, dtype=torch.bool),
                              clip_eps=0.2, beta=1.0, kl=name)
    assert stats["kl_ref_sum"] == pytest.approx(0.5 * 0.5**2)  # ½·(0.5)² on the first token, 0 on the second
    assert loss.item() == pytest.approx(0.125 / 2)  # Â = 0: only β·KL, mean over the 2 tokens


def test_a_file_schedule_plugin_sets_the_ratios(tmp_path):
    path = write(tmp_path, "schedules.py", "def halves(mu, T, generator, t1):\n    return [T // 2] * mu\n")
    name = f"{path}:halves"
    cfg = AlgoConfig(mu=3, masking=MaskingConfig(schedule=name))  # loads and registers it
    assert SCHEDULES[name](3, 10, None, None) == [5, 5, 5]
    assert ratio_schedule(name, 3, 1000, torch.Generator(), p_min=0.05, p_max=1.0) == [0.5, 0.5, 0.5]
    assert cfg.masking.schedule == name


def test_a_schedule_must_return_mu_integer_timesteps_in_range():
    cases = {"short": [1], "float": [0.5, 1], "above": [1, 11]}
    for label, steps in cases.items():
        register_schedule(f"bad_{label}")(lambda mu, T, generator, t1, steps=steps: steps)
        with pytest.raises(ValueError, match=re.escape(f"masking schedule 'bad_{label}' returned {steps!r}; "
                                                       "expected 2 integer timesteps in [0, 10]")):
            timestep_schedule(f"bad_{label}", 2, 10, torch.Generator())
    register_schedule("numpy_like")(lambda mu, T, generator, t1: [torch.tensor(3), torch.tensor(7)])
    assert timestep_schedule("numpy_like", 2, 10, torch.Generator()) == [3, 7]
    with pytest.raises(ValueError, match="masking schedule 'stratified' is already registered"):
        register_schedule("stratified")(lambda *a: [])


def test_the_builtin_schedules_are_registered_and_unchanged():
    assert sorted(SCHEDULES) == ["ramp", "random", "stratified"]
    assert get_schedule("stratified") is SCHEDULES["stratified"]
    assert timestep_schedule("stratified", 5, 1000, torch.Generator(), t1=100) == [100, 300, 500, 700, 900]
    assert timestep_schedule("ramp", 3, 1000, torch.Generator(), t1=400) == [400, 700, 1000]


def test_a_file_estimator_plugin_builds_views_by_name(tmp_path, kit):
    path = write(tmp_path, "est.py", (
        "from rl.estimators import get_estimator\n"
        "def whole(batch, cfg, **kw):\n"
        "    return get_estimator('diffu_grpo')(batch, cfg, **kw)\n"))
    cfg = AlgoConfig(estimator=f"{path}:whole", mu=2)
    batch = kit.text_batch({"a": 2, "b": 1})
    views = build_views(batch, cfg, iteration=1, step=3, run_seed=5, mask_token_id=kit.MASK)
    assert torch.equal(views.loss_mask[0], batch.scored_mask)  # diffu_grpo's loss positions: every scored token
    assert get_estimator(f"{path}:whole") is ESTIMATORS[f"{path}:whole"]


PROBE = """
import json, sys, torch
from rl.estimators import ESTIMATORS
from rl.losses import KL_ESTIMATORS, get_kl
from rl.masking import timestep_schedule
name, schedule = sys.argv[1], sys.argv[2]
before = name in KL_ESTIMATORS
kl = get_kl(name)(torch.tensor([[0.0]]), torch.tensor([[0.0]])).item()
print(json.dumps({"before": before, "after": name in KL_ESTIMATORS, "kl": kl,
                  "steps": timestep_schedule(schedule, 2, 10, torch.Generator())}))
"""


def test_a_fresh_process_resolves_a_plugin_name_on_its_own(tmp_path):
    """What a learner rank does: it gets only the config string, never the driver's registration."""
    path = write(tmp_path, "plug.py", (
        "import torch\n"
        "def seven(logp, ref_logp):\n    return torch.full_like(logp, 7.0)\n"
        "def fixed(mu, T, generator, t1):\n    return [1, T]\n"))
    done = subprocess.run([sys.executable, "-c", PROBE, f"{path}:seven", f"{path}:fixed"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"before": False, "after": True, "kl": 7.0,
                                                                "steps": [1, 10]}
