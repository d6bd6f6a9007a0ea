"""Modulated deformable convolution (DCNv2) as bilinear sampling plus one matrix product.

``torchvision.ops.deform_conv2d`` computes the same function, but its CPU kernels (forward and
especially backward) run single-threaded loops; sampling the kernel taps with
``F.grid_sample`` and contracting with the weight as a matrix product uses the multi-threaded
ATen kernels instead (about 3x faster training of GLIP-Nano on 2 CPU cores; see
benchmarks/bench_deform_conv.py). Out-of-image taps read zeros, as in the DCN kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import deform_conv2d


def modulated_deform_conv2d(
    x: Tensor,
    offset: Tensor,
    mask: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: int = 1,
    padding: int = 1,
) -> Tensor:
    """DCNv2 with dilation 1 and one offset group.

    Args:
        x: ``[B, C, H, W]`` input.
        offset: ``[B, 2*K, H_out, W_out]``, (dy, dx) of kernel tap k = i*kw + j at channels 2k, 2k+1.
        mask: ``[B, K, H_out, W_out]`` modulation of each tap.
        weight: ``[O, C, kh, kw]``; bias: ``[O]`` or None.

    Returns:
        ``[B, O, H_out, W_out]``.
    """
    if x.device.type != "cpu":
        # On accelerators torchvision's kernel is the fast one.
        return deform_conv2d(x, offset, weight, bias, stride=stride, padding=padding, mask=mask)
    batch, channels, height, width = x.shape
    out_channels, _, kernel_h, kernel_w = weight.shape
    out_h, out_w = offset.shape[-2:]
    taps = kernel_h * kernel_w
    dtype, device = x.dtype, x.device
    # Base sampling positions of every tap: [K, H_out, W_out] in input pixels.
    rows = torch.arange(out_h, device=device, dtype=dtype) * stride - padding
    cols = torch.arange(out_w, device=device, dtype=dtype) * stride - padding
    tap_rows = torch.arange(kernel_h, device=device, dtype=dtype).repeat_interleave(kernel_w)
    tap_cols = torch.arange(kernel_w, device=device, dtype=dtype).repeat(kernel_h)
    base_y = tap_rows[:, None, None] + rows[None, :, None]
    base_x = tap_cols[:, None, None] + cols[None, None, :]
    # (B, 2K, Ho, Wo) -> (B, K, 2, Ho, Wo)
    offset = offset.view(batch, taps, 2, out_h, out_w)
    sample_y = base_y + offset[:, :, 0]
    sample_x = base_x + offset[:, :, 1]
    # grid_sample with align_corners=False maps pixel centre p to (2p + 1) / size - 1.
    grid = torch.stack(((2 * sample_x + 1) / width - 1, (2 * sample_y + 1) / height - 1), dim=-1)
    # (B, K, Ho, Wo, 2) -> (B, K*Ho, Wo, 2): all taps sampled in one call.
    grid = grid.view(batch, taps * out_h, out_w, 2)
    sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # (B, C, K*Ho, Wo) -> (B, C, K, Ho*Wo), modulated
    sampled = sampled.view(batch, channels, taps, out_h * out_w) * mask.reshape(batch, 1, taps, out_h * out_w)
    # (B, C*K, HoWo) contracted with (O, C*K)
    out = torch.matmul(weight.reshape(out_channels, channels * taps), sampled.reshape(batch, channels * taps, -1))
    if bias is not None:
        out = out + bias.view(1, -1, 1)
    return out.view(batch, out_channels, out_h, out_w)
