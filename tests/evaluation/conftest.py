"""Fixtures of the evaluation tests: the tiny official-format GLIP of ``tests/reference``."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model(reference_dir: Path):
    """The tiny GLIP-T-style model of ``glip_tiny_parity`` (random weights, full fusion)."""
    from glip.pipeline import GLIP
    from glip.processing import default_offline_vocab_dir

    folder = reference_dir / "glip_tiny_parity"
    return GLIP.from_official(folder / "checkpoint.pth", folder / "config.yaml", folder / "text_config.json",
                              default_offline_vocab_dir())


@pytest.fixture(scope="session")
def tiny_model_args(reference_dir: Path) -> list[str]:
    """CLI arguments that load :func:`tiny_model`."""
    from glip.processing import default_offline_vocab_dir

    folder = reference_dir / "glip_tiny_parity"
    return ["--checkpoint", str(folder / "checkpoint.pth"), "--config", str(folder / "config.yaml"),
            "--text-config", str(folder / "text_config.json"), "--tokenizer", str(default_offline_vocab_dir())]


@pytest.fixture(autouse=True)
def one_thread(one_torch_thread):
    """Every test of this folder runs with one torch thread (``one_torch_thread`` of tests/conftest.py)."""
