"""Shared fixtures of the training tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def one_thread(one_torch_thread):
    """Every test of this folder runs with one torch thread (``one_torch_thread`` of tests/conftest.py)."""

