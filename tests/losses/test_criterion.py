"""GLIP losses on hand-computable cases: focal loss, GIoU, centerness, normalisation, empty targets."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from glip import quirks
from glip.data import Target
from torchvision.ops import sigmoid_focal_loss

from glip.losses import GLIPCriterion, centerness_targets, giou_loss
from glip.losses.criterion import IGNORED
from glip.modeling.anchors import grid_anchors
from glip.modeling.box_coder import BoxCoder

LN2 = math.log(2.0)
# Focal loss at logit 0 (p = 1/2, (1 - p_t)^2 = 1/4): alpha_t = 1/4 for a positive, 3/4 for a negative.
POSITIVE_AT_ZERO = 0.25 * 0.25 * LN2
NEGATIVE_AT_ZERO = 0.25 * 0.75 * LN2


@dataclass
class Predictions:
    box_regression: list[torch.Tensor]
    centerness: list[torch.Tensor]
    dot_product_logits: list[torch.Tensor]


def _target(boxes: torch.Tensor, positive_map: torch.Tensor) -> Target:
    return Target(boxes, torch.ones(len(boxes), dtype=torch.int64), positive_map)


def _zero_predictions(batch: int, grid_sizes: list[tuple[int, int]], tokens: int) -> Predictions:
    return Predictions(
        box_regression=[torch.zeros(batch, 4, h, w, requires_grad=True) for h, w in grid_sizes],
        centerness=[torch.zeros(batch, 1, h, w, requires_grad=True) for h, w in grid_sizes],
        dot_product_logits=[torch.zeros(batch, h * w, tokens, requires_grad=True) for h, w in grid_sizes],
    )


def test_focal_loss_by_hand() -> None:
    logits = torch.tensor([0.0, 0.0, math.log(3.0)])
    targets = torch.tensor([1.0, 0.0, 1.0])
    # Third: p = 3/4, BCE = -log(3/4), (1 - 3/4)^2 = 1/16, alpha 1/4.
    expected = torch.tensor([POSITIVE_AT_ZERO, NEGATIVE_AT_ZERO, -math.log(0.75) / 16 / 4])
    torch.testing.assert_close(sigmoid_focal_loss(logits, targets, reduction="none"), expected)


def _official_token_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """The official token_sigmoid_binary_focal_loss's operations, in its order."""
    probabilities = torch.sigmoid(logits)
    cross_entropy = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = probabilities * targets + (1 - probabilities) * (1 - targets)
    loss = cross_entropy * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (-1.0, 2.0), (0.5, 0.0), (0.25, 1.5)])
def test_torchvision_focal_loss_is_bit_identical_to_the_official_one(dtype, alpha: float, gamma: float) -> None:
    """Why the criterion may use torchvision.ops.sigmoid_focal_loss instead of its own copy."""
    generator = torch.Generator().manual_seed(int(alpha * 100 + gamma * 10))
    logits = (torch.randn(4, 300, 64, generator=generator) * 6).to(dtype)
    targets = (torch.rand(4, 300, 64, generator=generator) < 0.05).to(dtype)
    ours = _official_token_focal_loss(logits, targets, alpha, gamma)
    assert torch.equal(sigmoid_focal_loss(logits, targets, alpha, gamma, reduction="none"), ours)


def test_giou_loss_by_hand() -> None:
    box = torch.tensor([[2.0, 3.0, 7.0, 11.0]])
    assert giou_loss(box, box).abs().item() < 1e-6  # identical boxes: GIoU 1 (up to the 1e-7 eps)
    # Disjoint unit boxes one apart: IoU 0, union 2, enclosing 3 -> GIoU = -1/3.
    left, right = torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([[2.0, 0.0, 3.0, 1.0]])
    assert giou_loss(left, right).item() == pytest.approx(4 / 3, rel=1e-6)
    # A predicted box with x2 < x1 collapses to zero width: IoU 0, enclosing = target.
    inverted = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    assert giou_loss(inverted, torch.tensor([[0.0, 0.0, 2.0, 1.0]])).item() == pytest.approx(1.0, rel=1e-6)


def test_centerness_targets_by_hand() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    anchors = torch.tensor([[4.0, 4.0, 6.0, 6.0], [1.5, 4.0, 3.5, 6.0]])  # centres (5, 5) and (2.5, 5)
    torch.testing.assert_close(centerness_targets(boxes, anchors), torch.tensor([1.0, math.sqrt(2.5 / 7.5)]))


