"""Ground-truth files are checked when read, before any inference; errors name file, entry and field."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest

from eval_fixtures import coco_dict, lvis_dict, write_coco, write_mdetr_grounding
from glip.evaluation.annotations import read_coco
from glip.evaluation.coco import METRIC_NAMES, coco_metrics, evaluate_detection
from glip.evaluation.grounding import read_grounding
from glip.evaluation.lvis import lvis_metrics, read_lvis
from glip.evaluation.runner import RunOptions


def _set(path: list, value):
    """A mutation of a COCO dict: ``data[path[0]][path[1]][path[2]] = value`` (None deletes)."""
    def mutate(data: dict) -> None:
        target = data
        for key in path[:-1]:
            target = target[key]
        if value is None:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return mutate


def _duplicate_image(data: dict) -> None:
    data["images"][2]["id"] = data["images"][0]["id"]


BROKEN = {
    "zero width": (_set(["annotations", 1, "bbox", 2], 0),
                   r"annotations\[1\] \(id 2\): field 'bbox' \[.*\] has width 0"),
    "negative height": (_set(["annotations", 2, "bbox", 3], -4), r"annotations\[2\] \(id 3\): field 'bbox'.*height -4"),
    "unknown category": (_set(["annotations", 0, "category_id"], 77),
                         r"annotations\[0\] \(id 1\): field 'category_id' names category 77"),
    "missing image": (_set(["annotations", 3, "image_id"], 999),
                      r"annotations\[3\] \(id 4\): field 'image_id' names image 999"),
    "nan box": (_set(["annotations", 1, "bbox", 0], float("nan")), r"annotations\[1\] \(id 2\): field 'bbox'.*NaN"),
    "infinite box": (_set(["annotations", 1, "bbox", 3], float("inf")),
                     r"annotations\[1\] \(id 2\): field 'bbox' has a NaN or infinite"),
    "three numbers": (_set(["annotations", 0, "bbox"], [1, 2, 3]),
                      r"annotations\[0\] \(id 1\): field 'bbox' must be 4"),
    "a string": (_set(["annotations", 0, "bbox", 1], "7"),
                 r"annotations\[0\] \(id 1\): field 'bbox' must be 4 numbers"),
    "missing key": (_set(["annotations", 2, "bbox"], None), r"annotations\[2\] has no 'bbox' \(id 3\)"),
    "duplicate image id": (_duplicate_image, r"images\[2\] repeats id 10 of images\[0\]"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_coco_files_are_named_precisely(case: str, tmp_path: Path) -> None:
    mutate, message = BROKEN[case]
    data = coco_dict(["cat", "dog"], num_images=4)
    mutate(data)
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data))  # NaN and Infinity are written as JSON's common extension
    with pytest.raises(ValueError, match=r"broken\.json: " + message):
        read_coco(path)


def test_lvis_and_grounding_files_are_checked_too(tmp_path: Path) -> None:
    data, _ = lvis_dict()
    data["annotations"][0]["bbox"][2] = -1.0
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"lvis\.json: annotations\[0\] \(id 1\): field 'bbox'"):
        read_lvis(path)
    grounding = write_mdetr_grounding(tmp_path)
    data = json.loads(grounding.read_text())
    data["annotations"][1]["image_id"] = 42
    grounding.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"annotations\[1\] \(id 2\): field 'image_id' names image 42"):
        read_grounding(grounding)


def test_a_broken_file_fails_before_any_inference(tiny_model, tmp_path: Path, monkeypatch) -> None:
    annotations, images = write_coco(tmp_path, ["cat", "dog"], num_images=3)
    data = json.loads(annotations.read_text())
    data["annotations"][-1]["bbox"] = [1, 2, 3, "4"]
    annotations.write_text(json.dumps(data))
    monkeypatch.setattr(tiny_model, "preprocess", lambda *args: pytest.fail("inference ran"))
    with pytest.raises(ValueError, match="annotations.json: annotations"):
        evaluate_detection(tiny_model, annotations, images, run=RunOptions(2, progress=False))


def test_no_images_is_undefined_not_zero(caplog) -> None:
    data = coco_dict(["cat"], num_images=2)
    empty = {**copy.deepcopy(data), "images": [], "annotations": []}
    with caplog.at_level(logging.WARNING):
        evaluation = coco_metrics(empty, [])
    assert evaluation.metrics == {name: -1.0 for name in METRIC_NAMES}
    assert "no images" in caplog.text
    lvis, _ = lvis_dict()
    assert lvis_metrics({**lvis, "images": [], "annotations": []}, []).metrics["AP"] == -1.0
    # With ground truth but nothing detected, AP is a true 0.
    assert coco_metrics(data, []).metrics["AP"] == 0.0
