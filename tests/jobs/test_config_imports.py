"""Reading, checking and printing the run config needs no Ray: `jobs.config` (and everything it imports)
loads no `ray` module, so `--print-config` and config errors never wait for, or depend on, a cluster.

Runs in a fresh interpreter, so modules other tests imported cannot hide an import.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
import yaml
from jobs.config import CONFIG_DIR, load_config
from jobs.configtree import to_dict
cfg = load_config(CONFIG_DIR / "demo.yaml")
print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "deepspeed"))
print(json.dumps({"loaded": loaded, "run_name": cfg.run.name}))
"""


JOBS_PROBE = """
import contextlib, io, json, sys
import jobs.eval, jobs.sample, jobs.sft
printed = {}
for job in (jobs.eval, jobs.sample, jobs.sft):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = job.main(["--set", "eval.limit=3", "--print-config"])
    printed[job.__name__] = (code, out.getvalue())
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "deepspeed"))
print(json.dumps({"loaded": loaded, "printed": printed}))
"""


def test_loading_and_printing_the_demo_config_imports_no_ray():
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["run_name"] == "demo"  # the demo config really was loaded, not the defaults
    assert "algo:" in done.stdout and "reward_actors:" in done.stdout  # and printed
    assert report["loaded"] == [], f"loading the config imported {report['loaded']}"


def test_jobs_eval_sample_and_sft_import_and_print_their_config_without_ray():
    done = subprocess.run([sys.executable, "-c", JOBS_PROBE], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for job in ("jobs.eval", "jobs.sample", "jobs.sft"):
        code, text = report["printed"][job]
        assert code == 0 and "  limit: 3  # " in text and "sample:  # " in text  # the tree, with the --set
    assert "  name: sft_demo  # " in report["printed"]["jobs.sft"][1]  # jobs.sft's own default config
    assert report["loaded"] == [], f"importing jobs.eval/sample/sft or printing their config imported {report['loaded']}"
