"""ATSS assignment on hand-computable cases, and its invariants on random boxes."""

from __future__ import annotations

import math

import pytest
import torch

from glip.losses.assign import atss_assign
from glip.modeling.anchors import grid_anchors


def _boxes(*rows: tuple[float, float, float, float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_one_box_takes_the_identical_anchor() -> None:
    # IoUs (+1 convention) with the box: 1, 0 (touching: 9 - 10 + 1 = 0 wide), 0.
    anchors = [_boxes((0, 0, 9, 9), (10, 0, 19, 9), (100, 100, 109, 109))]
    assignment = atss_assign(anchors, _boxes((0, 0, 9, 9)))
    # top_k = 9 is capped by the level size: all 3 anchors, nearest first.
    assert assignment.candidate_indices.tolist() == [[0], [1], [2]]
    # mean 1/3 + unbiased std sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = 1/3 + sqrt(1/3)
    assert assignment.iou_threshold.item() == pytest.approx(1 / 3 + math.sqrt(1 / 3), rel=1e-6)
    assert assignment.matched_gt_index.tolist() == [0, -1, -1]
    assert assignment.matched_gt_index.dtype == torch.int64


def test_anchor_centre_must_be_strictly_inside_the_box() -> None:
    gt = _boxes((0, 0, 9, 9))
    far = [(50, 50, 59, 59), (80, 80, 89, 89)]
    # Centre x = 0, on the box's left edge: IoU 60 / 150 = 0.4 clears the threshold
    # (0.4/3 + sqrt(((0.8/3)^2 + 2 (0.4/3)^2) / 2) = 0.364), but the centre is not inside by > 0.01.
    on_edge = atss_assign([_boxes((-5, 0, 5, 9), *far)], gt)
    expected_threshold = 0.4 / 3 + math.sqrt(((0.8 / 3) ** 2 + 2 * (0.4 / 3) ** 2) / 2)
    assert on_edge.iou_threshold.item() == pytest.approx(expected_threshold, rel=1e-5)
    assert on_edge.matched_gt_index.tolist() == [-1, -1, -1]
    # Centre 0.02 inside: positive.
    inside = atss_assign([_boxes((-4.98, 0, 5.02, 9), *far)], gt)
    assert inside.matched_gt_index.tolist() == [0, -1, -1]


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_anchor_claimed_by_two_boxes_goes_to_the_higher_iou(order: tuple[int, int]) -> None:
    big, small = (0, 0, 19, 19), (0, 0, 9, 9)
    gts = _boxes(*[(big, small)[index] for index in order])
    anchors = [_boxes((0, 0, 9, 9), (200, 200, 209, 209), (300, 300, 309, 309))]
    assignment = atss_assign(anchors, gts)
    # The first anchor is a positive of both (IoU 0.25 with the big box, 1 with the small one).
    small_index = order.index(1)
    assert assignment.matched_gt_index.tolist() == [small_index, -1, -1]


def test_candidates_are_the_nearest_per_level_capped_by_the_level_size() -> None:
    coarse = grid_anchors(128, 64, 1, 2)  # 2 anchors: fewer than top_k
    fine = grid_anchors(64, 8, 5, 5)  # 25 anchors
    gt = _boxes((10, 10, 30, 30))
    assignment = atss_assign([coarse, fine], gt, top_k=9)
    assert assignment.candidate_indices.shape == (2 + 9, 1)
    assert sorted(assignment.candidate_indices[:2, 0].tolist()) == [0, 1]
    fine_candidates = assignment.candidate_indices[2:, 0] - 2
    centres = (fine[:, :2] + fine[:, 2:]) / 2
    distances = (centres - torch.tensor([20.0, 20.0])).norm(dim=1)
    # The 9 candidates are the 9 nearest fine anchors (the 10th is farther).
    assert distances[fine_candidates].max() < distances.sort().values[9]


def test_no_boxes_means_all_background() -> None:
    anchors = [grid_anchors(64, 8, 4, 4), grid_anchors(128, 16, 2, 2)]
    assignment = atss_assign(anchors, torch.zeros((0, 4)))
    assert assignment.matched_gt_index.tolist() == [-1] * 20
    assert assignment.candidate_indices.shape == (9 + 4, 0)
    assert assignment.iou_threshold.shape == (0,)


def test_random_assignments_satisfy_the_atss_rules() -> None:
    generator = torch.Generator().manual_seed(0)
    anchors = [grid_anchors(64, 8, 12, 16), grid_anchors(128, 16, 6, 8), grid_anchors(256, 32, 3, 4)]
    all_anchors = torch.cat(anchors)
    for _ in range(5):
        # Top-left corners (x, y) inside the 128 x 96 image.
        corners = torch.rand((6, 2), generator=generator) * torch.tensor([128.0, 96.0])
        sizes = 8 + torch.rand((6, 2), generator=generator) * 80
        gts = torch.cat((corners, corners + sizes), dim=1)
        assignment = atss_assign(anchors, gts)
        for anchor in torch.nonzero(assignment.positive_mask).flatten().tolist():
            gt = assignment.matched_gt_index[anchor].item()
            assert anchor in assignment.candidate_indices[:, gt].tolist()
            centre = (all_anchors[anchor, :2] + all_anchors[anchor, 2:]) / 2
            assert (centre - gts[gt, :2]).min() > 0.01 and (gts[gt, 2:] - centre).min() > 0.01
