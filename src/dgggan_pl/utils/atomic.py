"""Atomic file writes: a reader, or a run killed mid-write, never sees a half-written file under its final name.

Every file the project writes for others to read (checkpoints, weights, images, tables, run records) goes
through here: a temp file in the target's folder (same file system), then `os.replace`.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it replaces `path`, on any error it is removed.

    The temp file gets the usual umask permissions (mkstemp's are 0600, wrong for shared outputs).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    tmp = Path(tmp_name)
    try:
        tmp.chmod(0o666 & ~_umask())
        yield tmp
        tmp.chmod(0o666 & ~_umask())  # again: writers such as safetensors recreate the file (0600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "w", *, fsync: bool = True, **kwargs: Any
) -> Iterator[IO]:
    """`open(path, mode)` that only publishes the file once the block finished (flushed and, by default,
    fsynced, so a crash right after the rename cannot leave an empty file on disk)."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as stream:
        yield stream
        stream.flush()
        if fsync:
            os.fsync(stream.fileno())


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8, newlines untranslated, so CSV `\\r\\n` survives) atomically."""
    with atomic_open(path, "w", encoding="utf-8", newline="") as stream:
        stream.write(text)


def write_json_atomic(path: str | os.PathLike, data: Any, *, sort_keys: bool = True) -> None:
    """Write `data` as indented JSON atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")
