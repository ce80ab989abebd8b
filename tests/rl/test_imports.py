"""rl/, rewards/ and model/ are plain PyTorch/Python: importing them pulls in neither ray nor deepspeed.

Each check runs in a fresh interpreter, so nothing imported by other tests can hide or fake a result.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = ("ray", "deepspeed")

PROBE = """
import importlib, json, pkgutil, sys
packages = [importlib.import_module(name) for name in {packages!r}]
if {walk!r}:
    for package in packages:
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            importlib.import_module(info.name)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {forbidden!r})
print(json.dumps({{"loaded": loaded, "modules": len(sys.modules)}}))
"""


def probe(packages: list[str], walk: bool) -> dict:
    code = PROBE.format(packages=packages, walk=walk, forbidden=FORBIDDEN)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"importing {packages} failed:\n{result.stderr[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_importing_rl_rewards_and_model_imports_neither_ray_nor_deepspeed():
    report = probe(["rl", "rewards", "model"], walk=False)
    assert report["loaded"] == [], f"forbidden modules imported: {report['loaded']}"


def test_every_submodule_imports_neither_ray_nor_deepspeed():
    report = probe(["rl", "rewards", "model"], walk=True)
    assert report["loaded"] == [], f"submodules import forbidden modules: {report['loaded']}"
