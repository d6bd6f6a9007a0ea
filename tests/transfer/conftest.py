"""Shared fixtures of the transfer tests: a tiny saved model and tiny train / test splits."""

from __future__ import annotations

from pathlib import Path

import pytest

from glip.transfer import CocoSplit, FinetuneRecipe
from transfer_fixtures import tiny_model, write_split


@pytest.fixture(autouse=True)
def one_thread(one_torch_thread):
    """Every test of this folder runs with one torch thread (``one_torch_thread`` of tests/conftest.py)."""


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model().save_pretrained(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def train_split(tmp_path_factory: pytest.TempPathFactory) -> CocoSplit:
    return CocoSplit(*write_split(tmp_path_factory.mktemp("train"), 12, seed=0))


@pytest.fixture(scope="session")
def test_split(tmp_path_factory: pytest.TempPathFactory) -> CocoSplit:
    return CocoSplit(*write_split(tmp_path_factory.mktemp("test"), 3, seed=1))


@pytest.fixture()
def recipe(model_dir: Path) -> FinetuneRecipe:
    """Two steps of two 64 px images, evaluation at 64 px."""
    return FinetuneRecipe(model=str(model_dir), batch_size=2, max_steps=2, min_sizes=(64,), max_size=0,
                          num_workers=0, num_threads=1, log_every=1, eval_batch_size=4,
                          device="cpu")
