"""Detection pictures: labels stay readable when detections overlap."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from glip.modeling.postprocess import Detections
from glip.visualize import _PALETTE, _overlaps, draw_detections, place_labels


def _overlapping() -> Detections:
    # Two labels of nearly the same box (a model unsure between two shapes).
    boxes = torch.tensor([[40.0, 50.0, 140.0, 150.0], [42.0, 52.0, 141.0, 149.0]])
    return Detections(boxes, torch.tensor([0.8, 0.6]), torch.tensor([1, 2]), ["circle", "hexagon"])


def test_labels_of_overlapping_detections_do_not_overlap() -> None:
    spots = place_labels(_overlapping().boxes.tolist(), [(70, 14), (80, 14)], (200, 200))
    assert not _overlaps(spots[0], spots[1])
    for left, top, right, bottom in spots:
        assert 0 <= left < right <= 200 and 0 <= top < bottom <= 200


def test_label_goes_inside_a_box_at_the_top_edge() -> None:
    (spot,) = place_labels([[10.0, 0.0, 90.0, 60.0]], [(50, 14)], (100, 100))
    assert spot[1] >= 0 and spot[3] <= 60  # no room above: inside the box


def test_both_labels_are_visible_in_the_picture() -> None:
    picture = np.asarray(draw_detections(Image.new("RGB", (200, 200), (0, 0, 0)), _overlapping()))
    for label in (1, 2):
        color = np.array(_PALETTE[label % len(_PALETTE)])
        filled = int((picture == color).all(axis=-1).sum())
        # The box outline alone is ~400 px; a visible label background adds several hundred.
        assert filled > 700, f"label {label}'s background is covered ({filled} px of its colour)"
