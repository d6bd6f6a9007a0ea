"""Post-processing: legacy NMS semantics, score aggregation, top-k cut, batching, Detections."""

from __future__ import annotations

import pytest
import torch

from glip.modeling.anchors import AnchorGenerator, cell_anchor, grid_anchors
from glip.modeling.postprocess import (
    Detections,
    GroundingPostProcessor,
    PhraseTokens,
    box_iou_legacy,
    legacy_nms,
    rescale_detections,
)


def _naive_ml_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, threshold: float) -> list[int]:
    """Literal transcription of the official CUDA ml_nms loop (one box pair at a time)."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    removed = set()
    keep = []
    for rank, i in enumerate(order):
        if i in removed:
            continue
        keep.append(i)
        for j in order[rank + 1 :]:
            if labels[i] != labels[j]:
                continue
            a, b = boxes[i].tolist(), boxes[j].tolist()
            width = max(min(a[2], b[2]) - max(a[0], b[0]) + 1, 0.0)
            height = max(min(a[3], b[3]) - max(a[1], b[1]) + 1, 0.0)
            intersection = width * height
            area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
            area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
            if intersection / (area_a + area_b - intersection) > threshold:
                removed.add(j)
    return keep


# -------------------------------------------------------------------------------------------- NMS


def test_iou_uses_plus_one() -> None:
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0], [5.0, 0.0, 14.0, 9.0]])
    # +1 convention: each box is 10x10 = 100 pixels, the overlap 5x10 = 50 -> 50 / 150.
    torch.testing.assert_close(box_iou_legacy(boxes[:1], boxes[1:]), torch.tensor([[1 / 3]]))


def test_nms_plus_one_makes_touching_boxes_overlap() -> None:
    # Without +1 these share no area; with it they share one pixel column: IoU = 2 / 6.
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 2.0, 1.0]])
    scores = torch.tensor([0.9, 0.8])
    labels = torch.tensor([1, 1])
    assert legacy_nms(boxes, scores, 0.3, labels).tolist() == [0]
    assert legacy_nms(boxes, scores, 0.34, labels).tolist() == [0, 1]


def test_nms_suppresses_only_strictly_above_threshold() -> None:
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 9.0, 19.0]])  # IoU exactly 100 / 200
    scores = torch.tensor([0.5, 0.9])
    labels = torch.tensor([3, 3])
    assert legacy_nms(boxes, scores, 0.5, labels).tolist() == [1, 0]
    assert legacy_nms(boxes, scores, 0.49, labels).tolist() == [1]


def test_nms_is_per_label() -> None:
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0]] * 3)
    scores = torch.tensor([0.7, 0.9, 0.8])
    labels = torch.tensor([1, 2, 1])
    assert legacy_nms(boxes, scores, 0.6, labels).tolist() == [1, 2]
    assert legacy_nms(boxes, scores, 0.6).tolist() == [1]


def test_nms_removed_boxes_do_not_suppress() -> None:
    # A overlaps B, B overlaps C, A does not overlap C: greedy keeps A and C.
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0], [3.0, 0.0, 12.0, 9.0], [6.0, 0.0, 15.0, 9.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert legacy_nms(boxes, scores, 0.4, torch.tensor([1, 1, 1])).tolist() == [0, 2]


def test_nms_matches_literal_transcription_on_random_boxes() -> None:
    generator = torch.Generator().manual_seed(0)
    top_left = torch.rand(300, 2, generator=generator) * 100
    boxes = torch.cat([top_left, top_left + torch.rand(300, 2, generator=generator) * 40], dim=1)
    scores = torch.rand(300, generator=generator)
    labels = torch.randint(1, 4, (300,), generator=generator)
    expected = _naive_ml_nms(boxes, scores, labels, 0.6)
    assert legacy_nms(boxes, scores, 0.6, labels).tolist() == expected


def _greedy_reference_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float,
                          labels: torch.Tensor | None) -> list[int]:
    """The official loop, vectorised per kept box: score order (ties by index), +1 IoU, same label."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    iou = box_iou_legacy(boxes, boxes)
    same = torch.ones_like(iou, dtype=torch.bool) if labels is None else labels[:, None] == labels[None, :]
    suppress = ((iou > threshold) & same).tolist()
    removed = [False] * len(order)
    keep = []
    for i in order:
        if removed[i]:
            continue
        keep.append(i)
        removed = [was or hit for was, hit in zip(removed, suppress[i])]
    return keep


