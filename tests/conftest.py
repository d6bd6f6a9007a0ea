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


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a test module: the tiny models of the tests run many times faster on a
    busy 2-core machine (threads of several processes fight over the cores), and every run takes the
    same order of operations."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
