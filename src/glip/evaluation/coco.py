"""COCO-style detection evaluation of a GLIP model on any COCO JSON.

The prompt is the categories' names (in id order) as a class list; labels map back to category
ids; boxes are written with the official ``+1`` width (``Detections.to_coco``) and scored with
pycocotools.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm


logger = logging.getLogger(__name__)

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@dataclass
class CocoEvaluation:
    """Metrics (``AP``... in percent-free fractions), per-category AP and the raw result records."""

    metrics: dict[str, float]
    per_category_ap: dict[str, float] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)


def read_coco(annotation_file: str | Path) -> dict[str, Any]:
    path = Path(annotation_file)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read COCO annotations {path}: {error}") from error
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{path}: missing top-level field {key!r}")
    return data


def predict_coco_images(
    model,
    images: Sequence[dict[str, Any]],
    image_dir: str | Path,
    class_names: Sequence[str],
    label_to_category: dict[int, int],
    batch_size: int = 8,
    min_size: int | None = None,
    max_size: int | None = None,
    max_detections: int | None = None,
    desc: str = "eval",
) -> list[dict[str, Any]]:
    """COCO result records for ``images`` (COCO image entries) with a class-list prompt.

    The image backbone runs once per batch; long class lists are chunked (labels stay global).
    """
    image_dir = Path(image_dir)
    prompts = [model.encode_prompt(prompt) for prompt in model.build_prompts(classes=list(class_names))]
    postprocessor = model.postprocessor(max_detections=max_detections)
    results: list[dict[str, Any]] = []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch", leave=False):
        entries = images[start : start + batch_size]
        try:
            batch = model.preprocess([image_dir / entry["file_name"] for entry in entries], min_size, max_size)
        except (OSError, ValueError) as error:
            raise ValueError(f"{image_dir}: cannot read an image of batch starting at {entries[0]['file_name']}: "
                             f"{error}") from error
        with torch.no_grad():
            detections = model.detect_batch(batch.pixels.to(model.device), batch.image_sizes, prompts, postprocessor,
                                            batch.original_sizes)
        for entry, image_detections in zip(entries, detections):
            results.extend(image_detections.to("cpu").to_coco(entry["id"], label_to_category))
    return results


def coco_metrics(annotation_file: str | Path, results: list[dict[str, Any]],
                 category_ids: Sequence[int] | None = None) -> CocoEvaluation:
    """pycocotools box AP of ``results`` (optionally restricted to ``category_ids``)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(str(annotation_file))
        if not results:
            return CocoEvaluation({name: 0.0 for name in METRIC_NAMES}, {}, results)
        detections = ground_truth.loadRes(results)
        evaluator = COCOeval(ground_truth, detections, "bbox")
        if category_ids is not None:
            evaluator.params.catIds = list(category_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    metrics = {name: float(value) for name, value in zip(METRIC_NAMES, evaluator.stats[:6])}
    per_category = {}
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    for k, category_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        per_category[ground_truth.cats[category_id]["name"]] = float(values.mean()) if values.size else float("nan")
    return CocoEvaluation(metrics, per_category, results)


def evaluate_coco(
    model,
    annotation_file: str | Path,
    image_dir: str | Path,
    batch_size: int = 8,
    min_size: int | None = None,
    max_size: int | None = None,
    category_ids: Sequence[int] | None = None,
) -> CocoEvaluation:
    """Detect every category of a COCO file in its images and score with pycocotools."""
    data = read_coco(annotation_file)
    categories = sorted(data["categories"], key=lambda category: category["id"])
    names = [category["name"] for category in categories]
    label_to_category = {index + 1: category["id"] for index, category in enumerate(categories)}
    results = predict_coco_images(model, data["images"], image_dir, names, label_to_category, batch_size,
                                  min_size, max_size)
    return coco_metrics(annotation_file, results, category_ids)
