"""Detections in other libraries' types: supervision (conventions, round trip, its tools on GLIP-Nano's
output), COCO result records, and `glip detect --coco-json` loaded by pycocotools."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glip import GLIP, Detections
from glip.cli import main
from glip.data.shapes_world import SHAPES, render_scene, sample_scene
from glip.interop import coco_files_from_report, import_supervision
from glip.modeling.postprocess import box_iou_legacy
from glip.processing import default_offline_vocab_dir

sv = import_supervision()


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _random_detections(count: int, seed: int = 0, phrases: bool = True) -> Detections:
    generator = torch.Generator().manual_seed(seed)
    corners = torch.rand(count, 2, generator=generator) * 500
    sizes = torch.rand(count, 2, generator=generator) * 200
    labels = torch.randint(1, 4, (count,), generator=generator)
    names = [f"class {label}" for label in labels.tolist()] if phrases else []
    return Detections(torch.cat((corners, corners + sizes), dim=1), torch.rand(count, generator=generator), labels,
                      names)


@lru_cache(maxsize=None)
def _nano() -> GLIP:
    return GLIP.from_pretrained("glip_nano")


# --------------------------------------------------------------------------------------------------
# supervision
# --------------------------------------------------------------------------------------------------


def test_to_supervision_hands_over_continuous_boxes_and_zero_based_class_ids() -> None:
    detections = Detections(torch.tensor([[10.0, 20.0, 29.0, 39.0], [0.5, 1.5, 4.5, 2.5]]), torch.tensor([0.9, 0.4]),
                            torch.tensor([1, 3]), ["cat", "red dog"])
    converted = detections.to_supervision()
    assert isinstance(converted, sv.Detections)
    # A legacy box [10, 29] covers 20 pixels: supervision's x2 - x1 must say 20.
    np.testing.assert_array_equal(converted.xyxy, [[10.0, 20.0, 30.0, 40.0], [0.5, 1.5, 5.5, 3.5]])
    np.testing.assert_array_equal(converted.box_area, [400.0, 10.0])
    np.testing.assert_array_equal(converted.class_id, [0, 2])
    np.testing.assert_allclose(converted.confidence, [0.9, 0.4])
    assert list(converted.data["phrase"]) == ["cat", "red dog"]
    assert list(converted["class_name"]) == ["cat", "red dog"]  # what supervision's LabelAnnotator prints


@pytest.mark.parametrize("count", [0, 1, 50])
def test_supervision_round_trip_is_exact(count: int) -> None:
    detections = _random_detections(count)
    back = Detections.from_supervision(detections.to_supervision())
    assert torch.equal(back.boxes, detections.boxes) and back.boxes.dtype == torch.float32
    assert torch.equal(back.scores, detections.scores) and torch.equal(back.labels, detections.labels)
    assert back.phrases == detections.phrases


def test_from_supervision_names_classes_and_scores_annotations_as_one() -> None:
    annotations = sv.Detections(xyxy=np.array([[0.0, 0.0, 10.0, 5.0], [2.0, 2.0, 4.0, 4.0]]),
                                class_id=np.array([1, 0]))
    detections = Detections.from_supervision(annotations, classes=["person", "dog"])
    assert detections.phrases == ["dog", "person"] and detections.labels.tolist() == [2, 1]
    assert detections.scores.tolist() == [1.0, 1.0]
    assert detections.boxes.tolist() == [[0.0, 0.0, 9.0, 4.0], [2.0, 2.0, 3.0, 3.0]]
    assert Detections.from_supervision(annotations).phrases == []  # no names anywhere: none invented
    with pytest.raises(ValueError, match="class_id 1 has no name"):
        Detections.from_supervision(annotations, classes=["person"])
    with pytest.raises(ValueError, match="without class_id"):
        Detections.from_supervision(sv.Detections(xyxy=np.zeros((1, 4))))


def test_to_supervision_without_the_package_says_which_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "supervision", None)  # import supervision -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'glip\[supervision\]'"):
        _random_detections(2).to_supervision()


def test_supervision_tools_on_glip_nano_detections_agree_with_ours() -> None:
    scene = sample_scene(7, "test", 0)
    image = render_scene(scene)
    detections = _nano().predict(image, classes=list(SHAPES))
    assert len(detections) > 0
    converted = detections.to_supervision()
    # The Shapes-world truth as supervision reads COCO boxes: (x, y, x + w, y + h).
    truth = np.array([(x, y, x + w, y + h) for x, y, w, h in (item.box for item in scene.objects)], dtype=np.float64)
    truth_legacy = torch.tensor(truth - [0, 0, 1, 1], dtype=torch.float32)
    # Same boxes, same convention: supervision's IoU is the legacy +1 IoU of the post-processor.
    np.testing.assert_allclose(sv.box_iou_batch(truth, converted.xyxy),
                               box_iou_legacy(truth_legacy, detections.boxes).numpy(), rtol=1e-5, atol=1e-6)
    # supervision's annotators draw the phrases: the picture changes inside the first box.
    canvas = np.asarray(image).copy()
    drawn = sv.LabelAnnotator().annotate(sv.BoxAnnotator().annotate(canvas.copy(), converted), converted)
    x1, y1, x2, y2 = converted.xyxy[0].astype(int)
    assert not np.array_equal(drawn[y1:y2, x1:x2], canvas[y1:y2, x1:x2])
    # A supervision filter selects the same detections as ours.
    labels = converted[converted.class_id == int(detections.labels[0]) - 1]
    assert len(labels) == int((detections.labels == detections.labels[0]).sum())


# --------------------------------------------------------------------------------------------------
# COCO results
# --------------------------------------------------------------------------------------------------


def test_coco_records_round_trip_one_image() -> None:
    detections = _random_detections(20, seed=3)
    records = detections.to_coco(image_id=5) + _random_detections(3, seed=4).to_coco(image_id=6)
    back = Detections.from_coco(records, image_id=5, categories={1: "class 1", 2: "class 2", 3: "class 3"})
    # The records' widths are x2 - x1 + 1 in float32: back to the same corner within float rounding.
    torch.testing.assert_close(back.boxes, detections.boxes, rtol=0, atol=1e-4)
    assert torch.equal(back.scores, detections.scores) and torch.equal(back.labels, detections.labels)
    assert back.phrases == detections.phrases
    with pytest.raises(ValueError, match="records of 2 images"):
        Detections.from_coco(records)


def test_coco_files_skip_failed_images_and_keep_input_ids() -> None:
    good = {"image": "b.png", "width": 40, "height": 30, **_random_detections(2, phrases=False).to_dict()}
    results, images = coco_files_from_report([{"image": "a.png", "error": "corrupt"}, good], {1: "x", 2: "y", 3: "z"})
    assert images["images"] == [{"id": 2, "file_name": "b.png", "width": 40, "height": 30}]
    assert [result["image_id"] for result in results] == [2, 2]
    assert images["categories"] == [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}, {"id": 3, "name": "z"}]


def _official_args(reference_dir: Path) -> list[str]:
    folder = reference_dir / "glip_tiny_parity"
    return ["--checkpoint", str(folder / "checkpoint.pth"), "--config", str(folder / "config.yaml"),
            "--text-config", str(folder / "text_config.json"), "--tokenizer", str(default_offline_vocab_dir())]


def test_detect_coco_json_loads_in_pycocotools_and_scores_itself_perfectly(reference_dir: Path,
                                                                          tmp_path: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    folder = reference_dir / "glip_tiny_parity"
    images = [folder / "case_a_astronaut.png", tmp_path / "missing.png", folder / "case_b_coffee_301x417.png"]
    out, results_file = tmp_path / "out", tmp_path / "coco" / "results.json"
    code = main(["detect", *map(str, images), "--classes", "person, cup", "--threshold", "0.2", "--min-size", "64",
                 "--out", str(out), "--coco-json", str(results_file), *_official_args(reference_dir)])
    assert code == 1  # the missing image fails, the others are written
    report = json.loads((out / "detections.json").read_text())
    results = json.loads(results_file.read_text())
    index = json.loads((tmp_path / "coco" / "results.images.json").read_text())
    assert [(image["id"], image["width"], image["height"]) for image in index["images"]] == [
        (1, *Image.open(images[0]).size), (3, *Image.open(images[2]).size)]
    assert [category["name"] for category in index["categories"]] == ["person", "cup"]
    expected = [(image_id, box, score) for image_id, entry in ((1, report[0]), (3, report[2]))
                for box, score in zip(entry["boxes"], entry["scores"])]
    assert len(results) == len(expected) > 0
    for result, (image_id, (x1, y1, x2, y2), score) in zip(results, expected):
        assert result["image_id"] == image_id and result["score"] == pytest.approx(score)
        assert result["bbox"] == pytest.approx([x1, y1, x2 - x1 + 1, y2 - y1 + 1], abs=1e-4)

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        index_only = COCO(str(tmp_path / "coco" / "results.images.json"))
        loaded = index_only.loadRes(str(results_file))
        assert len(loaded.getAnnIds()) == len(results)
        # Ground truth made of the detections themselves: every detection is a true positive.
        truth = dict(index, annotations=[dict(result, id=number, area=result["bbox"][2] * result["bbox"][3],
                                              iscrowd=0) for number, result in enumerate(results, start=1)])
        truth_file = tmp_path / "truth.json"
        truth_file.write_text(json.dumps(truth))
        ground_truth = COCO(str(truth_file))
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(str(results_file)), "bbox")
        evaluation.params.catIds = sorted({result["category_id"] for result in results})
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert evaluation.stats[1] == pytest.approx(1.0)  # AP50


def test_detect_coco_json_caption_categories_are_the_spans(reference_dir: Path, tmp_path: Path) -> None:
    image = reference_dir / "glip_tiny_parity" / "case_b_coffee_301x417.png"
    results_file = tmp_path / "caption.json"
    code = main(["detect", str(image), "--caption", "a cup of coffee on a table", "--span", "2:15", "--span", "21:26",
                 "--threshold", "0.0", "--min-size", "64", "--out", str(tmp_path / "out"), "--coco-json",
                 str(results_file), *_official_args(reference_dir)])
    assert code == 0
    index = json.loads((tmp_path / "caption.images.json").read_text())
    assert index["categories"] == [{"id": 1, "name": "cup of coffee"}, {"id": 2, "name": "table"}]
    assert {result["category_id"] for result in json.loads(results_file.read_text())} <= {1, 2}


def test_detect_coco_json_says_when_there_is_nothing_for_loadres(reference_dir: Path, tmp_path: Path,
                                                                 capsys) -> None:
    image = reference_dir / "glip_tiny_parity" / "case_a_astronaut.png"
    code = main(["detect", str(image), "--classes", "person", "--threshold", "1.0", "--min-size", "64", "--out",
                 str(tmp_path / "out"), "--coco-json", str(tmp_path / "coco.json"), *_official_args(reference_dir)])
    assert code == 0 and json.loads((tmp_path / "coco.json").read_text()) == []
    assert "(0 detections: an empty list, which pycocotools' loadRes cannot read)" in capsys.readouterr().out


def test_detect_coco_json_refuses_a_folder_before_loading_anything(tmp_path: Path, capsys) -> None:
    code = main(["detect", str(tmp_path), "--classes", "dog", "--coco-json", str(tmp_path), "--model", "no-such"])
    assert code == 2 and "--coco-json" in capsys.readouterr().err
