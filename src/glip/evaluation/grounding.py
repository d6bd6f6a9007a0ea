"""Phrase grounding Recall@k (any-box protocol of Flickr30K Entities, MDETR's evaluation).

Each phrase of each caption is a query: it counts as found at k when one of its k best boxes has
IoU >= 0.5 with any of the phrase's ground-truth boxes. :class:`GroundingProtocol` runs it on an
MDETR-style grounding file, several captions per forward pass (:func:`evaluate`).

Two box conventions: the Flickr30K protocol (:mod:`glip.evaluation.flickr`) compares the decoded
boxes as the official evaluator does (no +1); :func:`evaluate_grounding` (the Shapes-world
evaluation) turns their inclusive ends into exclusive ones (+1) first.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from glip.evaluation.annotations import check_annotations, check_image_files, read_json_file, require_fields
from glip.evaluation.coco import write_evaluation
from glip.evaluation.inference import detect_with_captions
from glip.evaluation.protocol import evaluate, resolve_test_size
from glip.evaluation.runner import RunOptions, file_digest, model_digest
from glip.modeling.postprocess import Detections, GroundingPostProcessor
from glip.processing import Prompt, build_grounding_prompt

RECALL_KS = (1, 5, 10)
IOU_THRESHOLD = 0.5


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


def read_grounding(annotation_file: str | Path) -> dict[str, Any]:
    """An MDETR-style grounding file, checked for what the evaluation reads."""
    data = read_json_file(annotation_file, "grounding annotations")
    require_fields(annotation_file, data, "images", ("id", "file_name", "caption"))
    require_fields(annotation_file, data, "annotations", ("image_id", "bbox"))
    check_annotations(annotation_file, data, with_categories=False)
    return data


def phrase_hits(boxes_xyxy: Sequence[Sequence[float]], truth_xywh: Sequence[Sequence[float]],
                ks: Sequence[int], inclusive_ends: bool = False) -> list[bool]:
    """Whether one of the first ``k`` boxes (best first) has IoU >= 0.5 with a ground-truth box.

    ``inclusive_ends``: the boxes' ends are inclusive pixels (legacy +1 width) and become exclusive
    before the IoU (the Shapes-world convention); the official Flickr30K evaluator adds nothing.
    """
    if not boxes_xyxy:
        return [False] * len(ks)
    predicted = torch.tensor(boxes_xyxy, dtype=torch.float64)
    if inclusive_ends:
        predicted[:, 2:] += 1
    truth = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in truth_xywh], dtype=torch.float64)
    hits = (box_iou(predicted, truth) >= IOU_THRESHOLD).any(dim=1)  # [N]
    return [bool(hits[:k].any()) for k in ks]


def recall_metrics(results: Sequence[dict[str, Any]], truth: Sequence[Sequence[list[list[float]]]],
                   ks: Sequence[int] = RECALL_KS, inclusive_ends: bool = False) -> dict[str, float]:
    """``R@k`` over all phrases of ``results`` (``truth[i][j]``: the boxes of phrase ``j`` of record ``i``)."""
    found = [0] * len(ks)
    total = 0
    for record, phrase_boxes in zip(results, truth):
        for phrase, boxes in zip(record["phrases"], phrase_boxes):
            total += 1
            for index, hit in enumerate(phrase_hits(phrase["boxes"], boxes, ks, inclusive_ends)):
                found[index] += hit
    return {f"R@{k}": (found[index] / total if total else 0.0) for index, k in enumerate(ks)} | {
        "phrases": total, "captions": len(results)}


@dataclass
class GroundingEvaluation:
    """``R@k`` (fractions) with the phrase and caption counts, and the per-caption records."""

    metrics: dict[str, float]
    results: list[dict[str, Any]] = dataclasses.field(default_factory=list)


@dataclass
class GroundingProtocol:
    """Recall@k of captions' phrases (:func:`evaluate`): each caption is its own prompt, scored
    against its own image; several captions share a forward pass."""

    name: str
    model: Any  # a glip.GLIP
    entries: list[dict[str, Any]]  # the image entries of the captions with grounded phrases
    prompts: list[Prompt]
    truth: list[list[list[list[float]]]]  # per caption, per phrase, its xywh boxes
    paths: list[Path]
    postprocessor: GroundingPostProcessor
    test_size: tuple[int, int]
    fingerprint: dict[str, Any]
    ks: Sequence[int] = RECALL_KS
    inclusive_ends: bool = False

    @property
    def keys(self) -> list[Any]:
        return [entry["id"] for entry in self.entries]

    def predict(self, indices: list[int]) -> list[dict[str, Any]]:
        detections = detect_with_captions(self.model, [self.paths[index] for index in indices],
                                          [self.prompts[index] for index in indices], self.postprocessor,
                                          self.test_size)
        return [caption_record(self.entries[index], self.prompts[index], image_detections, max(self.ks))
                for index, image_detections in zip(indices, detections)]

    def score(self, results: list[dict[str, Any]]) -> GroundingEvaluation:
        return GroundingEvaluation(recall_metrics(results, self.truth, self.ks, self.inclusive_ends), results)

    def write(self, out: Path, evaluation: GroundingEvaluation, fingerprint: str) -> None:
        metrics = {**evaluation.metrics, "min_size": self.test_size[0], "max_size": self.test_size[1],
                   "fingerprint": fingerprint}
        write_evaluation(out, evaluation.results, metrics, None, "")

    def restore(self, metrics: dict[str, Any]) -> GroundingEvaluation:
        return GroundingEvaluation({key: value for key, value in metrics.items()
                                    if key not in ("fingerprint", "min_size", "max_size")})


def grounding_protocol(
    model,
    annotation_file: str | Path,
    image_dir: str | Path,
    *,
    min_size: int | None = None,
    max_size: int | None = None,
    max_detections: int | None = None,
    ks: Sequence[int] = RECALL_KS,
    inclusive_ends: bool = False,
    name: str = "flickr",
) -> GroundingProtocol:
    """A :class:`GroundingProtocol` on an MDETR-style grounding file (checked here, as its images,
    before any inference); captions without a grounded phrase are skipped, as the official evaluator does."""
    data = read_grounding(annotation_file)
    image_dir = Path(image_dir)
    by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for annotation in data["annotations"]:
        by_image[annotation["image_id"]].append(annotation)
    entries, prompts, truth = [], [], []
    for index, entry in enumerate(data["images"]):
        phrases = caption_phrases(entry, by_image[entry["id"]])
        if not phrases:
            continue
        try:
            prompts.append(build_grounding_prompt(entry["caption"], [spans for spans, _ in phrases], model.tokenizer,
                                                  model.config.language.max_query_len))
        except ValueError as error:
            raise ValueError(f"{annotation_file}: images[{index}] (id {entry['id']}): {error}") from error
        entries.append(entry)
        truth.append([boxes for _, boxes in phrases])
    if not entries:
        raise ValueError(f"{annotation_file}: no caption has a phrase with boxes")
    paths = [image_dir / entry["file_name"] for entry in entries]
    check_image_files(sorted(set(paths)), annotation_file)
    # Per-label NMS as the official evaluation, whatever the model's display default: class-agnostic
    # NMS lets one phrase's box suppress another phrase's (R@5 of GLIP-Nano fell from 0.99 to 0.95).
    settings = dataclasses.replace(model.config.postprocess, class_agnostic_nms=False)
    if max_detections is not None:
        settings = dataclasses.replace(settings, detections_per_image=max_detections)
    test_size = resolve_test_size(model, min_size, max_size)
    fingerprint = {
        "protocol": name, "annotations": file_digest(annotation_file), "images": str(image_dir.resolve()),
        "model": model_digest(model), "min_size": test_size[0], "max_size": test_size[1],
        "max_detections": settings.detections_per_image, "ks": list(ks), "inclusive_ends": inclusive_ends,
    }
    # No cap on the phrases of a caption (official TEST.MDETR_STYLE_AGGREGATE_CLASS_NUM 100).
    return GroundingProtocol(name, model, entries, prompts, truth, paths,
                             GroundingPostProcessor.from_config(settings, num_label_columns=None), test_size,
                             fingerprint, ks, inclusive_ends)


def caption_record(entry: dict[str, Any], prompt: Prompt, detections: Detections, top: int) -> dict[str, Any]:
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


def evaluate_grounding(
    model,
    annotation_file: str | Path,
    image_dir: str | Path,
    ks: Sequence[int] = RECALL_KS,
    min_size: int | None = None,
    max_size: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, float]:
    """Recall@k over all phrases of an MDETR-style grounding file (``R@1``, ``R@5``, ..., ``phrases``,
    ``captions``) with the Shapes-world box convention (inclusive ends, +1)."""
    protocol = grounding_protocol(model, annotation_file, image_dir, min_size=min_size, max_size=max_size, ks=ks,
                                  inclusive_ends=True, name="grounding")
    return evaluate(protocol, RunOptions(batch_size, progress=progress)).metrics
