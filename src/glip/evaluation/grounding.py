"""Phrase grounding Recall@k (any-box protocol of Flickr30K Entities, MDETR's evaluation).

Each phrase of each caption is a query: it counts as found at k when one of its k best boxes has
IoU >= 0.5 with any of the phrase's ground-truth boxes.

:func:`evaluate_grounding` (the Shapes-world evaluation) runs one caption at a time and turns the
decoded boxes' inclusive ends into exclusive ones (+1) before the IoU. The Flickr30K protocol,
batched and sharded, is :mod:`glip.evaluation.flickr`; it compares boxes as the official evaluator
does (no +1).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from glip.modeling.postprocess import Detections
from glip.processing import Prompt, build_grounding_prompt


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of exclusive-end xyxy boxes ``[N, 4]`` x ``[M, 4]``."""
    area1 = (boxes1[:, 2] - boxes1[:, 0]).clamp(min=0) * (boxes1[:, 3] - boxes1[:, 1]).clamp(min=0)
    area2 = (boxes2[:, 2] - boxes2[:, 0]).clamp(min=0) * (boxes2[:, 3] - boxes2[:, 1]).clamp(min=0)
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    return inter / (area1[:, None] + area2[None, :] - inter).clamp(min=1e-9)


def caption_phrases(
    entry: dict[str, Any], annotations: list[dict[str, Any]]
) -> list[tuple[list[list[int]], list[list[float]]]]:
    """Per phrase of a caption that refers to boxes: its character spans and its xywh boxes.

    Phrases are the image entry's ``tokens_positive_eval`` (MDETR), else each annotation's
    ``tokens_positive``; a box belongs to a phrase whose index is its ``phrase_ids`` or one of whose
    spans is among its ``tokens_positive`` (MDETR merges near-identical boxes of several phrases
    into one annotation listing all their spans).
    """
    phrase_spans = entry.get("tokens_positive_eval")
    if phrase_spans is None:
        phrase_spans = [a["tokens_positive"] for a in annotations]
    phrases = []
    for index, spans in enumerate(phrase_spans):
        span_set = {tuple(span) for span in spans}
        boxes = [a["bbox"] for a in annotations
                 if a.get("phrase_ids", None) == index
                 or ("phrase_ids" not in a and span_set & {tuple(s) for s in a.get("tokens_positive", [])})]
        if boxes:
            phrases.append(([list(span) for span in spans], boxes))
    return phrases


def recall_at_k(detections: Detections, label: int, gt_xywh: Sequence[Sequence[float]], ks: Sequence[int]) -> list[bool]:
    """Whether one of the ``k`` best boxes of ``label`` hits a ground-truth box (IoU >= 0.5)."""
    mine = detections.labels == label
    boxes, scores = detections.boxes[mine], detections.scores[mine]
    boxes = boxes[torch.argsort(scores, descending=True)]
    # Inclusive xyxy (legacy +1) -> exclusive; COCO xywh -> exclusive xyxy.
    predicted = torch.cat([boxes[:, :2], boxes[:, 2:] + 1], dim=1)
    truth = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in gt_xywh], dtype=torch.float32)
    hits = (box_iou(predicted, truth) >= 0.5).any(dim=1) if len(predicted) else torch.zeros(0, dtype=torch.bool)
    return [bool(hits[:k].any()) for k in ks]


def evaluate_grounding(
    model,
    annotation_file: str | Path,
    image_dir: str | Path,
    ks: Sequence[int] = (1, 5, 10),
    min_size: int | None = None,
    max_size: int | None = None,
) -> dict[str, float]:
    """Recall@k over all phrases of an MDETR-style grounding file (``R@1``, ``R@5``, ...)."""
    path = Path(annotation_file)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read grounding annotations {path}: {error}") from error
    by_image = defaultdict(list)
    for annotation in data.get("annotations", []):
        by_image[annotation["image_id"]].append(annotation)
    postprocessor = model.postprocessor()
    found = [0] * len(ks)
    total = 0
    for entry in tqdm(data["images"], desc="grounding", unit="caption", leave=False):
        phrases = caption_phrases(entry, by_image[entry["id"]])
        if not phrases:
            continue
        prompt: Prompt = build_grounding_prompt(entry["caption"], [spans for spans, _ in phrases], model.tokenizer,
                                                model.config.language.max_query_len)
        batch = model.preprocess([Path(image_dir) / entry["file_name"]], min_size, max_size)
        with torch.no_grad():
            detections = model.detect_batch(batch.pixels.to(model.device), batch.image_sizes,
                                            [model.encode_prompt(prompt)], postprocessor, batch.original_sizes)[0]
        detections = detections.to("cpu")
        for label, (_, boxes) in enumerate(phrases, start=1):
            total += 1
            for index, hit in enumerate(recall_at_k(detections, label, boxes, ks)):
                found[index] += hit
    return {f"R@{k}": (found[index] / total if total else 0.0) for index, k in enumerate(ks)} | {"phrases": total}
