"""The task's data: a COCO detection file with its image folder, read and checked once, and the
training file one run trains on (categories renamed to their prompt texts, :mod:`.prompts`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glip.evaluation.coco import read_coco
from glip.transfer.prompts import sorted_categories


@dataclass(frozen=True)
class CocoSplit:
    """A COCO detection file and the folder its image file names are relative to."""

    annotations: Path
    images: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "annotations", Path(self.annotations))
        object.__setattr__(self, "images", Path(self.images))

    def check(self, name: str) -> None:
        """Fail early, naming the ``name`` argument, when a path is missing."""
        if not self.annotations.is_file():
            raise FileNotFoundError(f"{name}: annotation file {self.annotations} does not exist")
        if not self.images.is_dir():
            raise FileNotFoundError(f"{name}: image folder {self.images} does not exist")


def read_detection_file(path: str | Path) -> dict[str, Any]:
    """A COCO detection file, checked enough for sampling and prompting; errors name the file."""
    data = read_coco(path)
    categories, images, annotations = data["categories"], data["images"], data["annotations"]
    if not isinstance(categories, list) or not categories:
        raise ValueError(f"{path}: 'categories' must be a non-empty list")
    seen: set[int] = set()
    for index, category in enumerate(categories):
        if (not isinstance(category, dict) or isinstance(category.get("id"), bool)
                or not isinstance(category.get("id"), int) or not isinstance(category.get("name"), str)
                or not category["name"].strip()):
            raise ValueError(f"{path}: categories[{index}] needs an integer 'id' and a non-empty 'name'")
        if category["id"] in seen:
            raise ValueError(f"{path}: categories[{index}]: duplicate category id {category['id']}")
        seen.add(category["id"])
    if not isinstance(images, list) or not all(isinstance(i, dict) and "id" in i and "file_name" in i
                                               for i in images):
        raise ValueError(f"{path}: 'images' must be a list of objects with 'id' and 'file_name'")
    for index, annotation in enumerate(annotations if isinstance(annotations, list) else [None]):
        if not isinstance(annotation, dict) or not {"image_id", "category_id", "bbox"} <= set(annotation):
            raise ValueError(f"{path}: annotations[{index}] needs 'image_id', 'category_id' and 'bbox'")
    return data


def check_same_categories(train: dict[str, Any], test: dict[str, Any], train_file: Path, test_file: Path) -> None:
    """The test file must have the training file's categories (ids and names)."""
    pairs = [[(c["id"], c["name"]) for c in sorted_categories(data["categories"])] for data in (train, test)]
    if pairs[0] != pairs[1]:
        raise ValueError(f"{test_file}: its categories {pairs[1]} differ from those of the training file "
                         f"{train_file} {pairs[0]}")


def read_task(train: CocoSplit, test: CocoSplit | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The training (and test) file, checked: paths exist, files are well formed, same categories.

    Raises:
        FileNotFoundError / ValueError: naming ``--train`` / ``--test`` or the offending file.
    """
    train.check("--train")
    train_data = read_detection_file(train.annotations)
    if test is None:
        return train_data, None
    test.check("--test")
    test_data = read_detection_file(test.annotations)
    check_same_categories(train_data, test_data, train.annotations, test.annotations)
    return train_data, test_data


def annotated_images(data: dict[str, Any]) -> int:
    """Images with at least one box (the others give no training signal)."""
    annotated = {annotation["image_id"] for annotation in data["annotations"]}
    return sum(1 for image in data["images"] if image["id"] in annotated)


def training_file(data: dict[str, Any], texts: Sequence[str]) -> dict[str, Any]:
    """The COCO dict to train on: categories in id order, each named by its prompt text, so that
    the training captions are the evaluation prompt's class list."""
    renamed = [{**category, "name": text} for category, text in zip(sorted_categories(data["categories"]), texts)]
    return {**data, "categories": renamed}


__all__ = [
    "CocoSplit",
    "annotated_images",
    "check_same_categories",
    "read_detection_file",
    "read_task",
    "training_file",
]
