"""Atomic file writes: a reader, or a run killed mid-write, never sees a half-written file under its final name.

Every file the project writes for others to read (checkpoints, weights, images, tables, run records) goes
through here: a temp file in the target's folder (same file system), then `os.replace`.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

TEMP_SUFFIX = ".tmp"


def temp_glob(name: str = "*") -> str:
    """The pattern of `atomic_path`'s temp files for target `name` (all targets by default)."""
    return f".{name}.*{TEMP_SUFFIX}"


def remove_stale_temp_files(folder: str | os.PathLike, names: Iterable[str] = ("*",)) -> list[Path]:
    """Delete the temp files that a killed write to `folder/<name>` left behind (a finished file never matches:
    its name has no leading dot and no temp suffix). Returns the removed paths."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = sorted({path for name in names for path in folder.glob(temp_glob(name))})
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def unwritable_reason(folder: str | os.PathLike) -> str | None:
    """Why files cannot be created in `folder` (created if missing), e.g. "Permission denied"; None when
    they can. Checked before slow work, so that a read-only output fails in one line and not per file."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=str(folder)):
            pass
    except OSError as error:
        return error.strerror or str(error)
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = TEMP_SUFFIX) -> Iterator[Path]:
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
