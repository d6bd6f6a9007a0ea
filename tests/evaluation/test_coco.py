"""COCO evaluation: our numbers are pycocotools' own; the end-to-end path writes COCO results."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from eval_fixtures import write_coco
from glip.data.shapes_world import synthesize
from glip.evaluation.coco import METRIC_NAMES, coco_metrics, evaluate_coco, evaluate_detection
from glip.evaluation.grounding import evaluate_grounding
from glip.evaluation.runner import RunOptions


def _fixture(tmp_path: Path) -> tuple[Path, list[dict]]:
    rng = np.random.default_rng(0)
    images = [{"id": i, "file_name": f"{i}.png", "width": 200, "height": 150} for i in range(1, 6)]
    annotations, results = [], []
    for image in images:
        for _ in range(3):
            x, y, w, h = rng.uniform(0, 100), rng.uniform(0, 80), rng.uniform(5, 90), rng.uniform(5, 60)
            category = int(rng.integers(1, 4))
            annotations.append({"id": len(annotations) + 1, "image_id": image["id"], "category_id": category,
                                "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            jitter = rng.normal(0, 4, 4)
            results.append({"image_id": image["id"], "category_id": category, "score": float(rng.uniform()),
                            "bbox": [x + jitter[0], y + jitter[1], abs(w + jitter[2]), abs(h + jitter[3])]})
            results.append({"image_id": image["id"], "category_id": int(rng.integers(1, 4)),
                            "score": float(rng.uniform(0, 0.5)), "bbox": [10.0, 10.0, 30.0, 30.0]})
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": i, "name": n} for i, n in enumerate(["a", "b", "c"], 1)]}))
    return path, results


def test_metrics_equal_pycocotools(tmp_path: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    path, results = _fixture(tmp_path)
    ours = coco_metrics(path, results)
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(path))
        evaluator = COCOeval(ground_truth, ground_truth.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    expected = dict(zip(("AP", "AP50", "AP75", "APs", "APm", "APl"), evaluator.stats[:6]))
    assert ours.metrics == pytest.approx(expected, abs=0)
    assert 0 < ours.metrics["AP"] < 1
    assert set(ours.per_category_ap) == {"a", "b", "c"}


def test_end_to_end_on_a_small_split(tiny_model, tmp_path: Path) -> None:
    model = tiny_model
    split = synthesize(tmp_path / "split", 4, seed=11, split="test", show_progress=False)
    evaluation = evaluate_coco(model, split["detection"], split["images"], batch_size=2, min_size=160)
    assert evaluation.results and {"image_id", "category_id", "bbox", "score"} <= set(evaluation.results[0])
    assert {r["category_id"] for r in evaluation.results} <= set(range(1, 7))
    assert set(evaluation.metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    recall = evaluate_grounding(model, split["grounding"], split["images"], ks=(1, 5), min_size=160)
    assert recall["phrases"] > 0 and 0 <= recall["R@1"] <= recall["R@5"] <= 1


# --------------------------------------------------------------------------------------------------
# glip eval coco: outputs, resumption, bad input
# --------------------------------------------------------------------------------------------------

CATEGORIES = ["cat", "dog", "traffic_light"]


def test_outputs_and_cleaned_prompt(tiny_model, tmp_path: Path) -> None:
    annotations, images = write_coco(tmp_path / "data", CATEGORIES, num_images=5)
    out = tmp_path / "out"
    evaluation = evaluate_detection(tiny_model, annotations, images, min_size=64, max_size=96,
                                    run=RunOptions(batch_size=2, out=out, progress=False))
    results = json.loads((out / "results.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert results == evaluation.results and results
    assert {"image_id", "category_id", "bbox", "score"} == set(results[0])
    assert {record["category_id"] for record in results} <= {1, 2, 3}
    assert set(METRIC_NAMES) <= set(metrics) and metrics["images"] == 5
    assert set(metrics["per_category_AP"]) == set(CATEGORIES)
    assert "| traffic_light |" in (out / "per_category.md").read_text()
    assert not (out / "partial").exists()


def test_an_interrupted_evaluation_resumes_to_the_same_numbers(tiny_model, tmp_path: Path, monkeypatch) -> None:
    annotations, images = write_coco(tmp_path / "data", CATEGORIES, num_images=5)
    options = dict(min_size=64, max_size=96)
    full = evaluate_detection(tiny_model, annotations, images, **options, run=RunOptions(2, progress=False))

    preprocess, calls, stop_at = tiny_model.preprocess, [], [2]

    def interrupted(paths, *args):
        calls.append(len(paths))
        if len(calls) in stop_at:
            stop_at.clear()
            raise KeyboardInterrupt
        return preprocess(paths, *args)

    out = tmp_path / "out"
    monkeypatch.setattr(tiny_model, "preprocess", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate_detection(tiny_model, annotations, images, **options, run=RunOptions(2, out, save_every=1))
    assert (out / "partial").is_dir() and not (out / "metrics.json").exists()
    calls.clear()
    resumed = evaluate_detection(tiny_model, annotations, images, **options,
                                 run=RunOptions(2, out, resume=True, progress=False))
    assert calls == [2, 1]  # the two batches left of 2 + 2 + 1 images
    assert resumed.metrics == full.metrics and resumed.results == full.results
    assert not (out / "partial").exists()
    calls.clear()
    again = evaluate_detection(tiny_model, annotations, images, **options, run=RunOptions(2, out, resume=True))
    assert calls == [] and again.metrics == full.metrics  # finished already: read back


def test_bad_input_is_named_and_leaves_no_outputs(tiny_model, tmp_path: Path) -> None:
    annotations, images = write_coco(tmp_path / "data", CATEGORIES, num_images=2)
    out = tmp_path / "out"
    run = RunOptions(2, out, progress=False)
    with pytest.raises(ValueError, match="cannot read COCO annotations .*missing.json"):
        evaluate_detection(tiny_model, tmp_path / "missing.json", images, run=run)
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(ValueError, match="cannot read COCO annotations .*broken.json"):
        evaluate_detection(tiny_model, broken, images, run=run)
    data = json.loads(annotations.read_text())
    del data["images"][1]["file_name"]
    broken.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"broken.json: images\[1\] has no 'file_name'"):
        evaluate_detection(tiny_model, broken, images, run=run)
    data = json.loads(annotations.read_text())
    data["categories"].append({"id": 9, "name": "(unnamed)"})
    broken.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"category '\(unnamed\)'"):
        evaluate_detection(tiny_model, broken, images, run=run)
    (images / "img_1.png").unlink()
    with pytest.raises(FileNotFoundError, match="img_1.png"):
        evaluate_detection(tiny_model, annotations, images, run=run)
    assert not out.exists() or not any(out.iterdir())