@pytest.mark.parametrize("seed", range(6))
def test_torchvision_nms_keeps_the_official_set_and_order(seed: int) -> None:
    """Random sets, half with pixel-grid boxes and scores in steps of 0.05 (many exact ties of IoU
    and score), with and without labels: the kept indices and their order are those of the loop."""
    generator = torch.Generator().manual_seed(seed)
    for trial in range(8):
        count = int(torch.randint(1, 400, (1,), generator=generator))
        top_left = torch.rand(count, 2, generator=generator) * 300
        sides = torch.rand(count, 2, generator=generator) * 80 + 1
        scores = torch.rand(count, generator=generator)
        if trial % 2:
            top_left, sides, scores = top_left.round(), sides.round(), (scores * 20).round() / 20
        boxes = torch.cat([top_left, top_left + sides], dim=1)
        labels = torch.randint(1, 4, (count,), generator=generator)
        threshold = float(torch.rand(1, generator=generator)) * 0.8 + 0.1
        for trial_labels in (labels, None):
            expected = _greedy_reference_nms(boxes, scores, threshold, trial_labels)
            assert legacy_nms(boxes, scores, threshold, trial_labels).tolist() == expected


def test_nms_empty() -> None:
    assert legacy_nms(torch.zeros(0, 4), torch.zeros(0), 0.5, torch.zeros(0, dtype=torch.int64)).shape == (0,)


# -------------------------------------------------------------------------------------- anchors


def test_cell_anchors_legacy() -> None:
    assert cell_anchor(64, 8) == (-28.0, -28.0, 35.0, 35.0)
    assert cell_anchor(128, 16) == (-56.0, -56.0, 71.0, 71.0)
    anchors = grid_anchors(64, 8, 2, 3)
    assert anchors.shape == (6, 4)
    assert anchors[1].tolist() == [-20.0, -28.0, 43.0, 35.0]  # x fastest
    assert anchors[3].tolist() == [-28.0, -20.0, 35.0, 43.0]


def test_anchor_generator_caches() -> None:
    generator = AnchorGenerator(cache_size=8)
    first = generator([(4, 5), (2, 3), (1, 2), (1, 1), (1, 1)])
    second = generator([(4, 5), (2, 3), (1, 2), (1, 1), (1, 1)])
    assert all(a is b for a, b in zip(first, second))
    assert [a.shape[0] for a in first] == [20, 6, 2, 1, 1]
    with pytest.raises(ValueError, match="anchor levels"):
        generator([(4, 5)])


# ------------------------------------------------------------------------------- post-processor


