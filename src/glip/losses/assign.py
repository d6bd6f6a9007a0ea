"""ATSS anchor assignment (Zhang et al. 2020, "Bridging the Gap Between Anchor-based and
Anchor-free Detection", Alg. 1), as in the official ``rpn/loss.py:ATSSLossComputation.prepare_targets``.

For every ground-truth box, the ``top_k`` anchors of each pyramid level whose centres lie closest to
the box centre are candidates; the candidates whose IoU reaches the mean plus the standard deviation
of the candidates' IoUs, and whose centre lies inside the box, become positives. An anchor claimed by
several boxes goes to the one it overlaps most. A pure tensor function of one image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from glip.modeling.postprocess import box_iou_legacy

# An anchor centre must lie this far (in pixels) inside a box to be a positive for it (official
# ``is_in_gts = ... > 0.01``).
MIN_INSIDE_DISTANCE: float = 0.01


@dataclass
class AtssAssignment:
    """The assignment of one image's anchors (all levels concatenated, P3 first).

    Attributes:
        matched_gt_index: ``[A]`` int64 index of the assigned ground-truth box, -1 for background
            (``glip.losses.criterion.IGNORED`` for an anchor that an ignored object won).
        candidate_indices: ``[K, G]`` int64 candidate anchors per box: per level the
            ``min(top_k, A_l)`` anchors closest by centre distance (nearest first), levels
            concatenated, so ``K = sum_l min(top_k, A_l)``.
        iou_threshold: ``[G]`` IoU threshold per box (mean + unbiased std of its candidates' IoUs).
    """

    matched_gt_index: Tensor
    candidate_indices: Tensor
    iou_threshold: Tensor

    @property
    def positive_mask(self) -> Tensor:
        """``[A]`` bool, True for anchors assigned to a box."""
        return self.matched_gt_index >= 0


def box_centers(boxes: Tensor) -> Tensor:
    """``[N, 4]`` xyxy -> ``[N, 2]`` centres ``((x1 + x2) / 2, (y1 + y2) / 2)`` (no +1, as the original)."""
    return torch.stack(((boxes[:, 2] + boxes[:, 0]) / 2.0, (boxes[:, 3] + boxes[:, 1]) / 2.0), dim=1)


def atss_assign(anchors_per_level: Sequence[Tensor], gt_boxes: Tensor, top_k: int = 9) -> AtssAssignment:
    """Assign one image's anchors to its ground-truth boxes with ATSS.

    Args:
        anchors_per_level: per level ``[A_l, 4]`` xyxy anchors (one anchor per location), P3 first.
        gt_boxes: ``[G, 4]`` xyxy ground-truth boxes in the same (padded-input) pixels.
        top_k: candidates per level and box (official MODEL.ATSS.TOPK x anchors per location).

    Returns:
        The :class:`AtssAssignment`. With no box (``G == 0``) every anchor is background, the
        candidates are ``[K, 0]`` and the thresholds ``[0]``.
    """
    if gt_boxes.dim() != 2 or gt_boxes.shape[-1] != 4:
        raise ValueError(f"gt_boxes must be [G, 4], got {tuple(gt_boxes.shape)}")
    anchors = torch.cat(list(anchors_per_level), dim=0)  # [A, 4]
    num_anchors = anchors.shape[0]
    num_gt = gt_boxes.shape[0]
    device = anchors.device
    level_sizes = [level.shape[0] for level in anchors_per_level]
    num_candidates = sum(min(top_k, size) for size in level_sizes)

    if num_gt == 0:
        return AtssAssignment(
            matched_gt_index=torch.full((num_anchors,), -1, dtype=torch.int64, device=device),
            candidate_indices=torch.zeros((num_candidates, 0), dtype=torch.int64, device=device),
            iou_threshold=gt_boxes.new_zeros((0,)),
        )

    # Legacy +1 IoU (official ``boxlist_iou``; quirks.TO_REMOVE).
    ious = box_iou_legacy(anchors, gt_boxes)  # [A, G]
    anchor_points = box_centers(anchors)  # [A, 2]
    distances = (anchor_points[:, None, :] - box_centers(gt_boxes)[None, :, :]).pow(2).sum(-1).sqrt()  # [A, G]

    # Candidates: the nearest anchors of every level, by centre distance.
    candidates = []
    start = 0
    for size in level_sizes:
        _, nearest = distances[start : start + size, :].topk(min(top_k, size), dim=0, largest=False)  # [k_l, G]
        candidates.append(nearest + start)
        start += size
    candidate_indices = torch.cat(candidates, dim=0)  # [K, G]

    gt_columns = torch.arange(num_gt, device=device)
    candidate_ious = ious[candidate_indices, gt_columns]  # [K, G]
    # Adaptive threshold: mean + unbiased standard deviation over the candidates of each box.
    iou_threshold = candidate_ious.mean(0) + candidate_ious.std(0)  # [G]
    is_positive = candidate_ious >= iou_threshold[None, :]  # [K, G]

    # The candidate's centre must lie inside the box, by more than MIN_INSIDE_DISTANCE on all sides.
    candidate_x = anchor_points[candidate_indices, 0]  # [K, G]
    candidate_y = anchor_points[candidate_indices, 1]  # [K, G]
    left = candidate_x - gt_boxes[:, 0]
    top = candidate_y - gt_boxes[:, 1]
    right = gt_boxes[:, 2] - candidate_x
    bottom = gt_boxes[:, 3] - candidate_y
    inside = torch.stack((left, top, right, bottom), dim=1).min(dim=1).values > MIN_INSIDE_DISTANCE  # [K, G]
    is_positive &= inside

    # An anchor that is a positive of several boxes takes the one with the highest IoU (ties: the
    # lowest box index, as ``max`` returns the first maximum).
    positive_ious = torch.full_like(ious, -torch.inf)  # [A, G]
    positive_anchor, positive_gt = candidate_indices[is_positive], gt_columns.expand_as(candidate_indices)[is_positive]
    positive_ious[positive_anchor, positive_gt] = ious[positive_anchor, positive_gt]
    best_iou, best_gt = positive_ious.max(dim=1)  # [A] each
    matched_gt_index = torch.where(best_iou == -torch.inf, torch.full_like(best_gt, -1), best_gt)
    return AtssAssignment(matched_gt_index, candidate_indices, iou_threshold)
