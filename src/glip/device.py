"""Where a run computes: its device, its CPU threads and its place in a ``torchrun`` process group.

The low-level home that training, transfer and evaluation share, so that none of them imports
another's module for these. ``torchrun`` (or any ``env://`` launcher) describes the group with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; a plain process
(``WORLD_SIZE`` unset or 1) runs alone without a group.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def environment_world_size() -> int:
    """Processes the launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """This process's index on its machine (``LOCAL_RANK``; selects its GPU)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else the CPU; a bare ``cuda`` -> this process's GPU.

    Under ``torchrun`` a bare ``cuda`` becomes ``cuda:<LOCAL_RANK>``, and a CUDA device is made the
    current one (NCCL and ``torch.cuda`` calls without an index use it).

    Raises:
        ValueError: ``name`` asks for CUDA on a machine without it (the message names ``name``).
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank())
        torch.cuda.set_device(device)
    return device


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch CPU threads (0: leave as is); the old count is restored."""
    previous = torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in the data-parallel group.

    Attributes:
        rank: global index of this process.
        world_size: number of processes.
        local_rank: index on this machine (selects the GPU).
        owns_group: :func:`init_distributed` created the process group (and :func:`shutdown`
            destroys it); False when the caller had made it already, or without a group.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device, backend: str | None = None) -> DistributedContext:
    """Join the process group that ``torchrun`` describes, if any (``WORLD_SIZE`` > 1).

    Args:
        device: this process's device (see :func:`resolve_device`).
        backend: ``nccl`` or ``gloo``; None picks NCCL for a CUDA device and gloo otherwise. A run
            that exchanges only Python objects (evaluation) passes ``gloo`` even on GPUs.

    Returns:
        The context; a single process gets one without a group.
    """
    if environment_world_size() <= 1:
        return DistributedContext()
    owns_group = False
    if not dist.is_initialized():
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend, init_method="env://")
        owns_group = True
    context = DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank(), owns_group)
    logger.info("process %d of %d (backend %s)", context.rank, context.world_size, dist.get_backend())
    return context


def shutdown(context: DistributedContext) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if context.owns_group and dist.is_initialized():
        dist.destroy_process_group()


__all__ = [
    "DistributedContext",
    "environment_world_size",
    "init_distributed",
    "local_rank",
    "resolve_device",
    "shutdown",
    "torch_threads",
]