def _head_outputs(batch: int, grid_sizes: list[tuple[int, int]], num_tokens: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    regression = [torch.randn(batch, 4, h, w, generator=generator) for h, w in grid_sizes]
    centerness = [torch.randn(batch, 1, h, w, generator=generator) for h, w in grid_sizes]
    logits = [torch.randn(batch, h * w, num_tokens, generator=generator) * 2 - 1 for h, w in grid_sizes]
    return regression, centerness, logits


GRID = [(8, 10), (4, 5), (2, 3), (1, 2), (1, 1)]


def _positive_map(rows: list[list[int]], width: int = 12) -> torch.Tensor:
    positive_map = torch.zeros(len(rows), width)
    for row, tokens in enumerate(rows):
        positive_map[row, tokens] = 1.0
    return positive_map / (positive_map.sum(-1, keepdim=True) + 1e-6)


def test_batch_equals_single() -> None:
    processor = GroundingPostProcessor(detections_per_image=20)
    anchors = AnchorGenerator()(GRID)
    regression, centerness, logits = _head_outputs(2, GRID, 12, seed=0)
    positive_map = _positive_map([[1], [3, 4], [6]])
    sizes = [(60, 75), (50, 80)]
    originals = [(120, 150), (77, 91)]
    batched = processor(regression, centerness, logits, anchors, sizes, positive_map, original_sizes=originals)
    for image in range(2):
        single = processor(
            [r[image : image + 1] for r in regression],
            [c[image : image + 1] for c in centerness],
            [t[image : image + 1] for t in logits],
            anchors,
            [sizes[image]],
            positive_map,
            original_sizes=[originals[image]],
        )[0]
        assert len(single) == len(batched[image]) > 0
        assert torch.equal(single.boxes, batched[image].boxes)
        assert torch.equal(single.scores, batched[image].scores)
        assert torch.equal(single.labels, batched[image].labels)
        assert single.phrases == batched[image].phrases
    # Per-image prompts give the same result as the shared one.
    per_image = processor(
        regression, centerness, logits, anchors, sizes, [positive_map, positive_map], original_sizes=originals
    )
    for left, right in zip(per_image, batched):
        assert torch.equal(left.boxes, right.boxes) and torch.equal(left.labels, right.labels)


def test_detections_are_sorted_clipped_and_labelled() -> None:
    processor = GroundingPostProcessor(detections_per_image=30)
    anchors = AnchorGenerator()(GRID)
    regression, centerness, logits = _head_outputs(1, GRID, 12, seed=1)
    positive_map = _positive_map([[1], [3, 4], [6]])
    (result,) = processor(
        regression, centerness, logits, anchors, [(60, 75)], positive_map,
        label_ids=[5, 9, 11], phrases=["cat", "hot dog", "sky"],
    )
    assert 0 < len(result) <= 30
    assert torch.all(result.scores[:-1] >= result.scores[1:])
    assert set(result.labels.tolist()) <= {5, 9, 11}
    assert result.phrases == [{5: "cat", 9: "hot dog", 11: "sky"}[label] for label in result.labels.tolist()]
    assert result.boxes[:, 0::2].min() >= 0 and result.boxes[:, 0::2].max() <= 74
    assert result.boxes[:, 1::2].min() >= 0 and result.boxes[:, 1::2].max() <= 59


def test_score_aggregation_mean_and_max() -> None:
    logits = torch.tensor([[[0.0, 2.0, -2.0, 5.0]]])  # [B=1, HW=1, T=4]
    positive_map = _positive_map([[1, 2], [3], []], width=4)
    mean = GroundingPostProcessor(score_aggregation="MEAN")
    maximum = GroundingPostProcessor(score_aggregation="MAX")
    tokens = PhraseTokens.from_positive_map(positive_map)
    probabilities = logits.sigmoid()[0, 0]
    torch.testing.assert_close(
        mean.phrase_scores(logits, tokens)[0, 0],
        torch.stack([(probabilities[1] + probabilities[2]) / 2, probabilities[3], torch.tensor(0.0)]),
    )
    torch.testing.assert_close(
        maximum.phrase_scores(logits, tokens)[0, 0],
        torch.stack([probabilities[1], probabilities[3], torch.tensor(0.0)]),
    )
    with pytest.raises(ValueError, match="score_aggregation"):
        GroundingPostProcessor(score_aggregation="SUM")


def test_phrase_without_tokens_never_detected() -> None:
    processor = GroundingPostProcessor()
    anchors = AnchorGenerator()(GRID)
    regression, centerness, logits = _head_outputs(1, GRID, 12, seed=2)
    candidates = processor.select_candidates(
        regression, centerness, logits, anchors, [(60, 75)], _positive_map([[1], []])
    )[0]
    assert len(candidates) > 0 and set(candidates.labels.tolist()) == {1}


def test_label_column_limit() -> None:
    anchors = AnchorGenerator()(GRID)
    regression, centerness, logits = _head_outputs(1, GRID, 100, seed=3)
    positive_map = _positive_map([[token] for token in range(1, 82)], width=100)
    with pytest.raises(ValueError, match="81 phrases"):
        GroundingPostProcessor()(regression, centerness, logits, anchors, [(60, 75)], positive_map)
    (result,) = GroundingPostProcessor(num_label_columns=None)(
        regression, centerness, logits, anchors, [(60, 75)], positive_map
    )
    assert result.labels.max() <= 81
    with pytest.raises(ValueError, match="beyond"):
        GroundingPostProcessor()(regression, centerness, [t[..., :10] for t in logits], anchors, [(60, 75)],
                                 _positive_map([[20]], width=100))


def test_top_k_cut_keeps_ties() -> None:
    processor = GroundingPostProcessor(detections_per_image=2)
    boxes = torch.tensor([[0.0, 0, 5, 5], [10, 10, 15, 15], [20, 20, 25, 25], [30, 30, 35, 35]])
    candidates = Detections(boxes, torch.tensor([0.9, 0.8, 0.8, 0.1]), torch.tensor([1, 1, 1, 1]), ["a"] * 4)
    kept = processor.select_detections(candidates)
    assert kept.scores.tolist() == pytest.approx([0.9, 0.8, 0.8])


def test_pre_nms_top_n_per_level() -> None:
    processor = GroundingPostProcessor(pre_nms_top_n=7, score_threshold=0.0)
    anchors = AnchorGenerator()(GRID)
    regression, centerness, logits = _head_outputs(1, GRID, 12, seed=4)
    candidates = processor.select_candidates(regression, centerness, logits, anchors, [(60, 75)], _positive_map([[1]]))
    assert len(candidates[0]) == 7 + 7 + 6 + 2 + 1


def test_rescale_scales_x_and_y_separately() -> None:
    detections = Detections(torch.tensor([[10.0, 20.0, 30.0, 40.0]]), torch.tensor([0.5]), torch.tensor([1]), ["a"])
    rescaled = rescale_detections(detections, (100, 200), (50, 400))
    assert rescaled.boxes.tolist() == [[20.0, 10.0, 60.0, 20.0]]


def test_detections_export() -> None:
    detections = Detections(
        torch.tensor([[10.0, 20.0, 29.0, 59.0], [0.0, 0.0, 1.0, 1.0]]),
        torch.tensor([0.75, 0.25]),
        torch.tensor([2, 1]),
        ["dog", "cat"],
    )
    assert detections.to_dict() == {
        "boxes": [[10.0, 20.0, 29.0, 59.0], [0.0, 0.0, 1.0, 1.0]],
        "scores": [0.75, 0.25],
        "labels": [2, 1],
        "phrases": ["dog", "cat"],
    }
    records = detections.to_coco(image_id=7, label_to_category_id={1: 11, 2: 18})
    assert records[0] == {"image_id": 7, "category_id": 18, "bbox": [10.0, 20.0, 20.0, 40.0], "score": 0.75}
    assert records[1]["bbox"] == [0.0, 0.0, 2.0, 2.0]
    above = detections.above(0.5)
    assert len(above) == 1 and above.phrases == ["dog"]
    assert detections[1:].phrases == ["cat"]


def test_class_agnostic_nms_keeps_one_label_per_object() -> None:
    boxes = torch.tensor([[10.0, 10, 50, 50], [11, 11, 51, 51], [100, 100, 140, 140]])
    candidates = Detections(boxes, torch.tensor([0.9, 0.6, 0.5]), torch.tensor([1, 2, 2]), ["star", "cross", "cross"])
    official = GroundingPostProcessor().select_detections(candidates)
    assert official.labels.tolist() == [1, 2, 2]  # per-label NMS: both labels of the first object stay
    agnostic = GroundingPostProcessor(class_agnostic_nms=True).select_detections(candidates)
    assert agnostic.labels.tolist() == [1, 2] and agnostic.scores.tolist() == pytest.approx([0.9, 0.5])


def test_class_agnostic_nms_from_config() -> None:
    from glip.config import PostProcessConfig

    assert not GroundingPostProcessor.from_config(PostProcessConfig()).class_agnostic_nms
    assert GroundingPostProcessor.from_config(PostProcessConfig(class_agnostic_nms=True)).class_agnostic_nms


def test_boxes_left_empty_by_clipping_are_dropped() -> None:
    """A 1x1 image: every decoded box clips to the point (0, 0); none is returned."""
    processor = GroundingPostProcessor(score_threshold=0.0)
    anchors = AnchorGenerator()([(1, 1)] * 5)
    regression, centerness, logits = _head_outputs(1, [(1, 1)] * 5, 12, seed=5)
    (candidates,) = processor.select_candidates(regression, centerness, logits, anchors, [(1, 1)],
                                                _positive_map([[1]]))
    assert len(candidates) == 0


def _two_detections() -> Detections:
    boxes = torch.tensor([[10.0, 20.0, 60.0, 80.0], [12.0, 22.0, 62.0, 82.0]])
    return Detections(boxes, torch.tensor([0.9, 0.4]), torch.tensor([1, 2]), ["red circle", "star"])


def test_detections_repr_is_a_short_summary() -> None:
    many = Detections(torch.zeros(50, 4), torch.linspace(1, 0, 50), torch.ones(50, dtype=torch.int64), ["cat"] * 50)
    text = repr(many)
    assert text.startswith("Detections(50:") and "'cat' 1.00" in text and "45 more" in text
    assert "tensor" not in text and len(text) < 200
    assert repr(_two_detections()) == "Detections(2: ['red circle' 0.90, 'star' 0.40])"
    long_phrase = Detections(torch.zeros(1, 4), torch.ones(1), torch.ones(1, dtype=torch.int64), ["word " * 1000])
    assert len(repr(long_phrase)) < 100


def test_detections_plot_and_save(tmp_path) -> None:
    import numpy as np
    from PIL import Image

    image = np.zeros((100, 120, 3), dtype=np.uint8)
    picture = _two_detections().plot(image)
    assert isinstance(picture, Image.Image) and picture.size == (120, 100)
    assert np.asarray(picture).any(), "boxes and labels are drawn"
    path = _two_detections().save(tmp_path / "out.png", image)
    assert path.is_file() and np.array_equal(np.asarray(Image.open(path)), np.asarray(picture))
    with pytest.raises(ValueError, match="suffix"):
        _two_detections().save(tmp_path / "out.unknown", image)
