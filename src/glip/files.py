"""Atomic file writes: a temp file in the target folder renamed into place, so that a reader (or a
crashed run) never sees a half-written output."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Any, indent: int | None = 2) -> None:
    """Write ``data`` as JSON (indented by default) through :func:`write_text_atomic`."""
    write_text_atomic(path, json.dumps(data, indent=indent))


__all__ = ["write_json_atomic", "write_text_atomic"]
