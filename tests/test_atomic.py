"""Atomic writes: a failure mid-write keeps the previous file and leaves no temp file behind."""

from __future__ import annotations

import json
import os
import stat

import pytest

from dgggan_pl.utils.atomic import atomic_open, write_json_atomic, write_text_atomic


def test_failed_write_keeps_the_previous_file_and_no_temp(tmp_path) -> None:
    target = tmp_path / "table.md"
    write_text_atomic(target, "old\n")
    with pytest.raises(RuntimeError), atomic_open(target, "w") as stream:
        stream.write("half of the new conte")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.md"]


def test_published_files_get_umask_permissions_not_mkstemp_0600(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "sub" / "info.json", {"b": 1, "a": 2})
    finally:
        os.umask(old)
    path = tmp_path / "sub" / "info.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert list(json.loads(path.read_text())) == ["a", "b"]  # sorted keys by default


def test_text_newlines_are_not_translated(tmp_path) -> None:
    write_text_atomic(tmp_path / "t.csv", "a,b\r\n1,2\r\n")
    assert (tmp_path / "t.csv").read_bytes() == b"a,b\r\n1,2\r\n"
