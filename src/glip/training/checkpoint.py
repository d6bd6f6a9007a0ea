"""Resumable training checkpoints: atomic writes, the last K kept, a ``latest`` pointer.

A checkpoint is a ``torch.save`` dict of tensors and plain Python values only (no pickled
objects), so it loads with ``torch.load(weights_only=True)``: model, optimizer, scheduler,
gradient-scaler and EMA state dicts, the random-number-generator states (as tensors) and the data
position. With all of them restored, a resumed run repeats an uninterrupted one bit for bit
(same machine, same thread count; CUDA kernels with atomics, such as the deformable-conv backward,
are not bit-reproducible on GPU).

Files in the run folder: ``checkpoint_00002500.pth`` ... and ``latest`` (the file name of the newest
complete checkpoint). A file is written to a temporary name and renamed into place
(``os.replace``, :func:`glip.files.write_atomic`), so a crash never leaves a truncated checkpoint
under a real name; the temp file it may leave is removed when the run resumes.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glip.files import write_atomic

logger = logging.getLogger(__name__)

FORMAT_NAME = "glip-train"
FORMAT_VERSION = 1
LATEST_FILE = "latest"
_CHECKPOINT_NAME = re.compile(r"^checkpoint_(\d{8,})\.pth$")


def checkpoint_name(step: int) -> str:
    return f"checkpoint_{step:08d}.pth"


def save_checkpoint(directory: str | Path, step: int, state: dict[str, Any], keep: int = 3) -> Path:
    """Write ``state`` as the checkpoint of ``step``, point ``latest`` at it, prune old ones.

    Args:
        directory: the run folder.
        step: optimizer steps done.
        state: tensors, state dicts and plain Python values only.
        keep: how many of the newest checkpoints to keep (older ones are deleted).

    Returns:
        The checkpoint path.
    """
    directory = Path(directory)
    path = directory / checkpoint_name(step)
    document = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "step": int(step), **state}
    write_atomic(path, lambda temporary: torch.save(document, temporary))
    write_atomic(directory / LATEST_FILE, lambda temporary: temporary.write_text(path.name + "\n"))
    for old in list_checkpoints(directory)[:-keep]:
        if old != path:
            old.unlink(missing_ok=True)
    return path


def list_checkpoints(directory: str | Path) -> list[Path]:
    """The checkpoints of a run folder, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(match[1]), path) for path in directory.iterdir() if (match := _CHECKPOINT_NAME.match(path.name))]
    return [path for _, path in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint ``latest`` names, or the newest one on disk if the pointer is missing or stale."""
    directory = Path(directory)
    pointer = directory / LATEST_FILE
    if pointer.is_file():
        name = pointer.read_text().strip()
        if _CHECKPOINT_NAME.match(name) and (directory / name).is_file():
            return directory / name
        logger.warning("%s names %r, which is not a checkpoint here; using the newest one", pointer, name)
    checkpoints = list_checkpoints(directory)
    return checkpoints[-1] if checkpoints else None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors on the CPU)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for a bad file
        raise ValueError(f"cannot read training checkpoint {path}: {error}") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not a glip training checkpoint (no format {FORMAT_NAME!r})")
    if state.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format version {state.get('version')}, expected {FORMAT_VERSION}")
    return state


# --------------------------------------------------------------------------------------------------
# Random number generators
# --------------------------------------------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA) generator states as tensors and plain values."""
    python_version, python_state, gauss_next = random.getstate()
    numpy_kind, numpy_keys, numpy_position, numpy_has_gauss, numpy_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {
            "version": python_version,
            "state": torch.tensor(python_state, dtype=torch.int64),
            "gauss_next": gauss_next,
        },
        "numpy": {
            "kind": numpy_kind,
            "keys": torch.from_numpy(numpy_keys.astype(np.int64)),
            "position": int(numpy_position),
            "has_gauss": int(numpy_has_gauss),
            "cached_gaussian": float(numpy_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    python = state["python"]
    random.setstate((python["version"], tuple(int(value) for value in python["state"].tolist()), python["gauss_next"]))
    numpy = state["numpy"]
    np.random.set_state(
        (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["position"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
