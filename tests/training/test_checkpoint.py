"""Training checkpoints: plain-tensor format, atomic writes, pruning, the latest pointer, RNG states."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from glip.training import checkpoint as checkpoints


def _state(value: float) -> dict:
    model = nn.Linear(3, 2)
    nn.init.constant_(model.weight, value)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": torch.amp.GradScaler("cpu", enabled=False).state_dict(),
        "rng": [checkpoints.capture_rng_state()],
        "data": {"epoch": 1, "batch": 4},
        "recipe": {"model": {"fpn": {"out_channels": 32}}, "schedule": {"milestones": [0.5]}},
    }


def test_round_trip_loads_with_weights_only(tmp_path: Path) -> None:
    state = _state(0.5)
    path = checkpoints.save_checkpoint(tmp_path, 7, state)
    assert path.name == "checkpoint_00000007.pth"
    loaded = checkpoints.load_checkpoint(path)  # torch.load(weights_only=True) inside
    assert loaded["step"] == 7 and loaded["data"] == {"epoch": 1, "batch": 4}
    assert torch.equal(loaded["model"]["weight"], state["model"]["weight"])
    assert loaded["optimizer"]["state"][0]["exp_avg"].equal(state["optimizer"]["state"][0]["exp_avg"])
    assert loaded["recipe"] == state["recipe"]
    torch.load(path, weights_only=True)


def test_checkpoint_files_get_the_umask_default_mode(tmp_path: Path) -> None:
    """Not mkstemp's owner-only 0600: a team can read a run's checkpoints."""
    previous = os.umask(0o022)
    try:
        path = checkpoints.save_checkpoint(tmp_path, 1, _state(0.5))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / checkpoints.LATEST_FILE).stat().st_mode) == 0o644


def test_keeps_the_last_k_and_points_latest_at_the_newest(tmp_path: Path) -> None:
    for step in (2, 4, 6, 8):
        checkpoints.save_checkpoint(tmp_path, step, _state(step), keep=2)
    assert [path.name for path in checkpoints.list_checkpoints(tmp_path)] == [
        "checkpoint_00000006.pth",
        "checkpoint_00000008.pth",
    ]
    assert (tmp_path / "latest").read_text().strip() == "checkpoint_00000008.pth"
    assert checkpoints.latest_checkpoint(tmp_path) == tmp_path / "checkpoint_00000008.pth"
    assert not [path for path in tmp_path.iterdir() if path.name.endswith(".tmp")]


def test_latest_falls_back_to_the_newest_file(tmp_path: Path) -> None:
    assert checkpoints.latest_checkpoint(tmp_path) is None
    checkpoints.save_checkpoint(tmp_path, 3, _state(3))
    checkpoints.save_checkpoint(tmp_path, 5, _state(5))
    (tmp_path / "latest").write_text("checkpoint_00000099.pth\n")
    assert checkpoints.latest_checkpoint(tmp_path) == tmp_path / "checkpoint_00000005.pth"


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    checkpoints.save_checkpoint(tmp_path, 1, _state(1))
    with pytest.raises(Exception, match="pickle"):
        checkpoints.save_checkpoint(tmp_path, 2, {"model": lambda: None})
    assert checkpoints.latest_checkpoint(tmp_path) == tmp_path / "checkpoint_00000001.pth"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint_00000001.pth", "latest"]


def test_foreign_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"model": {}}, path)
    with pytest.raises(ValueError, match="not a glip training checkpoint"):
        checkpoints.load_checkpoint(path)
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read training checkpoint"):
        checkpoints.load_checkpoint(path)


def test_rng_states_restore_every_generator(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached gaussian in Python's state
    state = checkpoints.capture_rng_state()
    expected = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), torch.rand(3))
    checkpoints.save_checkpoint(tmp_path, 1, {"rng": [state]})
    loaded = checkpoints.load_checkpoint(tmp_path / "checkpoint_00000001.pth")["rng"][0]
    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)
    checkpoints.restore_rng_state(loaded)
    again = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), torch.rand(3))
    assert again[:3] == expected[:3]
    assert torch.equal(again[3], expected[3])
