"""COCO evaluation: our numbers are pycocotools' own; the end-to-end path writes COCO results."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from glip.evaluation.coco import coco_metrics, evaluate_coco
from glip.evaluation.grounding import evaluate_grounding
from glip.data.shapes_world import synthesize


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


def test_end_to_end_on_a_small_split(reference_dir: Path, tmp_path: Path) -> None:
    from glip.pipeline import GLIP
    from glip.processing import default_offline_vocab_dir

    folder = reference_dir / "glip_tiny_parity"
    model = GLIP.from_official(folder / "checkpoint.pth", folder / "config.yaml", folder / "text_config.json",
                               default_offline_vocab_dir())
    split = synthesize(tmp_path / "split", 4, seed=11, split="test", show_progress=False)
    evaluation = evaluate_coco(model, split["detection"], split["images"], batch_size=2, min_size=160)
    assert evaluation.results and {"image_id", "category_id", "bbox", "score"} <= set(evaluation.results[0])
    assert {r["category_id"] for r in evaluation.results} <= set(range(1, 7))
    assert set(evaluation.metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    recall = evaluate_grounding(model, split["grounding"], split["images"], ks=(1, 5), min_size=160)
    assert recall["phrases"] > 0 and 0 <= recall["R@1"] <= recall["R@5"] <= 1
