"""One square anchor per feature-map location and level (official ``rpn/anchor_generator.py``).

Anchors only serve as the reference boxes of the box coder (decoding) and of ATSS assignment
(training). They hold no learnable state, so this is a plain object with a cache rather than an
``nn.Module`` (the official ``cell_anchors`` buffers are dropped by checkpoint conversion).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor

from glip import quirks


def cell_anchor(size: float, stride: int) -> tuple[float, float, float, float]:
    """The anchor of the location at the origin, ``(x1, y1, x2, y2)``, legacy Detectron style.

    The official ``generate_anchors`` centres a ``size``-wide box on the centre of the first
    ``stride x stride`` cell, ``(stride - 1) / 2``, with inclusive ends (quirk 10, ``TO_REMOVE``):
    ``x1 = c - (size - 1) / 2``, ``x2 = c + (size - 1) / 2``. For P3 (size 64, stride 8) that is
    ``(-28, -28, 35, 35)``. Computed in float64 as the original (numpy), then rounded to float32.
    """
    # The original scales a stride-wide cell by size / stride; the product is kept as written so
    # that non-dyadic sizes round the same way.
    width = stride * (size / stride)
    center = 0.5 * (stride - quirks.TO_REMOVE)
    half_extent = 0.5 * (width - quirks.TO_REMOVE)
    return (center - half_extent, center - half_extent, center + half_extent, center + half_extent)


def grid_anchors(size: float, stride: int, height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
    """Anchors of one level for a ``height x width`` feature map.

    Args:
        size: anchor side in input pixels.
        stride: level stride in input pixels.
        height, width: feature-map size.
        device: where to build them.

    Returns:
        ``[height * width, 4]`` float32 xyxy anchors in (padded) input pixels, x fastest
        (row-major like the flattened feature map).
    """
    base = torch.tensor(cell_anchor(size, stride), dtype=torch.float64).to(torch.float32).to(device)
    shifts_x = torch.arange(0, width * stride, step=stride, dtype=torch.float32, device=device)
    shifts_y = torch.arange(0, height * stride, step=stride, dtype=torch.float32, device=device)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")  # [H, W] each
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=-1).reshape(-1, 4)  # [H, W, 4] -> [HW, 4]
    return shifts + base


class AnchorGenerator:
    """Anchors of all levels, cached by (level, feature-map size, device).

    Args:
        sizes: anchor side per level (official RPN.ANCHOR_SIZES, 64..1024 for P3..P7).
        strides: stride per level (official RPN.ANCHOR_STRIDE, 8..128).
        cache_size: how many (level, size, device) entries to keep; inputs of many different sizes
            evict the oldest.
    """

    def __init__(
        self,
        sizes: Sequence[float] = (64, 128, 256, 512, 1024),
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        cache_size: int = 64,
    ) -> None:
        if len(sizes) != len(strides):
            raise ValueError(f"need one anchor size per stride, got sizes={tuple(sizes)} strides={tuple(strides)}")
        self.sizes = tuple(sizes)
        self.strides = tuple(strides)
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[int, int, int, str], Tensor] = OrderedDict()

    @classmethod
    def from_config(cls, config) -> AnchorGenerator:
        """From an :class:`glip.config.AnchorConfig`."""
        return cls(config.sizes, config.strides)

    def __call__(self, grid_sizes: Sequence[tuple[int, int]], device: torch.device | str = "cpu") -> list[Tensor]:
        """Anchors for feature maps of the given sizes.

        Args:
            grid_sizes: ``(H_l, W_l)`` per level, P3 first.
            device: where the anchors live.

        Returns:
            Per level a ``[H_l * W_l, 4]`` float32 xyxy tensor (shared with the cache: do not
            modify in place).
        """
        if len(grid_sizes) != len(self.strides):
            raise ValueError(f"got {len(grid_sizes)} feature maps for {len(self.strides)} anchor levels")
        device = torch.device(device)
        anchors = []
        for level, (height, width) in enumerate(grid_sizes):
            key = (level, int(height), int(width), str(device))
            cached = self._cache.get(key)
            if cached is None:
                cached = grid_anchors(self.sizes[level], self.strides[level], int(height), int(width), device)
                self._cache[key] = cached
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(key)
            anchors.append(cached)
        return anchors
