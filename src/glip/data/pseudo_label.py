"""Pseudo-labelling captions with a teacher GLIP (the paper's self-training on image-text pairs).

For each image-caption pair the caption's noun phrases are grounded by the teacher; every box of
a phrase scoring at least ``threshold`` becomes an MDETR-style grounding annotation, so the output
trains a student exactly like gold grounding data (``kind: grounding`` in a recipe).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from glip import quirks
from glip.files import write_json_atomic
from glip.processing import load_image

if TYPE_CHECKING:  # glip.pipeline imports the whole model: only when it is called
    from glip.pipeline import GLIP

logger = logging.getLogger(__name__)

PhraseExtractor = Callable[[str], list[tuple[int, int]]]


def shapes_world_phrases(caption: str) -> list[tuple[int, int]]:
    """Noun phrases of Shapes-world captions (a closed vocabulary; no NLP package needed).

    ``"the red circle left of a square"`` -> spans of ``the red circle`` and ``a square``.
    """
    from glip.data.shapes_world import COLOURS, SHAPES, TRANSFER_SHAPES

    colours = "|".join(COLOURS)
    nouns = "|".join([*SHAPES, *TRANSFER_SHAPES, "shape"])
    pattern = re.compile(rf"\b(?:the|an?)\s+(?:(?:small|large)\s+)?(?:(?:{colours})\s+)?(?:{nouns})\b")
    return [match.span() for match in pattern.finditer(caption)]


def read_caption_pairs(path: str | Path) -> list[dict[str, str]]:
    """``[{file_name, caption}, ...]`` with the offending record named on a problem."""
    path = Path(path)
    try:
        records = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read captions {path}: {error}") from error
    if not isinstance(records, list):
        raise ValueError(f"{path}: expected a list of {{file_name, caption}} records")
    for index, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get("file_name"), str) \
                or not isinstance(record.get("caption"), str):
            raise ValueError(f"{path}: record {index} needs string fields file_name and caption")
    return records


def pseudo_label(
    model: GLIP,
    captions_file: str | Path,
    image_dir: str | Path,
    out_file: str | Path,
    threshold: float = 0.5,
    phrase_extractor: PhraseExtractor | None = None,
) -> dict[str, int]:
    """Ground every caption's phrases with ``model`` and write an MDETR-style grounding JSON.

    Args:
        model: the teacher (:class:`glip.GLIP`).
        captions_file: ``[{file_name, caption}]`` JSON (e.g. the Shapes world's captions.json).
        image_dir: folder of the file names.
        out_file: grounding JSON to write (atomically).
        threshold: keep boxes scoring at least this.
        phrase_extractor: caption -> phrase spans; default NLTK noun phrases
            (:func:`glip.pipeline.noun_phrase_spans`).

    Returns:
        Counts: captions read, images skipped, phrases, boxes written.
    """
    from glip.pipeline import noun_phrase_spans

    extract = phrase_extractor or noun_phrase_spans
    records = read_caption_pairs(captions_file)
    images, annotations = [], []
    stats = {"captions": len(records), "skipped_images": 0, "phrases": 0, "boxes": 0}
    for index, record in enumerate(tqdm(records, desc="pseudo-label", unit="caption")):
        spans = extract(record["caption"])
        if not spans:
            continue
        try:
            image = load_image(Path(image_dir) / record["file_name"])
        except (OSError, ValueError) as error:
            logger.error("%s", error)
            stats["skipped_images"] += 1
            continue
        detections = model.predict(image, caption=record["caption"], spans=spans, threshold=threshold)
        stats["phrases"] += len(spans)
        image_id = index + 1
        images.append({
            "id": image_id, "file_name": record["file_name"], "caption": record["caption"],
            "height": image.height, "width": image.width, "original_img_id": image_id,
            "tokens_positive_eval": [[list(span)] for span in spans],
        })
        annotations.extend(_grounding_annotations(detections, spans, image_id, threshold, len(annotations) + 1))
    stats["boxes"] = len(annotations)
    write_json_atomic(Path(out_file), {
        "images": images, "annotations": annotations,
        "categories": [{"id": 1, "name": "object"}],
        "info": {"pseudo_labelled": True, "threshold": threshold, **stats},
    })
    return stats


def _grounding_annotations(
    detections: Any, spans: list[tuple[int, int]], image_id: int, threshold: float, first_id: int
) -> list[dict[str, Any]]:
    """MDETR annotations of the teacher's boxes scoring at least ``threshold``.

    Args:
        detections: ``boxes [N, 4]`` inclusive xyxy in image pixels, ``scores [N]``, ``labels [N]``
            (1-based index of the phrase in ``spans``).
        spans: the caption's phrase spans.
        image_id: the grounding image entry.
        first_id: the id of the first annotation.
    """
    annotations = []
    for box, score, label in zip(detections.boxes.tolist(), detections.scores.tolist(), detections.labels.tolist()):
        if score < threshold:  # whatever the teacher's own thresholding (e.g. per-phrase rules)
            continue
        x1, y1, x2, y2 = box
        # Inclusive corners -> COCO xywh with the legacy +1 width (quirks.TO_REMOVE).
        width, height = x2 - x1 + quirks.TO_REMOVE, y2 - y1 + quirks.TO_REMOVE
        annotations.append({
            "id": first_id + len(annotations), "image_id": image_id, "category_id": 1, "iscrowd": 0,
            "bbox": [x1, y1, width, height], "area": width * height,
            "tokens_positive": [list(spans[label - 1])], "phrase_ids": label - 1, "score": score,
        })
    return annotations
