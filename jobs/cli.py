"""The `unigrpo` command: `unigrpo NAME ARGS...` runs `python -m jobs.NAME ARGS...`, from any directory.

    unigrpo train --set run.steps=5          # = python -m jobs.train --set run.steps=5
    unigrpo --help                           # the commands, each with the first paragraph of its docstring

Installed as a console script (pyproject.toml, `[project.scripts]`). A command is the job module run as
`__main__` (runpy), so its arguments, output and exit status are those of `python -m jobs.NAME`; the commands
are named here and found by module name, so a job module added later needs only its name in `COMMANDS`.
Relative paths in a job's config are found from the current directory, then in the installed project
(jobs/paths.py); docs/install.md has the newcomer path.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import runpy
import sys
from pathlib import Path

COMMANDS = ("train", "rollout", "eval", "sft", "sample", "show", "bench")
"""Sub-commands, in the order `--help` lists them: each is the module `jobs.<name>`."""


def describe(name: str) -> str:
    """The first paragraph of `jobs.<name>`'s docstring on one line, read without importing the module."""
    spec = importlib.util.find_spec(f"jobs.{name}")
    if spec is None or spec.origin is None:
        return "(not in this install)"
    doc = ast.get_docstring(ast.parse(Path(spec.origin).read_text())) or ""
    return " ".join(doc.split("\n\n")[0].split())


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {describe(name)}" for name in COMMANDS]
    return ("usage: unigrpo COMMAND [ARGS...]   (= python -m jobs.COMMAND [ARGS...]; "
            "unigrpo COMMAND --help for its arguments)\n\ncommands:\n" + "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage(), end="", file=sys.stdout if args else sys.stderr)
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"unigrpo: unknown command {name!r}; valid commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    saved = sys.argv, sys.path[:]
    sys.argv = [f"unigrpo {name}", *rest]  # runpy sets argv[0] to the module's file, as `python -m` does
    if os.getcwd() not in sys.path:  # as `python -m`: plugin modules (`pkg.mod:fn`) import from the current directory
        sys.path.insert(0, os.getcwd())
    try:
        runpy.run_module(f"jobs.{name}", run_name="__main__", alter_sys=True)
    except SystemExit as exit_:  # the job's `sys.exit(main())`: its status is ours
        return _status(exit_.code)
    finally:
        sys.argv, sys.path[:] = saved
    return 0


def _status(code: object) -> int:
    """sys.exit's argument as the process would report it: None 0, an int itself, anything else (a message) 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
