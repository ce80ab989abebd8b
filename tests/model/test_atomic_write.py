"""model/atomic_write.py: the content lands whole, and a writer that fails leaves the old file and no temporary."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.atomic_write import fsync_directory, write_atomic


def test_text_bytes_and_callable_content_land_exactly(tmp_path):
    text = tmp_path / "a.json"
    assert write_atomic(text, "é{\"x\": 1}\n") == text
    assert text.read_bytes() == b"\xc3\xa9{\"x\": 1}\n"  # UTF-8 whatever the locale

    binary = tmp_path / "b.bin"
    write_atomic(str(binary), bytes(range(256)))
    assert binary.read_bytes() == bytes(range(256))

    seen = []

    def writer(temporary: Path) -> None:
        seen.append(temporary)
        with open(temporary, "wb") as handle:  # writers that open and close the path themselves
            handle.write(b"written by a path writer")

    called = tmp_path / "c.dat"
    write_atomic(called, writer)
    assert called.read_bytes() == b"written by a path writer"
    assert seen[0].parent == tmp_path and seen[0].name.startswith(".c.dat.tmp-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin", "c.dat"]


def test_replacing_an_existing_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("old line\n" * 1000)
    write_atomic(path, "new\n")
    assert path.read_text() == "new\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "shard-00001.jsonl"
    path.write_text("the previous complete file\n")

    def half_then_crash(temporary: Path) -> None:
        temporary.write_text("half of a new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, half_then_crash)
    assert path.read_text() == "the previous complete file\n"
    assert [p.name for p in tmp_path.iterdir()] == ["shard-00001.jsonl"]


def test_a_failure_before_any_file_exists_leaves_nothing(tmp_path):
    def crash(temporary: Path) -> None:
        raise KeyboardInterrupt  # not an Exception: the temporary must go all the same

    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "summary.json", crash)
    assert list(tmp_path.iterdir()) == []


def test_a_writer_that_writes_nothing_fails_without_touching_the_target(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(b"old")
    with pytest.raises(FileNotFoundError):
        write_atomic(path, lambda temporary: None)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_missing_directory_is_an_error_not_a_silent_mkdir(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "absent" / "f.txt", "x")
    assert list(tmp_path.iterdir()) == []


def test_fsync_directory_tolerates_a_directory_it_cannot_open(tmp_path):
    fsync_directory(tmp_path)  # an ordinary directory: no error
    fsync_directory(tmp_path / "absent")  # cannot be opened: ignored (as on platforms without directory fds)
