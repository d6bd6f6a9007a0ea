"""Phrase grounding Recall@k on Flickr30K Entities in MDETR's format (``glip eval flickr``).

The annotation file is an MDETR grounding JSON (``final_flickr_separateGT_val.json`` /
``_test.json``): one image entry per caption (``caption``, ``tokens_positive_eval``: the character
spans of each phrase that has boxes), annotations with ``bbox`` and ``tokens_positive`` (the spans
of the phrases a box belongs to). As the official evaluation (MDETR's ``flickr_eval.py``, run by
GLIP with TEST.EVAL_TASK grounding):

* each caption is its own prompt; its phrases are the labels (label ``i`` = phrase ``i``);
* a phrase is found at ``k`` when one of its ``k`` best-scored boxes has IoU >= 0.5 with any of
  its ground-truth boxes (any-box protocol); R@k is the fraction of phrases found;
* boxes are compared as decoded, ``(x1, y1, x2, y2)`` in original pixels, against the ground
  truth ``(x, y, x + w, y + h)`` (the official evaluator applies no ``+1``);
* up to 100 detections per caption (DETECTIONS_PER_IMG), without the head's 80-phrase limit
  (official TEST.MDETR_STYLE_AGGREGATE_CLASS_NUM 100).

Several captions share a batch (the official run uses one image per batch: ``--batch-size 1``
reproduces its padding exactly).

Outputs (``out=``): ``results.json``, one record per evaluated caption::

    {"image_id": 7, "file_name": "3359636318.jpg", "original_img_id": 3359636318, "sentence_id": 0,
     "phrases": [{"phrase": "two people", "spans": [[0, 10]],
                  "boxes": [[x1, y1, x2, y2], ...], "scores": [0.83, ...]}]}

with the ``max(ks)`` best boxes of each phrase by descending score; ``metrics.json`` holds ``R@1``,
``R@5``, ``R@10`` (fractions), ``phrases``, ``captions`` and ``fingerprint``. There are no AP keys:
the protocol defines none.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from glip.evaluation.annotations import check_annotations, check_image_files, read_json_file, require_fields
from glip.evaluation.coco import write_evaluation
from glip.evaluation.grounding import box_iou, caption_phrases
from glip.evaluation.inference import detect_with_captions
from glip.evaluation.runner import (
    RunOptions,
    file_digest,
    finished_metrics,
    fingerprint_digest,
    model_digest,
    run_batches,
)
from glip.modeling.postprocess import GroundingPostProcessor
from glip.processing import Prompt, build_grounding_prompt

logger = logging.getLogger(__name__)

RECALL_KS = (1, 5, 10)
IOU_THRESHOLD = 0.5


@dataclass
class FlickrEvaluation:
    """``R@k`` (fractions) with the phrase and caption counts, and the per-caption records."""

    metrics: dict[str, float]
    results: list[dict[str, Any]] = field(default_factory=list)


def read_grounding(annotation_file: str | Path) -> dict[str, Any]:
    """An MDETR-style grounding file, checked for what the evaluation reads."""
    data = read_json_file(annotation_file, "grounding annotations")
    require_fields(annotation_file, data, "images", ("id", "file_name", "caption"))
    require_fields(annotation_file, data, "annotations", ("image_id", "bbox"))
    check_annotations(annotation_file, data, with_categories=False)
    return data


def phrase_hits(boxes_xyxy: Sequence[Sequence[float]], truth_xywh: Sequence[Sequence[float]],
                ks: Sequence[int]) -> list[bool]:
    """Whether one of the first ``k`` boxes (best first) has IoU >= 0.5 with a ground-truth box."""
    if not boxes_xyxy:
        return [False] * len(ks)
    predicted = torch.tensor(boxes_xyxy, dtype=torch.float64)
    truth = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in truth_xywh], dtype=torch.float64)
    hits = (box_iou(predicted, truth) >= IOU_THRESHOLD).any(dim=1)  # [N]
    return [bool(hits[:k].any()) for k in ks]


def recall_metrics(results: Sequence[dict[str, Any]], truth: Sequence[Sequence[list[list[float]]]],
                   ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """``R@k`` over all phrases of ``results`` (``truth[i][j]``: the boxes of phrase ``j`` of record ``i``)."""
    found = [0] * len(ks)
    total = 0
    for record, phrase_boxes in zip(results, truth):
        for phrase, boxes in zip(record["phrases"], phrase_boxes):
            total += 1
            for index, hit in enumerate(phrase_hits(phrase["boxes"], boxes, ks)):
                found[index] += hit
    return {f"R@{k}": (found[index] / total if total else 0.0) for index, k in enumerate(ks)} | {
        "phrases": total, "captions": len(results)}


def evaluate_flickr(
    model,
    annotation_file: str | Path,
    image_dir: str | Path,
    batch_size: int = 8,
    min_size: int | None = None,
    max_size: int | None = None,
    *,
    ks: Sequence[int] = RECALL_KS,
    max_detections: int | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    run: RunOptions | None = None,
) -> FlickrEvaluation | None:
    """Recall@k of ``model`` on an MDETR-style grounding file; writes ``out/`` if given.

    Args:
        model: a :class:`glip.GLIP`.
        annotation_file: MDETR grounding JSON (Flickr30K Entities val or test).
        image_dir: folder of the images' ``file_name`` (``flickr30k_images``).
        batch_size: captions per forward pass.
        min_size / max_size: test resize (default: the model config's).
        ks: the ``k`` of ``R@k``.
        max_detections: detections kept per caption (default: the config's, official 100).
        out / resume / progress: output folder, resumption, progress bar (or ``run`` for all).

    Returns:
        The evaluation on process 0; None on the other processes of a distributed run.
    """
    run = run or RunOptions(batch_size, Path(out) if out is not None else None, resume, progress=progress)
    data = read_grounding(annotation_file)
    image_dir = Path(image_dir)
    by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for annotation in data["annotations"]:
        by_image[annotation["image_id"]].append(annotation)

    entries, prompts, truth = [], [], []
    max_len = model.config.language.max_query_len
    for index, entry in enumerate(data["images"]):
        phrases = caption_phrases(entry, by_image[entry["id"]])
        if not phrases:  # the official evaluator skips captions without a grounded phrase
            continue
        try:
            prompt = build_grounding_prompt(entry["caption"], [spans for spans, _ in phrases], model.tokenizer, max_len)
        except ValueError as error:
            raise ValueError(f"{annotation_file}: images[{index}] (id {entry['id']}): {error}") from error
        entries.append(entry)
        prompts.append(prompt)
        truth.append([boxes for _, boxes in phrases])
    if not entries:
        raise ValueError(f"{annotation_file}: no caption has a phrase with boxes")
    paths = [image_dir / entry["file_name"] for entry in entries]
    check_image_files(sorted(set(paths)), annotation_file)

    settings = model.config.postprocess
    if max_detections is not None:
        settings = dataclasses.replace(settings, detections_per_image=max_detections)
    postprocessor = GroundingPostProcessor.from_config(settings, num_label_columns=None)
    top = max(ks)

    def predict(indices: list[int]) -> list[dict[str, Any]]:
        batch = model.preprocess([paths[index] for index in indices], min_size, max_size)
        detections = detect_with_captions(model, batch, [prompts[index] for index in indices], postprocessor)
        return [_caption_record(entries[index], prompts[index], image_detections, top)
                for index, image_detections in zip(indices, detections)]

    fingerprint = {
        "protocol": "flickr", "annotations": file_digest(annotation_file), "images": str(image_dir.resolve()),
        "model": model_digest(model), "min_size": min_size, "max_size": max_size,
        "max_detections": settings.detections_per_image, "ks": list(ks),
    }
    done = finished_metrics(fingerprint, run)
    if done is not None:
        logger.info("flickr: %s is finished already", run.out)
        return FlickrEvaluation({key: value for key, value in done.items() if key != "fingerprint"})
    results = run_batches([entry["id"] for entry in entries], predict, fingerprint, run, desc="flickr")
    if results is None:
        return None
    metrics = recall_metrics(results, truth, ks)
    if run.out is not None:
        write_evaluation(run.out, results, {**metrics, "fingerprint": fingerprint_digest(fingerprint, run)}, None, "")
    return FlickrEvaluation(metrics, results)


def _caption_record(entry: dict[str, Any], prompt: Prompt, detections, top: int) -> dict[str, Any]:
    """One ``results.json`` record: per phrase, its ``top`` best boxes (detections are sorted)."""
    record: dict[str, Any] = {"image_id": entry["id"], "file_name": entry["file_name"]}
    for key in ("original_img_id", "sentence_id"):
        if key in entry:
            record[key] = entry[key]
    phrases = []
    for label, phrase, spans in zip(prompt.label_ids, prompt.phrases, prompt.spans):
        mine = detections.labels == label
        phrases.append({"phrase": phrase, "spans": [list(span) for span in spans],
                        "boxes": detections.boxes[mine][:top].tolist(),
                        "scores": detections.scores[mine][:top].tolist()})
    record["phrases"] = phrases
    return record
