"""Citations of the design docs resolve inside the repository, and nothing points outside it.

A citation is `<name>.md §<number>`, with or without a `docs/` prefix, also written as a Markdown
link (the link target between the file name and the §) and as a range (`§2–§6`, `§3–5`: both ends are
checked). It resolves when `docs/<name>.md` exists and has a heading whose number is exactly the cited one
(`## 3.` or `### 3.2`).
Files scanned: every .py/.md/.yaml file git knows of (tracked, plus new files not ignored).
"""

from __future__ import annotations

import functools
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SUFFIXES = (".py", ".md", ".yaml")
# Built from pieces so this file does not match its own check.
OUTSIDE = ("shared" + "/spec", ".." + "/shared")

_NUMBER = r"\d+(?:\.\d+)*"
CITATION = re.compile(
    r"(?<![\w./-])(?:docs/)?(?P<name>[A-Za-z0-9_-]+)\.md"  # name.md or docs/name.md
    r"(?:\]\([^)\s]*\))?"  # optional Markdown link target
    r"\)?\s*§\s*(?P<first>" + _NUMBER + r")"
    r"(?:\s*[–-]\s*§?\s*(?P<last>" + _NUMBER + r"))?"
)


def scanned_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    paths = {ROOT / name for name in out.split("\0") if name.endswith(SUFFIXES)}
    return sorted(p for p in paths if p.is_file())


@functools.cache
def headings(name: str) -> frozenset[str] | None:
    """Section numbers of docs/<name>.md (`## 3. X` -> "3", `### 3.2 Y` -> "3.2"); None if no such doc."""
    path = DOCS / f"{name}.md"
    if not path.is_file():
        return None
    found = re.findall(r"^#{1,6}\s+(" + _NUMBER + r")(?:\.(?!\d)|\s|$)", path.read_text(), flags=re.MULTILINE)
    return frozenset(found)


def broken_citations(text: str) -> list[str]:
    """`name.md §N: why` for each citation in `text` that does not resolve."""
    problems = []
    for match in CITATION.finditer(text):
        name = match["name"]
        numbers = [n for n in (match["first"], match["last"]) if n]
        if match["last"] and "." not in match["last"] and "." in match["first"]:
            numbers[1] = match["first"].rsplit(".", 1)[0] + "." + match["last"]  # §3.2–4 means §3.4
        sections = headings(name)
        for number in numbers:
            if sections is None:
                problems.append(f"{name}.md §{number}: docs/{name}.md does not exist")
            elif number not in sections:
                problems.append(f"{name}.md §{number}: docs/{name}.md has no heading numbered {number}")
    return problems


def test_every_citation_resolves_to_a_numbered_heading():
    failures = []
    for path in scanned_files():
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            failures += [f"{path.relative_to(ROOT)}:{lineno}: {p}" for p in broken_citations(line)]
    assert not failures, "broken doc citations:\n" + "\n".join(failures)


def test_nothing_points_outside_the_repository():
    failures = []
    for path in scanned_files():
        for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            failures += [f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}" for bad in OUTSIDE if bad in line]
    assert not failures, "references outside the repository (cite docs/ instead):\n" + "\n".join(failures)


S = "\N{SECTION SIGN}"  # the examples below must not be citations of this file themselves


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        (f"see docs/algorithm.md {S}2.4", True),
        (f"(algorithm.md {S}2–{S}6)", True),
        (f"[docs/algorithm.md](algorithm.md) {S}5.1", True),
        (f"docs/models.md {S}3.2", True),
        (f"docs/algorithm.md {S}2.9", False),  # no such heading
        (f"docs/algorithm.md {S}9", False),
        (f"docs/no_such_doc.md {S}1", False),
        (f"algorithm.md {S}2–{S}9", False),  # the end of a range is checked too
    ],
)
def test_the_checker_itself(text, ok):
    assert (broken_citations(text) == []) is ok
