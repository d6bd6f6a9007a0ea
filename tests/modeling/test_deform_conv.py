"""Our sampling + matmul DCNv2 equals torchvision's kernel, values and gradients (float64)."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import deform_conv2d

from glip.modeling.deform_conv import modulated_deform_conv2d


@pytest.mark.parametrize(("batch", "channels", "height", "width", "stride"),
                         [(2, 8, 7, 9, 1), (2, 8, 8, 10, 2), (1, 4, 1, 1, 1), (1, 4, 3, 2, 2), (3, 6, 5, 4, 1)])
def test_matches_torchvision(batch: int, channels: int, height: int, width: int, stride: int) -> None:
    generator = torch.Generator().manual_seed(height * 31 + width)
    out_h, out_w = (height - 1) // stride + 1, (width - 1) // stride + 1

    def tensor(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator, dtype=torch.float64) * scale).requires_grad_()

    x = tensor(batch, channels, height, width)
    # Large offsets send taps far outside the image, where both read zeros.
    offset = tensor(batch, 18, out_h, out_w, scale=3.0)
    mask = torch.rand(batch, 9, out_h, out_w, generator=generator, dtype=torch.float64).requires_grad_()
    weight, bias = tensor(5, channels, 3, 3), tensor(5)
    inputs = [x, offset, mask, weight, bias]
    expected = deform_conv2d(x, offset, weight, bias, stride=stride, padding=1, mask=mask)
    actual = modulated_deform_conv2d(x, offset, mask, weight, bias, stride, 1)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)
    upstream = torch.randn(expected.shape, generator=generator, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(actual, inputs, upstream), torch.autograd.grad(expected, inputs, upstream)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
