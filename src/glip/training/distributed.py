"""Data-parallel training with ``torchrun``: process group, batch sharding, cross-process reductions.

``torchrun --nproc_per_node=N -m glip.training.loop recipe.yaml`` starts N processes that find each
other through the ``env://`` variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``); gloo on CPU, NCCL on GPU. Every process draws the same global batch order and
takes its own slice of each global batch, so N processes with batch B/N step like one process with
batch B (up to padding, which is per process, and float rounding).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Sampler

# The process group itself is joined in the low-level glip.device (evaluation joins it too); these
# names stay importable from here for the training code.
from glip.device import (  # noqa: F401
    DistributedContext,
    environment_world_size,
    init_distributed,
    local_rank,
    shutdown,
)

# Tags the random stream of the batch order, so that it differs from the other streams seeded by
# (seed, epoch), e.g. the source plan of :class:`glip.data.MixedDataset`.
_ORDER_STREAM = 0x6F72646572


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """Sum over the processes (a copy; the criterion's ``reduce_sum`` hook)."""
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def any_process(flag: bool, context: DistributedContext, device: torch.device) -> bool:
    """True on every process when ``flag`` is True on at least one (keeps collective calls in step)."""
    if not context.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def mean_over_processes(
    values: Mapping[str, float], context: DistributedContext, device: torch.device
) -> dict[str, float]:
    """Per-key mean over the processes (for logging; official ``reduce_loss_dict``)."""
    if not context.enabled or not values:
        return dict(values)
    keys = list(values)
    stacked = torch.tensor([float(values[key]) for key in keys], dtype=torch.float64, device=device)
    dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
    stacked /= context.world_size
    return {key: float(value) for key, value in zip(keys, stacked.tolist())}


def gather_objects(value: Any, context: DistributedContext) -> list[Any]:
    """``value`` of every process, in rank order (plain Python values and CPU tensors)."""
    if not context.enabled:
        return [value]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()


class ShardedBatchSampler(Sampler[list[int]]):
    """This process's share of each global batch of a seeded, epoch-dependent order.

    Epoch ``e`` visits a permutation of the dataset drawn from ``(seed, e)`` (or the dataset order
    when ``shuffle`` is False), cut into global batches of ``global_batch_size``; the last,
    incomplete one is dropped (official ``drop_last`` iteration-based sampling). Process ``r`` of
    ``W`` takes positions ``[r * B / W, (r + 1) * B / W)`` of every global batch. Iteration starts at
    global batch ``start_batch``, which is how a resumed run continues mid-epoch.

    Args:
        dataset_size: number of samples.
        global_batch_size: samples per step over all processes (divisible by ``world_size``).
        rank, world_size: this process and the number of processes.
        seed: seed of the order.
        epoch: which permutation.
        start_batch: first global batch to yield.
        shuffle: permute (training) or keep the dataset order.
    """

    def __init__(
        self,
        dataset_size: int,
        global_batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        epoch: int = 0,
        start_batch: int = 0,
        shuffle: bool = True,
    ) -> None:
        if global_batch_size % world_size:
            raise ValueError(f"batch_size {global_batch_size} is not divisible by the {world_size} processes")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, {world_size})")
        self.dataset_size = dataset_size
        self.global_batch_size = global_batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.epoch = epoch
        self.start_batch = start_batch
        self.shuffle = shuffle

    @property
    def batches_per_epoch(self) -> int:
        return self.dataset_size // self.global_batch_size

    def global_order(self) -> np.ndarray:
        """``[dataset_size]`` sample indices of this epoch, the same on every process."""
        if not self.shuffle:
            return np.arange(self.dataset_size)
        generator = np.random.Generator(np.random.PCG64([self.seed, self.epoch, _ORDER_STREAM]))
        return generator.permutation(self.dataset_size)

    def __len__(self) -> int:
        return max(self.batches_per_epoch - self.start_batch, 0)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.global_order()
        per_process = self.global_batch_size // self.world_size
        for batch in range(self.start_batch, self.batches_per_epoch):
            begin = batch * self.global_batch_size + self.rank * per_process
            yield [int(index) for index in order[begin : begin + per_process]]
