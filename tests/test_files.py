"""glip.files: atomic writes with ordinary file modes, and clearing what killed writes left."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from glip.files import (
    remove_stale_temporaries,
    temporary_directory_for,
    write_atomic,
    write_json_atomic,
    write_text_atomic,
)


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_written_files_get_the_umask_default_mode(tmp_path: Path, umask_022: None) -> None:
    write_text_atomic(tmp_path / "a.txt", "hello")
    write_json_atomic(tmp_path / "b.json", {"x": 1})
    write_atomic(tmp_path / "c.bin", lambda temporary: temporary.write_bytes(b"\0\1"))
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert (tmp_path / "b.json").read_text() == '{\n  "x": 1\n}'
    assert [_mode(tmp_path / name) for name in ("a.txt", "b.json", "c.bin")] == [0o644] * 3
    folder = temporary_directory_for(tmp_path / "model")
    assert _mode(folder) == 0o755 and folder.parent == tmp_path


def test_json_is_standard_nan_becomes_null(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "m.json", {"AP": float("nan"), "per": [1.5, float("inf"), (2, -float("inf"))]})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"AP": None, "per": [1.5, None, [2, None]]}
    write_json_atomic(tmp_path / "c.json", {"a": [1, 2]}, indent=None)
    assert (tmp_path / "c.json").read_text() == '{"a": [1, 2]}'


def test_a_stricter_umask_is_honoured(tmp_path: Path) -> None:
    previous = os.umask(0o077)
    try:
        write_text_atomic(tmp_path / "private.txt", "secret")
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "private.txt") == 0o600


def test_a_failed_write_leaves_neither_target_nor_temp(tmp_path: Path) -> None:
    write_text_atomic(tmp_path / "kept.txt", "old")

    def fail(temporary: Path) -> None:
        temporary.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(tmp_path / "kept.txt", fail)
    assert (tmp_path / "kept.txt").read_text() == "old"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["kept.txt"]


def test_remove_stale_temporaries_touches_only_our_temp_names(tmp_path: Path) -> None:
    stale = [
        ".checkpoint_00000004.pth.0a1b2c3d.tmp",  # ours (hex)
        ".latest.k2_x9qz7.tmp",  # tempfile.mkstemp's alphabet (earlier versions)
    ]
    for name in stale:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / ".model.00ff00ff.tmp").mkdir()  # a half-written model folder
    (tmp_path / ".model.00ff00ff.tmp" / "weights").write_bytes(b"x")
    kept = ["checkpoint_00000002.pth", "notes.tmp", ".hidden.tmp", ".cache.toolong123.tmp", "x.0a1b2c3d.tmp"]
    for name in kept:
        (tmp_path / name).write_bytes(b"keep")

    removed = remove_stale_temporaries(tmp_path)
    assert sorted(path.name for path in removed) == sorted([*stale, ".model.00ff00ff.tmp"])
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(kept)
    assert remove_stale_temporaries(tmp_path / "missing") == []
