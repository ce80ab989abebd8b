"""Where a relative input path of a config is found: the current directory first, then the installed project.

The shipped demo's files, the policies in `model/assets/` and the prompts in `data/`, live in the installed
project (`PROJECT_ROOT`: the checkout for `pip install -e .`, site-packages for a plain install, which ships
both, pyproject.toml). The shipped configs name them relative to that root, so the embedded default runs from
any directory. Resolution happens once, when a config is loaded (`jobs.config.load_config` calls
`resolve_inputs` on the raw tree, and `resolve_input` on `--config` itself): every reader after it, the driver
and the actors alike, sees one path. A path found in the current directory is kept as written (the resolved
config.yaml and `--print-config` read as before); one found only in the project becomes absolute, so the
resolved tree says which file the run read. Output paths (`run.output_dir`, `eval.out`, ...) stay relative
to the current directory. docs/install.md §2 has the rule and the keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.resolve import REPO

PROJECT_ROOT = REPO
"""The directory holding the installed packages (jobs/, model/, ...) and the demo's data/ (model.resolve's)."""

INPUT_KEYS = ("model.path", "data.train", "data.eval", "rollout.image_tokenizer", "generate.prompts",
              "checkpoint.resume")
"""Every config key whose value is a file or directory the run reads. Reward plugins' own options (e.g. the
`path` of `clip`) and one-off plugin files (`path/to/file.py:fn`) are read from the current directory as given."""


def resolve_input(path: str) -> str:
    """`path` as given when it is absolute, exists from the current directory or exists nowhere (its reader
    reports it missing, naming its key); else its absolute path in the installed project."""
    candidate = Path(path)
    if candidate.is_absolute() or candidate.exists():
        return path
    installed = PROJECT_ROOT / candidate
    return str(installed) if installed.exists() else path


def resolve_inputs(raw: dict) -> dict:
    """The raw config tree (nested dicts, before validation) with the value of every `INPUT_KEYS` entry resolved:
    a string, each item of a list, and the `path` of a mapping (a `data.train` mixture source). Values of
    another type are left for validation to report."""
    out = dict(raw)
    for key in INPUT_KEYS:
        section, name = key.split(".")
        if isinstance(out.get(section), dict) and name in out[section]:
            out[section] = {**out[section], name: _resolved(out[section][name])}
    return out


def _resolved(value: Any) -> Any:
    if isinstance(value, str):
        return resolve_input(value)
    if isinstance(value, list):
        return [_resolved(item) for item in value]
    if isinstance(value, dict) and isinstance(value.get("path"), str):
        return {**value, "path": resolve_input(value["path"])}
    return value
