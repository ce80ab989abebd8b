"""The `unigrpo` command (jobs/cli.py): each sub-command is `python -m jobs.<name>` with the same arguments, output
and exit status; `--help` lists them with their descriptions; an unknown one exits 2 naming the valid ones."""

from __future__ import annotations

import ast

import pytest

from jobs.cli import COMMANDS, main
from jobs.paths import PROJECT_ROOT


def test_the_console_script_is_this_main():
    assert '\n[project.scripts]\nunigrpo = "jobs.cli:main"\n' in (PROJECT_ROOT / "pyproject.toml").read_text()


def test_help_lists_every_job_with_the_first_paragraph_of_its_docstring(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        source = PROJECT_ROOT / "jobs" / (f"{name}/__init__.py" if name == "bench" else f"{name}.py")
        first = " ".join(ast.get_docstring(ast.parse(source.read_text())).split("\n\n")[0].split())
        assert f"\n  {name:<7}  {first}\n" in out
    assert main([]) == 2 and "commands:" in capsys.readouterr().err


def test_an_unknown_command_exits_2_naming_the_valid_ones(capsys):
    assert main(["trian", "--print-config"]) == 2
    assert capsys.readouterr().err == ("unigrpo: unknown command 'trian'; valid commands: train, rollout, eval, "
                                       "sft, sample, show, bench\n")


@pytest.mark.filterwarnings("ignore:'jobs.*' found in sys.modules:RuntimeWarning")  # imported first, here only
@pytest.mark.parametrize("name", ["train", "eval"])
def test_a_command_prints_and_exits_as_its_module(capsys, name):
    from importlib import import_module

    argv = ["--set", "run.steps=3", "--print-config"]
    assert import_module(f"jobs.{name}").main(argv) == 0
    expected = capsys.readouterr().out
    assert main([name, *argv]) == 0
    assert capsys.readouterr().out == expected and "steps: 3  #" in expected
    bad = ["--set", "algo.mu=0"]  # a config error: exit 2 from the module, and from the command
    assert import_module(f"jobs.{name}").main(bad) == 2
    expected_err = capsys.readouterr().err
    assert main([name, *bad]) == 2 and capsys.readouterr().err == expected_err and "algo.mu" in expected_err


def test_the_command_runs_from_another_directory(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--print-config"]) == 0
    assert f"path: {PROJECT_ROOT / 'model/assets/sign_slip_policy'}  #" in capsys.readouterr().out


def test_an_exit_status_and_a_missing_job_read_as_python_would(capsys):
    from jobs.cli import _status, describe

    assert [_status(None), _status(0), _status(4)] == [0, 0, 4]
    assert _status("cannot go on") == 1 and capsys.readouterr().err == "cannot go on\n"  # sys.exit(message)
    assert describe("no_such_job") == "(not in this install)"
