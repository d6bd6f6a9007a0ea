"""Reading and checking the ground-truth files of the evaluations (COCO, LVIS, MDETR grounding).

Every check runs when the file is read, before any image is loaded or any inference runs, so that
a broken file fails in a second rather than after hours of inference (pycocotools itself accepts
most of these mistakes silently and then reports wrong numbers, or fails only when scoring).
Errors name the file, the entry (its index and ``id``) and the field.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from glip.data.validation import checked_bbox, entry_name


def read_json_file(path: str | Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``; errors name the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read {what} {path}: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object with {what}, got {type(data).__name__}")
    return data


def require_fields(path: str | Path, data: dict[str, Any], section: str, keys: Sequence[str]) -> None:
    """Every entry of ``data[section]`` has ``keys``; the error names the file, entry and key."""
    entries = data.get(section)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: missing top-level field {section!r}" if entries is None
                         else f"{path}: {section!r} must be a list")
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: {section}[{index}] is not an object")
        for key in keys:
            if key not in entry:
                raise ValueError(f"{path}: {section}[{index}] has no {key!r}"
                                 + (f" (id {entry['id']!r})" if "id" in entry else ""))


def unique_ids(path: str | Path, entries: Sequence[dict[str, Any]], section: str) -> set[Any]:
    """The ``id`` of every entry, which must be unique (pycocotools keeps the last of duplicates,
    silently dropping the ground truth of the others)."""
    seen: dict[Any, int] = {}
    for index, entry in enumerate(entries):
        if entry["id"] in seen:
            raise ValueError(f"{path}: {section}[{index}] repeats id {entry['id']!r} of {section}[{seen[entry['id']]}]")
        seen[entry["id"]] = index
    return set(seen)


def check_annotations(path: str | Path, data: dict[str, Any], with_categories: bool = True) -> None:
    """Unique image (and category) ids; every annotation on a known image (and category) with a
    box of 4 finite numbers and positive width and height (:func:`glip.data.validation.checked_bbox`).
    The fields themselves are checked present by :func:`require_fields` beforehand."""
    image_ids = unique_ids(path, data["images"], "images")
    category_ids = unique_ids(path, data["categories"], "categories") if with_categories else set()
    for index, annotation in enumerate(data["annotations"]):
        where = entry_name(path, "annotations", index, annotation)
        if annotation["image_id"] not in image_ids:
            raise ValueError(f"{where}: field 'image_id' names image {annotation['image_id']!r}, "
                             "which is not in 'images'")
        if with_categories and annotation["category_id"] not in category_ids:
            raise ValueError(f"{where}: field 'category_id' names category {annotation['category_id']!r}, "
                             "which is not in 'categories'")
        # pycocotools would score an empty box (it can never be matched): not accepted here.
        checked_bbox(annotation, where, allow_empty=False)


def read_coco(annotation_file: str | Path) -> dict[str, Any]:
    """A COCO detection file, checked for everything the evaluation reads (:func:`check_annotations`)."""
    data = read_json_file(annotation_file, "COCO annotations")
    require_fields(annotation_file, data, "images", ("id", "file_name"))
    require_fields(annotation_file, data, "categories", ("id", "name"))
    require_fields(annotation_file, data, "annotations", ("image_id", "category_id", "bbox"))
    if not data["categories"]:
        raise ValueError(f"{annotation_file}: 'categories' is empty")
    check_annotations(annotation_file, data)
    return data


def check_image_files(paths: Sequence[Path], annotation_file: str | Path) -> None:
    """Fail before any inference when an image of the annotation file is missing."""
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of the {len(paths)} images of {annotation_file} are missing, "
                                f"e.g. {missing[0]}")
