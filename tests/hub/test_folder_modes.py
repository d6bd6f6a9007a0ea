"""A saved model folder is readable by the team: the umask's modes, not owner-only ones."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import torch

from glip.config import GLIPConfig
from glip.hub.loading import write_pretrained_dir


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_model_folder_and_weights_get_the_umask_modes(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        folder = write_pretrained_dir(tmp_path / "model", GLIPConfig(), {"weight": torch.zeros(2)}, None,
                                      prompt_tuning=(torch.zeros(1, 4), ["red circle"], ["circle"]))
    finally:
        os.umask(previous)
    assert _mode(folder) == 0o755
    files = sorted(path for path in folder.iterdir() if path.is_file())
    assert files, "nothing was written"
    for path in files:
        assert _mode(path) == 0o644, path.name
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")], "temp folder left behind"