def _single_box_setup(box: tuple[float, float, float, float] = (4.0, 4.0, 19.0, 19.0)):
    # A 4x4 map of stride-8, 16-pixel anchors and one box (by default the anchor at (1, 1)).
    grid_sizes = [(4, 4)]
    anchors = [grid_anchors(16, 8, 4, 4)]
    boxes = torch.tensor([box])
    positive_map = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    text_mask = torch.tensor([[1, 1, 1, 0]])
    return grid_sizes, anchors, [_target(boxes, positive_map)], text_mask


def test_losses_by_hand_with_exact_box_predictions() -> None:
    grid_sizes, anchors, targets, text_mask = _single_box_setup()
    criterion = GLIPCriterion(BoxCoder())
    assignments = criterion.assign(anchors, targets)
    positives = torch.nonzero(assignments[0].positive_mask).flatten()
    assert positives.numel() >= 1
    predictions = _zero_predictions(1, grid_sizes, 4)
    with torch.no_grad():  # regress every positive exactly onto the box
        deltas = BoxCoder().encode(targets[0].boxes.expand(len(positives), 4), anchors[0][positives])
        predictions.box_regression[0].view(4, -1)[:, positives] = deltas.t()

    losses = criterion(predictions, anchors, targets, text_mask, assignments=assignments)
    assert list(losses) == ["loss_reg", "loss_centerness", "loss_cls", "loss_dot_product_token"]
    num_positive = len(positives)
    assert losses["loss_reg"].item() == pytest.approx(0.0, abs=1e-5)
    # Centerness logits 0: BCE = ln 2 whatever the target.
    assert losses["loss_centerness"].item() == pytest.approx(LN2, rel=1e-6)
    assert losses["loss_cls"].item() == 0.0
    # Real tokens 0..2: a positive has targets (1, 1, 0), a background anchor (0, 0, 0).
    per_positive = 2 * POSITIVE_AT_ZERO + NEGATIVE_AT_ZERO
    per_background = 3 * NEGATIVE_AT_ZERO
    expected = (num_positive * per_positive + (16 - num_positive) * per_background) / num_positive
    assert losses["loss_dot_product_token"].item() == pytest.approx(expected, rel=1e-6)


def test_no_object_token_counts_only_when_the_text_fills_all_tokens() -> None:
    grid_sizes, anchors = [(2, 2)], [grid_anchors(16, 8, 2, 2)]
    targets = [_target(torch.zeros((0, 4)), torch.zeros((0, 256)))]
    criterion = GLIPCriterion(BoxCoder())
    full = torch.ones(1, 256, dtype=torch.int64)
    losses = criterion(_zero_predictions(1, grid_sizes, 256), anchors, targets, full)
    # Every anchor is background: token 255 ("no object") is a positive, the 255 others negatives.
    expected = 4 * (255 * NEGATIVE_AT_ZERO + POSITIVE_AT_ZERO)
    assert losses["loss_dot_product_token"].item() == pytest.approx(expected, rel=1e-5)
    assert quirks.NO_OBJECT_TOKEN_INDEX == 255

    partial = full.clone()
    partial[0, 255] = 0
    losses = criterion(_zero_predictions(1, grid_sizes, 256), anchors, targets, partial)
    assert losses["loss_dot_product_token"].item() == pytest.approx(4 * 255 * NEGATIVE_AT_ZERO, rel=1e-5)


def test_empty_targets_give_finite_losses_and_zero_box_gradients() -> None:
    grid_sizes, anchors = [(4, 4), (2, 2)], [grid_anchors(64, 8, 4, 4), grid_anchors(128, 16, 2, 2)]
    targets = [_target(torch.zeros((0, 4)), torch.zeros((0, 5)))]
    text_mask = torch.tensor([[1, 1, 1, 0, 0]])
    predictions = _zero_predictions(1, grid_sizes, 5)
    losses = GLIPCriterion(BoxCoder())(predictions, anchors, targets, text_mask)
    assert losses["loss_reg"].item() == 0.0 and losses["loss_centerness"].item() == 0.0
    # num_pos is clamped to 1: the token loss is the plain sum over background anchors.
    assert losses["loss_dot_product_token"].item() == pytest.approx(20 * 3 * NEGATIVE_AT_ZERO, rel=1e-6)
    sum(losses.values()).backward()
    assert all(level.grad is not None and not level.grad.any() for level in predictions.box_regression)
    assert all(level.grad is not None and not level.grad.any() for level in predictions.centerness)


