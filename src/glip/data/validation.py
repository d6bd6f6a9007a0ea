"""Checks of annotation boxes where a file is read, shared by the training data and the evaluations.

A box that cannot be a box (3 numbers, a string, NaN, infinity, a negative width or height) is a
mistake in the file, not an augmentation artefact: it stops the read with an error naming the file,
the entry (its index and ``id``) and the field, before any image is loaded. Degenerate but
well-formed boxes (zero width, reaching outside the image) are the datasets' business: training
clips or drops them and reports how many (official ``BoxList.clip_to_image(remove_empty=True)``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

BoxLayout = Literal["xywh", "xyxy"]


def entry_name(path: Any, section: str, index: int, entry: Any) -> str:
    """``path: annotations[3] (id 17)``: where an entry sits, for error messages."""
    if isinstance(entry, Mapping) and "id" in entry:
        return f"{path}: {section}[{index}] (id {entry['id']!r})"
    return f"{path}: {section}[{index}]"


def checked_bbox(
    record: Mapping[str, Any], where: str, layout: BoxLayout = "xywh", allow_empty: bool = True, key: str = "bbox"
) -> list[float]:
    """The entry's box as 4 floats, checked.

    Args:
        record: an annotation (COCO, MDETR) or an ODVG instance / region.
        where: names the file and the entry (see :func:`entry_name`), prefixed to every error.
        layout: ``xywh`` (COCO: ``[x, y, width, height]``) or ``xyxy`` (ODVG: ``[x1, y1, x2, y2]``).
        allow_empty: accept a zero width or height (training drops such boxes; evaluation, where
            pycocotools would score them, does not accept them).
        key: the field holding the box.

    Raises:
        ValueError: the field is missing, not 4 numbers, not finite, or of negative (with
            ``allow_empty`` False: non-positive) width or height; the message names ``where`` and
            the field.
    """
    if not isinstance(record, Mapping):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if key not in record:
        raise ValueError(f"{where}: missing field {key!r}")
    value = record[key]
    expected = "[x, y, width, height]" if layout == "xywh" else "[x1, y1, x2, y2]"
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 4
        or not all(isinstance(number, (int, float)) and not isinstance(number, bool) for number in value)
    ):
        raise ValueError(f"{where}: field {key!r} must be 4 numbers {expected}, got {value!r}")
    if not all(math.isfinite(number) for number in value):
        raise ValueError(f"{where}: field {key!r} has a NaN or infinite value: {list(value)!r}")
    box = [float(number) for number in value]
    width, height = (box[2], box[3]) if layout == "xywh" else (box[2] - box[0], box[3] - box[1])
    if width < 0 or height < 0 or (not allow_empty and (width == 0 or height == 0)):
        condition = ">= 0" if allow_empty else "> 0"
        raise ValueError(
            f"{where}: field {key!r} {list(value)!r} has width {width:g} and height {height:g}; both must be {condition}"
        )
    return box


__all__ = ["BoxLayout", "checked_bbox", "entry_name"]
