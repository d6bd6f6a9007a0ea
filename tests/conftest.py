"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """Folder of reference tensors produced by the official GLIP code (``../shared/reference``)."""
    path = (Path(__file__).resolve().parents[1] / ".." / "shared" / "reference").resolve()
    if not path.is_dir():
        pytest.fail(f"reference tensors not found at {path}: the parity tests need ../shared/reference")
    return path
