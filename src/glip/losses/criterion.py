"""The GLIP training objective: ATSS assignment, GIoU box loss, centerness BCE and token focal loss.

Official ``modeling/rpn/loss.py:ATSSLossComputation`` with ``layers/sigmoid_focal_loss.py`` as
configured for GLIP (USE_DOT_PRODUCT_TOKEN_LOSS, no classification loss), and the loss dict of
``rpn/vldyhead.py:VLDyHeadModule._forward_train``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss

from glip import quirks
from glip.losses.assign import AtssAssignment, atss_assign
from glip.modeling.box_coder import BoxCoder

# ``AtssAssignment.matched_gt_index`` of an anchor won by an ignored object (not in the official code).
IGNORED: int = -2

# Added to the union and enclosing areas of GIoU (official ``GIoULoss``).
GIOU_EPS: float = 1e-7


class TargetLike(Protocol):
    """What the criterion reads of a ground truth (e.g. :class:`glip.data.Target`) of one image.

    Attributes:
        boxes: ``[G, 4]`` float xyxy boxes in (padded) input pixels, legacy inclusive ends.
        positive_map: ``[G, T]`` binary float: 1 where token t names box g (``T`` = the text width
            of the batch, as ``text_mask``).
    """

    boxes: Tensor
    positive_map: Tensor


class PredictionsLike(Protocol):
    """What the criterion reads of a :class:`glip.modeling.glip.GLIPOutput`."""

    box_regression: list[Tensor]
    centerness: list[Tensor]
    dot_product_logits: list[Tensor]


def giou_loss(predicted_boxes: Tensor, target_boxes: Tensor) -> Tensor:
    """``1 - GIoU`` per box pair (Rezatofighi et al. 2019), as the official ``GIoULoss``.

    Not ``torchvision.ops.generalized_box_iou_loss``: that one does not collapse inverted
    predictions, and even on collapsed ones it differs in the last bit in float32 (and by ~1e-2
    in bfloat16, NaN in float16 at large coordinates), as it places its eps differently.

    Areas are ``(x2 - x1) * (y2 - y1)`` (no +1 here, unlike the IoU of the assignment); a
    predicted box with ``x2 < x1`` is collapsed to ``x2 = x1`` (same for y).

    Args:
        predicted_boxes: ``[N, 4]`` xyxy.
        target_boxes: ``[N, 4]`` xyxy.

    Returns:
        ``[N]`` losses in [0, 2].
    """
    predicted_x1, predicted_y1, predicted_x2, predicted_y2 = predicted_boxes.unbind(1)
    predicted_x2 = torch.max(predicted_x1, predicted_x2)
    predicted_y2 = torch.max(predicted_y1, predicted_y2)
    predicted_area = (predicted_x2 - predicted_x1) * (predicted_y2 - predicted_y1)
    target_x1, target_y1, target_x2, target_y2 = target_boxes.unbind(1)
    target_area = (target_x2 - target_x1) * (target_y2 - target_y1)

    intersection_x1 = torch.max(predicted_x1, target_x1)
    intersection_y1 = torch.max(predicted_y1, target_y1)
    intersection_x2 = torch.min(predicted_x2, target_x2)
    intersection_y2 = torch.min(predicted_y2, target_y2)
    overlaps = (intersection_y2 > intersection_y1) & (intersection_x2 > intersection_x1)
    intersection = torch.where(
        overlaps, (intersection_x2 - intersection_x1) * (intersection_y2 - intersection_y1), 0.0
    )

    enclosing_x1 = torch.min(predicted_x1, target_x1)
    enclosing_y1 = torch.min(predicted_y1, target_y1)
    enclosing_x2 = torch.max(predicted_x2, target_x2)
    enclosing_y2 = torch.max(predicted_y2, target_y2)
    enclosing_area = (enclosing_x2 - enclosing_x1) * (enclosing_y2 - enclosing_y1) + GIOU_EPS

    union = predicted_area + target_area - intersection + GIOU_EPS
    iou = intersection / union
    giou = iou - (enclosing_area - union) / enclosing_area
    return 1 - giou


def centerness_targets(target_boxes: Tensor, anchors: Tensor) -> Tensor:
    """FCOS centerness of each anchor centre within its target box.

    ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))``, with l, t, r, b the distances from the
    anchor centre ``((x1 + x2) / 2, ...)`` to the box sides (official ``compute_centerness_targets``).

    Args:
        target_boxes: ``[N, 4]`` xyxy boxes (the decoded regression targets).
        anchors: ``[N, 4]`` xyxy anchors.

    Returns:
        ``[N]`` in (0, 1] for centres inside their box.
    """
    anchor_x = (anchors[:, 2] + anchors[:, 0]) / 2
    anchor_y = (anchors[:, 3] + anchors[:, 1]) / 2
    left_right = torch.stack((anchor_x - target_boxes[:, 0], target_boxes[:, 2] - anchor_x), dim=1)  # [N, 2]
    top_bottom = torch.stack((anchor_y - target_boxes[:, 1], target_boxes[:, 3] - anchor_y), dim=1)  # [N, 2]
    return torch.sqrt(
        (left_right.min(dim=-1).values / left_right.max(dim=-1).values)
        * (top_bottom.min(dim=-1).values / top_bottom.max(dim=-1).values)
    )


def _identity_reduce_sum(value: Tensor) -> Tensor:
    return value


def _at_least_float32(value: Tensor) -> Tensor:
    """Half-precision predictions (autocast) are upcast: the losses run in float32 or wider."""
    return value.float() if value.dtype in (torch.float16, torch.bfloat16) else value


class GLIPCriterion(nn.Module):
    """The losses of one GLIP training step, with the official names and order.

    ``loss_reg``: ``reg_loss_weight * sum_pos c_i (1 - GIoU_i) / sum_pos c_i`` with ``c`` the
    centerness targets; ``loss_centerness``: BCE-with-logits of the centerness logits against
    ``c``, summed over positives / ``num_pos``; ``loss_cls``: an exact 0 (the official value is
    ``0 x`` the focal loss of a frozen ``cls_logits`` layer that this package does not have: its
    value and gradient are 0, and the key is kept so loss logs line up with the official ones);
    ``loss_dot_product_token``: ``dot_product_token_loss_weight x`` the binary sigmoid focal loss
    of every (anchor, real token) logit, summed / ``num_pos``. ``num_pos`` is the number of
    positive anchors in the batch (averaged over processes), at least 1. Positives are the anchors
    ATSS assigns to a box (the official code tests ``label > 0``, the same thing for its 1-based
    labels).

    Targets of the token loss: a positive anchor takes its box's row of the positive map; a
    background anchor is all 0 but for the "no object" token (``quirks.NO_OBJECT_TOKEN_INDEX``).

    Args:
        box_coder: the head's box coder (regression targets and decoding for GIoU).
        reg_loss_weight: MODEL.ATSS.REG_LOSS_WEIGHT.
        dot_product_token_loss_weight: FUSE_CONFIG.DOT_PRODUCT_TOKEN_LOSS_WEIGHT.
        focal_alpha: FUSE_CONFIG.TOKEN_ALPHA.
        focal_gamma: FUSE_CONFIG.TOKEN_GAMMA.
        top_k: MODEL.ATSS.TOPK, candidates per level and box.
        world_size: number of data-parallel processes.
        reduce_sum: sums a tensor over the processes (e.g. wrapping ``torch.distributed.all_reduce``)
            and returns the sum; needed when ``world_size > 1``. It is called exactly twice per step
            on every process (positive count, centerness-target sum), as the official code, so the
            collectives stay in step even where a process has no positive.
    """

    loss_names: tuple[str, ...] = ("loss_reg", "loss_centerness", "loss_cls", "loss_dot_product_token")

    def __init__(
        self,
        box_coder: BoxCoder,
        reg_loss_weight: float = 2.0,
        dot_product_token_loss_weight: float = 1.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        top_k: int = 9,
        world_size: int = 1,
        reduce_sum: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        super().__init__()
        if world_size > 1 and reduce_sum is None:
            raise ValueError(f"world_size={world_size} needs a reduce_sum that sums over the processes")
        self.box_coder = box_coder
        self.reg_loss_weight = reg_loss_weight
        self.dot_product_token_loss_weight = dot_product_token_loss_weight
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.top_k = top_k
        self.world_size = world_size
        self.reduce_sum = reduce_sum if reduce_sum is not None else _identity_reduce_sum

    def assign(self, anchors: Sequence[Tensor], targets: Sequence[TargetLike]) -> list[AtssAssignment]:
        """ATSS assignment of every image (anchors shared by the padded batch).

        A target's ``ignore_boxes`` (optional attribute) take part in the assignment like its
        boxes; the anchors they win are marked :data:`IGNORED` (no loss at all).
        """
        assignments = []
        for target in targets:
            ignore = getattr(target, "ignore_boxes", None)
            if ignore is None or ignore.shape[0] == 0:
                assignments.append(atss_assign(anchors, target.boxes, self.top_k))
                continue
            num_boxes = target.boxes.shape[0]
            both = atss_assign(anchors, torch.cat([target.boxes, ignore.to(target.boxes)]), self.top_k)
            matched = torch.where(both.matched_gt_index >= num_boxes, IGNORED, both.matched_gt_index)
            assignments.append(AtssAssignment(matched, both.candidate_indices[:, :num_boxes],
                                              both.iou_threshold[:num_boxes]))
        return assignments

    def forward(
        self,
        outputs: PredictionsLike,
        anchors: Sequence[Tensor],
        targets: Sequence[TargetLike],
        text_mask: Tensor,
        assignments: Sequence[AtssAssignment] | None = None,
    ) -> dict[str, Tensor]:
        """
        Args:
            outputs: per level ``box_regression`` ``[B, 4, H_l, W_l]``, ``centerness``
                ``[B, 1, H_l, W_l]`` and ``dot_product_logits`` ``[B, H_l*W_l, T]``.
            anchors: per level ``[H_l*W_l, 4]`` anchors of the padded batch, P3 first.
            targets: one ground truth per image (e.g. :class:`glip.data.Target`).
            text_mask: ``[B, T]`` attention mask; only its tokens enter the token loss.
            assignments: precomputed :meth:`assign` result (e.g. to inspect it), else computed here.

        Returns:
            ``{"loss_reg", "loss_centerness", "loss_cls", "loss_dot_product_token"}`` scalars, in
            that order; the training loss is their sum.
        """
        batch = len(targets)
        if outputs.box_regression[0].shape[0] != batch:
            raise ValueError(f"{batch} targets for a batch of {outputs.box_regression[0].shape[0]} images")
        if assignments is None:
            assignments = self.assign(anchors, targets)
        # Mixed precision: the losses run in float32 (official ``@custom_fwd(cast_inputs=torch.float32)``).
        with torch.autocast(device_type=text_mask.device.type, enabled=False):
            return self._losses(outputs, anchors, targets, text_mask, assignments)

    def _losses(
        self,
        outputs: PredictionsLike,
        anchors: Sequence[Tensor],
        targets: Sequence[TargetLike],
        text_mask: Tensor,
        assignments: Sequence[AtssAssignment],
    ) -> dict[str, Tensor]:
        box_regression, centerness, token_logits = _flatten_predictions(outputs, len(targets))
        image_anchors = torch.cat(list(anchors), dim=0)  # [A, 4]
        token_targets = _token_targets(targets, assignments, token_logits)  # [B, A, T]

        positive = torch.cat([assignment.positive_mask for assignment in assignments])  # [B*A]
        total_positive = self.reduce_sum(positive.sum().reshape(1)).item()  # int64 count over processes
        num_positive = max(total_positive / float(self.world_size), 1.0)

        # Token loss over the (anchor, token) pairs of real tokens and not ignored anchors only.
        token_mask = (text_mask > 0).unsqueeze(1).expand_as(token_logits)  # [B, A, T]
        ignored = torch.stack([assignment.matched_gt_index == IGNORED for assignment in assignments])  # [B, A]
        if ignored.any():
            token_mask = token_mask & ~ignored.unsqueeze(-1)
        # torchvision's op computes the official ``token_sigmoid_binary_focal_loss`` in the same
        # order of operations: bit-identical (tests/losses/test_criterion.py pins it).
        token_loss = sigmoid_focal_loss(
            torch.masked_select(token_logits, token_mask),
            torch.masked_select(token_targets, token_mask),
            self.focal_alpha,
            self.focal_gamma,
            reduction="none",
        ).sum() / num_positive

        box_regression = box_regression[positive]  # [P, 4]
        centerness = centerness[positive]  # [P]
        if box_regression.shape[0] > 0:
            positive_anchors = torch.cat([image_anchors[assignment.positive_mask] for assignment in assignments])
            matched_boxes = torch.cat(
                [
                    target.boxes.to(image_anchors.dtype)[assignment.matched_gt_index[assignment.positive_mask]]
                    for target, assignment in zip(targets, assignments)
                ]
            )  # [P, 4]
            # The target boxes go through encode + decode as in the official code (same rounding).
            regression_targets = self.box_coder.encode(matched_boxes, positive_anchors)  # [P, 4]
            target_boxes = self.box_coder.decode(regression_targets, positive_anchors)
            centerness_target = centerness_targets(target_boxes, positive_anchors)  # [P]
            centerness_sum = self.reduce_sum(centerness_target.sum()).item() / float(self.world_size)
            box_losses = giou_loss(self.box_coder.decode(box_regression, positive_anchors), target_boxes)  # [P]
            # Unweighted only if every centerness target is 0, which a positive (centre strictly
            # inside its box) cannot have; kept from the official ``GIoULoss``.
            weighted = centerness_target.sum() > 0
            box_loss = (box_losses * centerness_target).sum() if weighted else box_losses.sum()
            reg_loss = box_loss / centerness_sum
            centerness_loss = (
                F.binary_cross_entropy_with_logits(centerness, centerness_target, reduction="sum") / num_positive
            )
        else:
            # Zero losses that keep the graph (zero gradients), and the same collectives as a
            # process with positives.
            reg_loss = box_regression.sum()
            self.reduce_sum(centerness.new_zeros(1))
            centerness_loss = centerness.sum()

        return {
            "loss_reg": reg_loss * self.reg_loss_weight,
            "loss_centerness": centerness_loss,
            "loss_cls": token_logits.new_zeros(()),
            "loss_dot_product_token": token_loss * self.dot_product_token_loss_weight,
        }


def _flatten_predictions(outputs: PredictionsLike, batch: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-level predictions -> ``[B*A, 4]`` deltas, ``[B*A]`` centerness, ``[B, A, T]`` token logits,
    anchors ordered image, level, row-major location (the order of the assignment)."""
    # [B, C, H, W] -> [B, H*W, C] per level, levels concatenated.
    box_regression = torch.cat(
        [_at_least_float32(level).permute(0, 2, 3, 1).reshape(batch, -1, 4) for level in outputs.box_regression],
        dim=1,
    ).reshape(-1, 4)  # [B*A, 4]
    centerness = torch.cat(
        [_at_least_float32(level).permute(0, 2, 3, 1).reshape(batch, -1) for level in outputs.centerness], dim=1
    ).reshape(-1)  # [B*A]
    token_logits = torch.cat([_at_least_float32(level) for level in outputs.dot_product_logits], dim=1)  # [B, A, T]
    return box_regression, centerness, token_logits


def _token_targets(
    targets: Sequence[TargetLike], assignments: Sequence[AtssAssignment], token_logits: Tensor
) -> Tensor:
    """``[B, A, T]`` targets of the ``[B, A, T]`` token logits: the matched box's positive-map row
    for a positive anchor, the "no object" target (``quirks.background_token_targets``) for a
    background one."""
    num_tokens = token_logits.shape[-1]
    background = quirks.background_token_targets(num_tokens, token_logits.dtype, token_logits.device)  # [T]
    per_image = []
    for target, assignment in zip(targets, assignments):
        if target.positive_map.shape[-1] != num_tokens:
            raise ValueError(
                f"positive_map has {target.positive_map.shape[-1]} token columns, the logits have {num_tokens}"
            )
        matched = assignment.matched_gt_index  # [A]
        image_targets = background.expand(matched.shape[0], num_tokens).clone()  # [A, T]
        positive = matched >= 0
        image_targets[positive] = target.positive_map.to(token_logits.dtype)[matched[positive]]
        per_image.append(image_targets)
    return torch.stack(per_image, dim=0)
