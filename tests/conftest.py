"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

# Tensors made by the official GLIP code on tiny official-format checkpoints: the project's test data,
# kept in the repository (each folder's README.md is its data card) so that any clone tests itself.
REFERENCE_DIR = Path(__file__).resolve().parent / "reference"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """Folder of reference tensors produced by the official GLIP code (``tests/reference``)."""
    if not REFERENCE_DIR.is_dir():
        pytest.fail(f"reference tensors not found at {REFERENCE_DIR}: the clone is incomplete")
    return REFERENCE_DIR
