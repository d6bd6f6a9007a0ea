"""LVIS: fixed AP against hand-computed and ``lvis``-package numbers; chunked prompts end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from eval_fixtures import lvis_dict, write_lvis_many_categories
from glip.evaluation.inference import detect_per_prompt
from glip.evaluation.lvis import (
    METRIC_NAMES,
    CategoryFloor,
    evaluate_lvis,
    lvis_image_path,
    lvis_metrics,
    read_lvis,
    top_k_per_category,
)
from glip.evaluation.prompts import build_category_prompts, category_texts, clean_name
from glip.pipeline import merge_detections


def _one_image(not_exhaustive: list[int]) -> dict:
    """One image; category 1 (rare) present with one box, 2 (frequent) verified absent, 3 unknown."""
    return {
        "images": [{"id": 1, "file_name": "a.png", "height": 100, "width": 100, "neg_category_ids": [2],
                    "not_exhaustive_category_ids": not_exhaustive}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600}],
        "categories": [{"id": 1, "name": "a", "frequency": "r"}, {"id": 2, "name": "b", "frequency": "f"},
                       {"id": 3, "name": "c", "frequency": "c"}],
    }


def test_fixed_ap_by_hand() -> None:
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [60, 60, 30, 30], "score": 0.95},  # false positive
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.9},  # exact hit
        {"image_id": 1, "category_id": 3, "bbox": [0, 0, 20, 20], "score": 0.99},  # no verdict on image: dropped
        {"image_id": 1, "category_id": 2, "bbox": [0, 0, 20, 20], "score": 0.5},  # verified absent: no GT, no AP
    ]
    # Precision 1/2 at recall 1 for every IoU threshold: AP 0.5; only the rare category has ground truth.
    metrics = lvis_metrics(_one_image([]), results).metrics
    assert metrics["AP"] == pytest.approx(0.5) and metrics["APr"] == pytest.approx(0.5)
    assert metrics["APc"] == metrics["APf"] == -1.0
    # Not exhaustively annotated: the unmatched detection is ignored, the hit alone gives AP 1.
    assert lvis_metrics(_one_image([1]), results).metrics["AP"] == pytest.approx(1.0)
    # Only the best detection per category survives top_k=1: the false positive.
    assert lvis_metrics(_one_image([]), results, top_k=1).metrics["AP"] == 0.0


# Computed with the lvis package 0.5.3 (LVISResults(max_dets=-1) + LVISEval with params.max_dets = -1 on
# the top-k pooled results, as the official LvisEvaluatorFixedAP; numpy's np.float alias restored for it).
LVIS_PACKAGE = {
    10000: {"AP": 0.206598, "AP50": 0.642244, "AP75": 0.048345, "APs": 0.175127, "APm": 0.575248, "APl": -1.0,
            "APr": 0.289109, "APc": 0.210433, "APf": 0.161507},
    3: {"AP": 0.139802, "AP50": 0.384158, "AP75": 0.025743, "APs": 0.107129, "APm": 0.275248, "APl": -1.0,
        "APr": 0.264356, "APc": 0.10099, "APf": 0.116337},
}


@pytest.mark.parametrize("top_k", sorted(LVIS_PACKAGE))


def test_fixed_ap_equals_the_lvis_package(top_k: int) -> None:
    data, results = lvis_dict(seed=0)
    original = json.dumps(results)
    metrics = lvis_metrics(data, results, top_k).metrics
    assert metrics == pytest.approx(LVIS_PACKAGE[top_k], abs=5e-7)
    assert json.dumps(results) == original  # the records are not modified


def test_dropping_below_the_running_floor_keeps_the_top_k() -> None:
    generator = np.random.default_rng(0)
    records = [{"image_id": index, "category_id": int(generator.integers(1, 4)),
                "score": float(np.round(generator.uniform(), 2)), "bbox": [0, 0, 1, 1]} for index in range(3000)]
    floor = CategoryFloor(top_k=50)
    kept = [record for record in records if floor.keep(record["category_id"], record["score"])]
    assert len(kept) < len(records) / 2
    assert top_k_per_category(kept, 50) == top_k_per_category(records, 50)  # ties at the cut included


def test_chunked_prompts_cover_every_category_and_map_back(tiny_model, tmp_path: Path) -> None:
    data = read_lvis(write_lvis_many_categories(tmp_path))
    categories = sorted(data["categories"], key=lambda category: category["id"])
    names = [category["name"] for category in categories]
    texts = category_texts(names)
    assert len(tiny_model.tokenizer(". ".join(text.name for text in texts))["input_ids"]) > 256
    prompts = build_category_prompts(texts, tiny_model.tokenizer, 256, 40, names=names)
    assert [prompt.label_ids for prompt in prompts] == [list(range(1, 41)), list(range(41, 81)), list(range(81, 121))]

    encoded = [tiny_model.encode_prompt(prompt) for prompt in prompts]
    batch = tiny_model.preprocess([lvis_image_path(image, tmp_path) for image in data["images"][:2]], 64, 96)
    postprocessor = tiny_model.postprocessor(max_detections=50)
    per_image = detect_per_prompt(tiny_model, batch, encoded, postprocessor)
    assert sum(len(part) for chunks in per_image for part in chunks) > 0
    for chunks in per_image:
        for chunk, prompt in zip(chunks, prompts):
            assert set(chunk.labels.tolist()) <= set(prompt.label_ids)  # each chunk scores its own categories
            for label, phrase in zip(chunk.labels.tolist(), chunk.phrases):
                assert phrase == clean_name(categories[label - 1]["name"]).strip()
    # Merged and cut to the per-image limit, the chunks give what GLIP.detect_batch gives.
    merged = tiny_model.detect_batch(batch.pixels, batch.image_sizes, encoded, postprocessor, batch.original_sizes)
    for chunks, expected in zip(per_image, merged):
        ours = merge_detections(chunks, postprocessor.detections_per_image)
        assert torch.equal(ours.labels, expected.labels) and torch.allclose(ours.boxes, expected.boxes)


def test_lvis_outputs(tiny_model, tmp_path: Path) -> None:
    annotations = write_lvis_many_categories(tmp_path)
    out = tmp_path / "out"
    evaluation = evaluate_lvis(tiny_model, annotations, tmp_path, batch_size=2, min_size=64, max_size=96,
                               max_detections=20, out=out, progress=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(METRIC_NAMES) <= set(metrics) and metrics["images"] == 3
    results = json.loads((out / "results.json").read_text())
    assert results == evaluation.results
    category_ids = {category["id"] for category in json.loads(annotations.read_text())["categories"]}
    assert results and {record["category_id"] for record in results} <= category_ids
    # 20 per image and chunk query, 3 chunks, no per-image cap over the union.
    per_image = [sum(record["image_id"] == image for record in results) for image in (5, 6, 7)]
    assert max(per_image) <= 60
    assert (out / "per_category.md").is_file()


def test_bad_lvis_files_are_named(tmp_path: Path) -> None:
    data, _ = lvis_dict()
    del data["images"][2]["neg_category_ids"]
    path = tmp_path / "lvis.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"lvis.json: images\[2\] has no 'neg_category_ids'"):
        read_lvis(path)
    assert lvis_image_path({"coco_url": "http://images.cocodataset.org/train2017/000000000009.jpg"}, tmp_path) == (
        tmp_path / "train2017" / "000000000009.jpg")
