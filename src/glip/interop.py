"""Detections and models in other libraries' types and formats.

* **supervision** (``glip[supervision]``): :func:`to_supervision` / :func:`from_supervision`, so
  that supervision's annotators, trackers, zones and dataset tools take GLIP's detections.
* **COCO results** (pycocotools' ``COCO.loadRes``): :func:`from_coco` reads one image's result
  records back (``Detections.to_coco`` writes them); :func:`coco_files_from_report` turns
  ``glip detect``'s report into a results list plus an images-and-categories file to load it with.
* Hugging Face Hub model repos: :mod:`glip.hub.repos`.

Box conventions. :class:`~glip.modeling.postprocess.Detections` keeps the official legacy
*inclusive* boxes: ``[x1, x2]`` covers ``x2 - x1 + 1`` pixels (:data:`glip.quirks.TO_REMOVE`).
Other libraries measure boxes as continuous coordinates, width ``x2 - x1`` (supervision's areas
and IoU, COCO's ``[x, y, w, h]``). Both conversions hand over the same box: supervision gets
``(x1, y1, x2 + 1, y2 + 1)`` and COCO gets ``w = x2 - x1 + 1`` (what the official COCO evaluation
writes), so a box read from either one is the box COCO would score.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from glip import quirks

if TYPE_CHECKING:
    import supervision

    from glip.modeling.postprocess import Detections

SUPERVISION_INSTALL = "pip install 'glip[supervision]'"
# Keys of ``supervision.Detections.data``: our phrase, and the field supervision's annotators
# print by default (``supervision.config.CLASS_NAME_DATA_FIELD``).
PHRASE_FIELD = "phrase"
CLASS_NAME_FIELD = "class_name"
# Legacy inclusive box -> continuous box: only the far corner moves.
_TO_CONTINUOUS = (0.0, 0.0, quirks.TO_REMOVE, quirks.TO_REMOVE)
# "org/name" as the Hub spells a repo id (letters, digits, "-", "_", "."; no "..").


# --------------------------------------------------------------------------------------------------
# supervision
# --------------------------------------------------------------------------------------------------


def import_supervision():
    """The ``supervision`` module, or an ImportError saying which extra to install."""
    try:
        with warnings.catch_warnings():
            # supervision warns at import that OpenCV is missing and it falls back to NumPy; the
            # conversions here need neither, and glip does not depend on OpenCV.
            warnings.filterwarnings("ignore", message=r".*OpenCV.*not installed", category=UserWarning)
            import supervision
    except ImportError as error:
        raise ImportError(f"converting to supervision needs the supervision package: {SUPERVISION_INSTALL}") from error
    return supervision


def to_supervision(detections: Detections) -> supervision.Detections:
    """``supervision.Detections`` of the same boxes.

    Returns:
        ``xyxy``: ``[N, 4]`` float64 continuous boxes, ``(x1, y1, x2 + 1, y2 + 1)`` of the legacy
        inclusive ones, so that supervision's width ``x2 - x1`` is the box's width in pixels.
        ``confidence``: ``[N]`` float32 scores. ``class_id``: ``[N]`` int64 0-based positions in
        the prompt's classes (label - 1: ``classes[class_id]`` names the class, as supervision and
        YOLO number classes). ``data["phrase"]`` and ``data["class_name"]`` (what supervision's
        ``LabelAnnotator`` prints): the phrase of each detection, present when the detections
        carry phrases.
    """
    sv = import_supervision()
    boxes = detections.boxes.detach().to("cpu", torch.float64)
    # float64: the +1 shift then loses no bit of a float32 box, and from_supervision gives it back exactly.
    xyxy = (boxes + torch.tensor(_TO_CONTINUOUS, dtype=torch.float64)).numpy().reshape(-1, 4)
    data = {}
    if detections.phrases:  # str arrays, as supervision's own from_* converters make them
        data = {PHRASE_FIELD: np.array(detections.phrases), CLASS_NAME_FIELD: np.array(detections.phrases)}
    return sv.Detections(
        xyxy=xyxy,
        confidence=detections.scores.detach().to("cpu", torch.float32).numpy().reshape(-1),
        class_id=(detections.labels.detach().cpu().to(torch.int64) - 1).numpy().reshape(-1),
        data=data,
    )


def from_supervision(detections: supervision.Detections, classes: Sequence[str] | None = None) -> Detections:
    """Our :class:`~glip.modeling.postprocess.Detections` of ``supervision.Detections``, the inverse
    of :func:`to_supervision`.

    Args:
        detections: boxes ``xyxy`` continuous (width ``x2 - x1``); ``class_id`` 0-based; no
            ``confidence`` (e.g. annotations) gives scores of 1.
        classes: class names indexed by ``class_id``, which then name the phrases; default the
            ``data["phrase"]`` or ``data["class_name"]`` field, else no phrases.

    Returns:
        Detections with legacy inclusive boxes and labels ``class_id + 1``, in the input order.
    """
    from glip.modeling.postprocess import Detections

    if detections.class_id is None:
        raise ValueError("supervision detections without class_id: cannot give labels (set class_id)")
    count = len(detections)
    xyxy = torch.as_tensor(np.asarray(detections.xyxy, dtype=np.float64)).reshape(count, 4)
    boxes = (xyxy - torch.tensor(_TO_CONTINUOUS, dtype=torch.float64)).float()
    confidence = detections.confidence if detections.confidence is not None else np.ones(count)
    scores = torch.as_tensor(np.asarray(confidence, dtype=np.float32)).reshape(count)
    class_ids = np.asarray(detections.class_id).reshape(count).astype(np.int64)
    return Detections(boxes, scores, torch.as_tensor(class_ids + 1), _phrases(detections, class_ids, classes))


def _phrases(detections: supervision.Detections, class_ids: np.ndarray, classes: Sequence[str] | None) -> list[str]:
    """Per detection its phrase: ``classes[class_id]``, else the data field, else none."""
    if classes is not None:
        outside = [int(i) for i in class_ids if not 0 <= i < len(classes)]
        if outside:
            raise ValueError(f"class_id {outside[0]} has no name in classes (0..{len(classes) - 1})")
        return [str(classes[i]) for i in class_ids]
    for field in (PHRASE_FIELD, CLASS_NAME_FIELD):
        if field in detections.data:
            return [str(phrase) for phrase in detections.data[field]]
    return []


# --------------------------------------------------------------------------------------------------
# COCO results
# --------------------------------------------------------------------------------------------------


def from_coco(
    records: Sequence[Mapping[str, Any]],
    image_id: int | None = None,
    categories: Mapping[int, str] | None = None,
    category_to_label: Mapping[int, int] | None = None,
) -> Detections:
    """Detections of one image from COCO result records, the inverse of ``Detections.to_coco``.

    Args:
        records: ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` dicts (a results
            JSON as pycocotools' ``loadRes`` reads it); a record without ``score`` scores 1.
        image_id: keep the records of this image; None: all records, which must be of one image.
        categories: category id -> name, the phrases; None: no phrases.
        category_to_label: category id -> label id; identity when None.

    Returns:
        Boxes ``(x, y, x + w - 1, y + h - 1)`` (legacy inclusive, as ``to_coco`` writes ``w``), in
        the records' order.
    """
    from glip.modeling.postprocess import Detections

    if image_id is not None:
        records = [record for record in records if record.get("image_id") == image_id]
    images = {record.get("image_id") for record in records}
    if len(images) > 1:
        raise ValueError(f"records of {len(images)} images ({sorted(map(str, images))[:3]}...): pass image_id")
    xywh = torch.tensor([[float(value) for value in record["bbox"]] for record in records], dtype=torch.float64)
    xywh = xywh.reshape(len(records), 4)
    corner = xywh[:, :2] + xywh[:, 2:] - quirks.TO_REMOVE  # [N, 2]: inclusive far corner
    boxes = torch.cat((xywh[:, :2], corner), dim=1).float()
    scores = torch.tensor([float(record.get("score", 1.0)) for record in records], dtype=torch.float32)
    category_ids = [int(record["category_id"]) for record in records]
    mapping = category_to_label or {}
    labels = torch.tensor([mapping.get(category, category) for category in category_ids], dtype=torch.int64)
    phrases = [categories[category] for category in category_ids] if categories is not None else []
    return Detections(boxes, scores, labels, phrases)


def coco_files_from_report(
    report: Sequence[Mapping[str, Any]], categories: Mapping[int, str]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """COCO results and the COCO file of their images and categories, from ``glip detect``'s report.

    ``COCO(images_file).loadRes(results_file)`` loads them (pycocotools), e.g. to look at or
    re-score the detections with COCO tools, or to merge them with ground truth by file name.

    Args:
        report: ``detections.json`` entries (``image``, ``width``, ``height``, ``boxes`` legacy
            xyxy, ``scores``, ``labels``; entries with ``error`` have no detections).
        categories: label id -> name (class name or caption phrase); category ids are label ids.

    Returns:
        The results list (image id = position in the report + 1, so ids stay those of the inputs
        when an image fails) and ``{"images", "categories", "annotations": []}``.
    """
    from glip.modeling.postprocess import Detections

    results: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    for image_id, entry in enumerate(report, start=1):
        if "error" in entry:
            continue
        images.append({"id": image_id, "file_name": str(entry["image"]), "width": int(entry["width"]),
                       "height": int(entry["height"])})
        detections = Detections(
            torch.tensor(entry["boxes"], dtype=torch.float32).reshape(-1, 4),
            torch.tensor(entry["scores"], dtype=torch.float32),
            torch.tensor(entry["labels"], dtype=torch.int64),
        )
        results.extend(detections.to_coco(image_id))
    names = [{"id": int(label), "name": str(name)} for label, name in sorted(categories.items())]
    return results, {"images": images, "categories": names, "annotations": []}
