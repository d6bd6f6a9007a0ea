"""Feature pyramid P3-P7 over the three coarsest Swin stages (Lin et al. 2017, RetinaNet variant).

Matches the official ``maskrcnn_benchmark/modeling/backbone/fpn.py`` (``FPN`` + ``LastLevelP6P7``) as
built by ``build_retinanet_swint_fpn_backbone`` (quirk 5 of ``tests/reference/glip_tiny_parity/README.md``):
1x1 lateral and 3x3 output convolutions with bias, no norm or activation; the top-down path upsamples
with nearest interpolation to the lateral's exact size (so odd sizes work); P6 is a stride-2 3x3 conv on
the P5 OUTPUT and P7 a stride-2 3x3 conv on ``relu(P6)``. In training, DropBlock (block size 3) is applied
to the merged maps of P3 and P4 before their output convs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glip.config import FPNConfig

# Official MODEL.FPN.DROP_SIZE; no released config changes it.
DROP_BLOCK_SIZE = 3


def drop_block(x: Tensor, drop_prob: float, block_size: int = DROP_BLOCK_SIZE) -> Tensor:
    """DropBlock (Ghiasi et al. 2018) with the semantics of the official ``layers/dropblock.py:DropBlock2D``.

    Block centres are sampled per sample and position (shared by all channels) with probability
    ``drop_prob / block_size**2``; every ``block_size`` x ``block_size`` square around a centre is zeroed;
    the result is rescaled by ``numel(mask) / sum(mask)`` over the whole batch. Call it in training only.

    Args:
        x: ``[B, C, H, W]``.
        drop_prob: probability that a position is a block centre, times ``block_size**2``.
        block_size: side of the dropped squares.

    Returns:
        ``[B, C, H, W]``.
    """
    if drop_prob == 0.0:
        return x
    batch, _, height, width = x.shape
    centres = (torch.rand(batch, 1, height, width, device=x.device) < drop_prob / block_size**2).to(x.dtype)
    dropped = F.max_pool2d(centres, kernel_size=block_size, stride=1, padding=block_size // 2)
    if block_size % 2 == 0:
        # An even kernel with padding block_size // 2 yields one extra row and column.
        dropped = dropped[:, :, :-1, :-1]
    keep = 1.0 - dropped  # [B, 1, H, W]
    return x * keep * (keep.numel() / keep.sum())


class FPN(nn.Module):
    """Top-down feature pyramid with two extra coarse levels.

    Input: the Swin outputs of strides 8, 16, 32 (``[B, C_k, H_k, W_k]``). Output: P3..P7, each
    ``[B, out_channels, H_l, W_l]`` at strides 8, 16, 32, 64, 128 (P6/P7 sizes ``ceil`` of half the
    previous level).

    Args:
        in_channels: channels of the three input maps, finest first.
        out_channels: channels of every pyramid level.
        drop_block_prob: DropBlock probability on P3/P4 merged maps in training (official FPN.DROP_PROB).
    """

    def __init__(self, in_channels: tuple[int, int, int], out_channels: int, drop_block_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_block_prob = drop_block_prob
        self.lateral_convs = nn.ModuleList(nn.Conv2d(channels, out_channels, 1) for channels in in_channels)
        self.output_convs = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels
        )
        self.p6 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        # Official init (``make_layers.conv_with_kaiming_uniform``, ``LastLevelP6P7``).
        for conv in [*self.lateral_convs, *self.output_convs, self.p6, self.p7]:
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)

    @classmethod
    def from_config(cls, config: FPNConfig, in_channels: tuple[int, int, int]) -> FPN:
        return cls(in_channels, config.out_channels, config.drop_block_prob)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """
        Args:
            features: three maps ``[B, C_k, H_k, W_k]``, finest (stride 8) first.

        Returns:
            Five maps P3..P7 ``[B, out_channels, H_l, W_l]``, finest first.
        """
        if len(features) != len(self.lateral_convs):
            raise ValueError(f"FPN expects {len(self.lateral_convs)} feature maps, got {len(features)}")
        merged = self.lateral_convs[-1](features[-1])
        outputs = [self.output_convs[-1](merged)]
        for level in range(len(features) - 2, -1, -1):
            lateral = self.lateral_convs[level](features[level])
            if lateral.shape[-2:] != merged.shape[-2:]:
                merged = F.interpolate(merged, size=lateral.shape[-2:], mode="nearest")
            merged = lateral + merged
            # Official FPN.forward: DropBlock on the merged map only for the levels below the top.
            dropped = drop_block(merged, self.drop_block_prob) if self.training else merged
            outputs.insert(0, self.output_convs[level](dropped))
        p6 = self.p6(outputs[-1])
        p7 = self.p7(F.relu(p6))
        return [*outputs, p6, p7]
