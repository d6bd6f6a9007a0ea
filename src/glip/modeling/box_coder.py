"""Box regression targets relative to anchors (official ``rpn/vldyhead.py:BoxCoder``, quirk 11).

Standard Faster R-CNN parameterisation ``(dx, dy, dw, dh)`` scaled by weights ``(10, 10, 5, 5)``,
with the legacy inclusive-pixel convention: a box ``[x1, x2]`` is ``x2 - x1 + 1`` wide
(``quirks.TO_REMOVE``) while its centre is ``(x1 + x2) / 2``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from glip import quirks


class BoxCoder:
    """Encode boxes as deltas from anchors and decode them back.

    Args:
        weights: ``(wx, wy, ww, wh)`` dividing/multiplying the four deltas.
        scale_clamp: upper clamp of the decoded ``dw``/``dh`` before ``exp`` (log(1000/16)), which
            bounds a predicted box to 62.5 times its anchor.
    """

    def __init__(
        self,
        weights: Sequence[float] = quirks.BOX_CODER_WEIGHTS,
        scale_clamp: float = quirks.BOX_CODER_SCALE_CLAMP,
    ) -> None:
        if len(weights) != 4:
            raise ValueError(f"weights must have 4 values, got {tuple(weights)}")
        self.weights = tuple(float(weight) for weight in weights)
        self.scale_clamp = scale_clamp

    def encode(self, boxes: Tensor, anchors: Tensor) -> Tensor:
        """Regression targets of ``boxes`` w.r.t. ``anchors`` (no clamping, as the original).

        Args:
            boxes: ``[..., 4]`` xyxy target boxes.
            anchors: ``[..., 4]`` xyxy anchors, broadcastable with ``boxes``.

        Returns:
            ``[..., 4]`` deltas ``(dx, dy, dw, dh)``.
        """
        anchor_widths = anchors[..., 2] - anchors[..., 0] + quirks.TO_REMOVE
        anchor_heights = anchors[..., 3] - anchors[..., 1] + quirks.TO_REMOVE
        anchor_center_x = (anchors[..., 2] + anchors[..., 0]) / 2
        anchor_center_y = (anchors[..., 3] + anchors[..., 1]) / 2

        widths = boxes[..., 2] - boxes[..., 0] + quirks.TO_REMOVE
        heights = boxes[..., 3] - boxes[..., 1] + quirks.TO_REMOVE
        center_x = (boxes[..., 2] + boxes[..., 0]) / 2
        center_y = (boxes[..., 3] + boxes[..., 1]) / 2

        weight_x, weight_y, weight_w, weight_h = self.weights
        delta_x = weight_x * (center_x - anchor_center_x) / anchor_widths
        delta_y = weight_y * (center_y - anchor_center_y) / anchor_heights
        delta_w = weight_w * torch.log(widths / anchor_widths)
        delta_h = weight_h * torch.log(heights / anchor_heights)
        return torch.stack((delta_x, delta_y, delta_w, delta_h), dim=-1)

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        """Boxes from predicted deltas; the exact operation order of the original is kept.

        Args:
            deltas: ``[..., 4]`` predicted ``(dx, dy, dw, dh)``.
            anchors: ``[..., 4]`` xyxy anchors, broadcastable with ``deltas``.

        Returns:
            ``[..., 4]`` xyxy boxes in the dtype of ``deltas``.
        """
        anchors = anchors.to(deltas.dtype)
        widths = anchors[..., 2] - anchors[..., 0] + quirks.TO_REMOVE
        heights = anchors[..., 3] - anchors[..., 1] + quirks.TO_REMOVE
        center_x = (anchors[..., 2] + anchors[..., 0]) / 2
        center_y = (anchors[..., 3] + anchors[..., 1]) / 2

        weight_x, weight_y, weight_w, weight_h = self.weights
        delta_x = deltas[..., 0] / weight_x
        delta_y = deltas[..., 1] / weight_y
        # Bound exp() so that a wild prediction cannot overflow.
        delta_w = torch.clamp(deltas[..., 2] / weight_w, max=self.scale_clamp)
        delta_h = torch.clamp(deltas[..., 3] / weight_h, max=self.scale_clamp)

        predicted_center_x = delta_x * widths + center_x
        predicted_center_y = delta_y * heights + center_y
        predicted_widths = torch.exp(delta_w) * widths
        predicted_heights = torch.exp(delta_h) * heights
        # Inclusive ends: a box w pixels wide spans w - 1 in coordinates.
        half_width = 0.5 * (predicted_widths - quirks.TO_REMOVE)
        half_height = 0.5 * (predicted_heights - quirks.TO_REMOVE)
        return torch.stack(
            (
                predicted_center_x - half_width,
                predicted_center_y - half_height,
                predicted_center_x + half_width,
                predicted_center_y + half_height,
            ),
            dim=-1,
        )