def test_batch_equals_per_image_sums() -> None:
    generator = torch.Generator().manual_seed(0)
    grid_sizes = [(6, 8), (3, 4)]
    anchors = [grid_anchors(32, 8, 6, 8), grid_anchors(64, 16, 3, 4)]
    first_boxes = torch.tensor([[4.0, 6.0, 30.0, 40.0], [20.0, 10.0, 60.0, 44.0]])
    second_boxes = torch.tensor([[10.0, 2.0, 50.0, 30.0]])
    targets = [
        _target(first_boxes, torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 1]])),
        _target(second_boxes, torch.tensor([[0.0, 1, 1, 0]])),
    ]
    text_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    predictions = Predictions(
        box_regression=[torch.randn(2, 4, h, w, generator=generator) * 0.3 for h, w in grid_sizes],
        centerness=[torch.randn(2, 1, h, w, generator=generator) for h, w in grid_sizes],
        dot_product_logits=[torch.randn(2, h * w, 4, generator=generator) * 2 for h, w in grid_sizes],
    )
    criterion = GLIPCriterion(BoxCoder())
    batch_assignments = criterion.assign(anchors, targets)
    batch = criterion(predictions, anchors, targets, text_mask, assignments=batch_assignments)

    def image(index: int) -> Predictions:
        return Predictions(
            box_regression=[level[index : index + 1] for level in predictions.box_regression],
            centerness=[level[index : index + 1] for level in predictions.centerness],
            dot_product_logits=[level[index : index + 1] for level in predictions.dot_product_logits],
        )

    singles = [criterion(image(i), anchors, [targets[i]], text_mask[i : i + 1]) for i in range(2)]
    num_positive = [int(assignment.positive_mask.sum()) for assignment in batch_assignments]
    assert min(num_positive) >= 1
    # Terms normalised by the positive count: batch x total count = sum of image x own count.
    for name in ("loss_centerness", "loss_dot_product_token"):
        combined = sum(single[name] * count for single, count in zip(singles, num_positive))
        torch.testing.assert_close(batch[name] * sum(num_positive), combined)
    # The box loss is normalised by the sum of centerness targets instead.
    weights = []
    for target, assignment in zip(targets, batch_assignments):
        positive = assignment.positive_mask
        boxes = target.boxes[assignment.matched_gt_index[positive]]
        weights.append(centerness_targets(boxes, torch.cat(anchors)[positive]).sum())
    combined = sum(single["loss_reg"] * weight for single, weight in zip(singles, weights))
    torch.testing.assert_close(batch["loss_reg"] * sum(weights), combined, rtol=1e-5, atol=1e-6)


def test_distributed_normalisation_hook() -> None:
    grid_sizes, anchors, targets, text_mask = _single_box_setup((0.0, 0.0, 31.0, 31.0))  # 4 positives
    predictions = _zero_predictions(1, grid_sizes, 4)
    single = GLIPCriterion(BoxCoder())(predictions, anchors, targets, text_mask)

    calls = []

    def twin_process(value: torch.Tensor) -> torch.Tensor:
        # A second process with the same batch: sums double, the average per process is unchanged.
        calls.append(value)
        return value * 2

    twins = GLIPCriterion(BoxCoder(), world_size=2, reduce_sum=twin_process)(
        predictions, anchors, targets, text_mask
    )
    assert len(calls) == 2  # positive count and centerness-target sum
    for name in single:
        torch.testing.assert_close(twins[name], single[name])

    def idle_partner(value: torch.Tensor) -> torch.Tensor:
        return value  # the other process has no positives: 4 / 2 positives per process

    doubled = GLIPCriterion(BoxCoder(), world_size=2, reduce_sum=idle_partner)(
        predictions, anchors, targets, text_mask
    )
    for name in ("loss_reg", "loss_centerness", "loss_dot_product_token"):
        torch.testing.assert_close(doubled[name], 2 * single[name])

    calls.clear()
    empty = [_target(torch.zeros((0, 4)), torch.zeros((0, 4)))]
    GLIPCriterion(BoxCoder(), world_size=2, reduce_sum=twin_process)(predictions, anchors, empty, text_mask)
    assert len(calls) == 2  # the same collectives without positives

    with pytest.raises(ValueError, match="reduce_sum"):
        GLIPCriterion(BoxCoder(), world_size=2)


