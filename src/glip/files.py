"""Atomic file writes: a temp file in the target folder renamed into place, so that a reader (or a
crashed run) never sees a half-written output.

Written files and folders get the modes any program's would: ``0666`` / ``0777`` less the umask
(``0644`` / ``0755`` under the usual umask 022), not the owner-only ``0600`` / ``0700`` that
``tempfile.mkstemp`` / ``mkdtemp`` give, which would hide a model or a report from the rest of a
team. A process killed mid-write leaves its temp file behind under the name
``.<target name>.<8 characters>.tmp``; :func:`remove_stale_temporaries` clears those of a folder
(a resumed training run does so in its output folder).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# ".<target>.<8 chars>.tmp": the 8 characters are ours (hex) or tempfile's ([a-z0-9_]), which
# earlier versions used; nothing else in an output folder is named like that.
TEMPORARY_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def _create_temporary(path: Path) -> Path:
    """A new empty file beside ``path`` with a temp name; mode ``0666`` less the umask."""
    while True:
        temporary = _temporary_name(path)
        try:
            handle = os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:  # 1 in 4 billion: draw another name
            continue
        os.close(handle)
        return temporary


def give_default_mode(path: str | Path) -> None:
    """Set ``path``'s mode to ``0666`` less the umask: for files written by libraries that create
    them owner-only (safetensors' ``save_file`` makes ``0600`` files)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(temporary_path)`` (e.g. ``torch.save``), then rename the result to ``path``.

    The temp file already exists (empty, with the umask's default mode) when ``write`` runs; on any
    error it is removed and the error re-raised, leaving an older ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _create_temporary(path)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temp file renamed into place."""
    write_atomic(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | Path, data: Any, indent: int | None = 2) -> None:
    """Write ``data`` as standard JSON through :func:`write_text_atomic`.

    NaN and infinities become ``null`` (JSON has no such numbers, and strict readers reject
    Python's ``NaN`` token; e.g. the AP of a category without ground truth). ``indent=None`` writes
    compact JSON, which ``json.dumps`` encodes in C: it matters for the millions of records of an
    LVIS ``results.json``.
    """
    try:
        text = json.dumps(data, indent=indent, allow_nan=False)
    except ValueError:  # a NaN or infinity somewhere: only then walk the data
        text = json.dumps(_finite_or_null(data), indent=indent, allow_nan=False)
    write_text_atomic(path, text)


def _finite_or_null(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    return value


def temporary_directory_for(path: str | Path) -> Path:
    """A new empty folder beside ``path`` with a temp name (mode ``0777`` less the umask), to fill
    and then rename to ``path``: the atomic write of a folder (e.g. a saved model)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        temporary = _temporary_name(path)
        try:
            temporary.mkdir()
        except FileExistsError:
            continue
        return temporary


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temp files and folders that killed writes left directly in ``folder``.

    Only names of the form ``.<name>.<8 characters>.tmp`` are touched. Call it only where no other
    process is writing into ``folder`` at the same time (their temp files would go too).

    Returns:
        The removed paths, sorted.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = sorted(path for path in folder.iterdir() if TEMPORARY_NAME.match(path.name))
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        logger.info("removed %s, left by an interrupted write", path)
    return removed


__all__ = [
    "TEMPORARY_NAME",
    "remove_stale_temporaries",
    "temporary_directory_for",
    "write_atomic",
    "write_json_atomic",
    "write_text_atomic",
]
