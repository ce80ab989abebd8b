"""Dispatch `python -m jobs.bench <name> ...` to `jobs.bench.<name>.main`."""

import importlib
import sys

from jobs.bench import BENCHMARKS


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m jobs.bench {{{','.join(BENCHMARKS)}}} [options]")
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f"unknown benchmark {name!r}; available: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(f"jobs.bench.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"jobs.bench.{name}":
            raise
        print(f"benchmark {name!r} is not implemented yet", file=sys.stderr)
        return 2
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
