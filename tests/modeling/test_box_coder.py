"""BoxCoder: encode/decode round trip, the legacy +1 convention, the dw/dh clamp."""

from __future__ import annotations

import math

import torch

from glip import quirks
from glip.modeling.box_coder import BoxCoder


def _random_boxes(count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    top_left = torch.rand(count, 2, generator=generator) * 500
    # sizes 20..320: ratios stay below the 62.5x decode clamp
    size = torch.rand(count, 2, generator=generator) * 300 + 20
    return torch.cat([top_left, top_left + size], dim=1)


def test_round_trip() -> None:
    coder = BoxCoder()
    boxes = _random_boxes(1000, seed=0)
    anchors = _random_boxes(1000, seed=1)
    deltas = coder.encode(boxes, anchors)
    torch.testing.assert_close(coder.decode(deltas, anchors), boxes, rtol=0, atol=1e-3)


def test_round_trip_float64_is_exact_to_rounding() -> None:
    coder = BoxCoder()
    boxes = _random_boxes(100, seed=2).double()
    anchors = _random_boxes(100, seed=3).double()
    torch.testing.assert_close(coder.decode(coder.encode(boxes, anchors), anchors), boxes, rtol=0, atol=1e-9)


def test_zero_deltas_give_the_anchor_and_widths_use_plus_one() -> None:
    coder = BoxCoder()
    anchors = torch.tensor([[-28.0, -28.0, 35.0, 35.0], [0.0, 0.0, 9.0, 19.0]])
    torch.testing.assert_close(coder.decode(torch.zeros(2, 4), anchors), anchors)
    # dw = log(2) * 5 doubles the +1 width: 64 -> 128 pixels, i.e. x2 - x1 = 127.
    deltas = torch.tensor([[0.0, 0.0, 5 * math.log(2.0), 0.0]])
    decoded = coder.decode(deltas, anchors[:1])
    torch.testing.assert_close(decoded[0, 2] - decoded[0, 0], torch.tensor(127.0))
    # A box equal to its anchor encodes to zero; a shift of one +1-width is dx = 10.
    torch.testing.assert_close(coder.encode(anchors, anchors), torch.zeros(2, 4))
    shifted = anchors[:1] + torch.tensor([[64.0, 0.0, 64.0, 0.0]])
    torch.testing.assert_close(coder.encode(shifted, anchors[:1]), torch.tensor([[10.0, 0.0, 0.0, 0.0]]))


def test_decode_clamps_scale() -> None:
    coder = BoxCoder()
    anchors = torch.tensor([[0.0, 0.0, 15.0, 15.0]])  # 16 pixels wide
    decoded = coder.decode(torch.tensor([[0.0, 0.0, 1e4, 1e4]]), anchors)
    width = decoded[0, 2] - decoded[0, 0] + quirks.TO_REMOVE
    torch.testing.assert_close(width, torch.tensor(16 * 1000.0 / 16), rtol=1e-5, atol=0)
    assert torch.isfinite(decoded).all()
    # No clamp downwards: very negative dw shrinks the box towards zero width.
    tiny = coder.decode(torch.tensor([[0.0, 0.0, -1e4, 0.0]]), anchors)
    torch.testing.assert_close(tiny[0, 2] - tiny[0, 0], torch.tensor(-1.0))


def test_broadcast_leading_dims() -> None:
    coder = BoxCoder()
    anchors = _random_boxes(6, seed=4)
    deltas = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(5))
    batched = coder.decode(deltas, anchors)
    assert batched.shape == (2, 6, 4)
    torch.testing.assert_close(batched[1], coder.decode(deltas[1], anchors), rtol=0, atol=0)
