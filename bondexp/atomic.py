"""Whole-file writes: a reader sees the old file or the new one, never a part of either.

Every file bondexp writes goes through here: bytes go to a temporary file in the target's
folder, are flushed and fsynced, replace the target with ``os.replace``, and the folder is
fsynced so the rename survives a crash. Standard library only, so importing it costs nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """Yield a binary file that replaces ``path`` only once it is completely written and synced.

    Parent folders are created. On any exception the temporary file is removed and ``path``
    keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` whole (see :func:`atomic_file`); return ``path``."""
    with atomic_file(path) as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` whole; return ``path``."""
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, value: Any) -> Path:
    """Write ``value`` as indented JSON (unknown types as ``str``, a final newline) to ``path`` whole."""
    return atomic_write_text(path, json.dumps(value, indent=2, sort_keys=False, default=str) + "\n")
