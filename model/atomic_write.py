"""`write_atomic`: the one way this repository replaces a file so that a crash never leaves half of it.

The content goes to a hidden temporary file in the target's directory (`.<name>.tmp-<8 hex>`, the same file
system, so the rename is atomic), is fsynced, then `os.replace`d onto the target, and the directory is fsynced
so the rename itself survives a power cut. A crash or an exception at any point leaves the old file (or no
file) and the temporary file is removed on the way out; a killed process may leave a `.<name>.tmp-*` file,
which callers that care clean up by that pattern (jobs/rollout.py does).

Why it lives in `model/` although nothing here is model-specific: the top-level packages are fixed, and
`model/` is the lowest layer — it imports nothing else of this repository, while `jobs/` and `actors/`
already import it. Putting the helper anywhere higher would make `model/` (which saves tokenizers and
checkpoints) import upwards. It needs only the standard library, so importing it costs nothing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: str | Path, content: str | bytes | Callable[[Path], object]) -> Path:
    """Replace `path` with `content` atomically; returns `path`.

    `content`: text (written as UTF-8), bytes, or a callable that writes the file at the temporary path
    it is given (for writers that want a path: pyarrow, PIL, safetensors). The parent directory must exist.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        if isinstance(content, str):
            temporary.write_bytes(content.encode("utf-8"))
        elif isinstance(content, (bytes, bytearray, memoryview)):
            temporary.write_bytes(content)
        else:
            content(temporary)
        with open(temporary, "rb") as handle:  # the writer may have closed its own handle: fsync by a new one
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    fsync_directory(path.parent)
    return path


def fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