def test_image_without_boxes_in_a_batch_only_adds_background_token_terms() -> None:
    grid_sizes, anchors, targets, text_mask = _single_box_setup((0.0, 0.0, 31.0, 31.0))
    criterion = GLIPCriterion(BoxCoder())
    alone = criterion(_zero_predictions(1, grid_sizes, 4), anchors, targets, text_mask)
    empty = _target(torch.zeros((0, 4)), torch.zeros((0, 4)))
    batch = criterion(_zero_predictions(2, grid_sizes, 4), anchors, [targets[0], empty], text_mask.expand(2, 4))
    torch.testing.assert_close(batch["loss_reg"], alone["loss_reg"])
    torch.testing.assert_close(batch["loss_centerness"], alone["loss_centerness"])
    extra = 16 * 3 * NEGATIVE_AT_ZERO / 4  # 16 background anchors, 3 real tokens, 4 positives
    torch.testing.assert_close(batch["loss_dot_product_token"], alone["loss_dot_product_token"] + extra)


def test_half_precision_predictions_give_float32_losses() -> None:
    grid_sizes, anchors, targets, text_mask = _single_box_setup()
    predictions = _zero_predictions(1, grid_sizes, 4)
    half = Predictions(
        box_regression=[level.detach().bfloat16() for level in predictions.box_regression],
        centerness=[level.detach().bfloat16() for level in predictions.centerness],
        dot_product_logits=[level.detach().bfloat16() for level in predictions.dot_product_logits],
    )
    criterion = GLIPCriterion(BoxCoder())
    losses = criterion(half, anchors, targets, text_mask)
    assert all(loss.dtype == torch.float32 for loss in losses.values())
    for name, value in criterion(predictions, anchors, targets, text_mask).items():
        torch.testing.assert_close(losses[name], value)


def test_ignored_objects_take_anchors_out_of_every_loss() -> None:
    # One named box at the top left, one ignored object at the bottom right of a 4x4 map.
    grid_sizes, anchors, targets, text_mask = _single_box_setup()
    ignored_box = torch.tensor([[20.0, 20.0, 35.0, 35.0]])
    with_ignore = [Target(targets[0].boxes, targets[0].labels, targets[0].positive_map, ignored_box)]
    criterion = GLIPCriterion(BoxCoder())
    plain, ignoring = criterion.assign(anchors, targets)[0], criterion.assign(anchors, with_ignore)[0]
    ignored = ignoring.matched_gt_index == IGNORED  # [A] bool
    assert ignored.any()
    assert torch.equal(plain.positive_mask, ignoring.positive_mask)  # the named box keeps its anchors
    assert not (plain.positive_mask & ignored).any()

    # Raising the token logits of the ignored anchors changes the plain loss, not the ignoring one.
    base, raised = _zero_predictions(1, grid_sizes, 4), _zero_predictions(1, grid_sizes, 4)
    with torch.no_grad():
        raised.dot_product_logits[0][0, ignored] = 5.0
    for targets_, changes in ((targets, True), (with_ignore, False)):
        before = criterion(base, anchors, targets_, text_mask)
        after = criterion(raised, anchors, targets_, text_mask)
        assert (after["loss_dot_product_token"] != before["loss_dot_product_token"]).item() is changes
        assert after["loss_reg"].item() == before["loss_reg"].item()
    # Ignored anchors drop out of the token sum: 3 real tokens x background focal term each.
    kept = criterion(base, anchors, with_ignore, text_mask)["loss_dot_product_token"]
    full = criterion(base, anchors, targets, text_mask)["loss_dot_product_token"]
    num_positive = int(plain.positive_mask.sum())
    expected_drop = int(ignored.sum()) * 3 * NEGATIVE_AT_ZERO / num_positive
    assert (full - kept).item() == pytest.approx(expected_drop, rel=1e-5)
