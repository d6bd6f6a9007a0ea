"""k-shot subsets of a COCO detection file, drawn by seed.

Two rules, both seeded the same way (image ids sorted, then shuffled by ``random.Random(seed)``,
then taken greedily in that order) and both keeping every box of a selected image (an unlabelled
object in a training image would teach the model that it is background):

* ``boxes`` (default): exactly ``k`` boxes of every class. Classes are filled one after another,
  the rarest first, each from its images in the seed's order; an image is taken when, with its
  boxes added, no class exceeds ``k``.
* ``images``: the official rule (``data/datasets/coco.py:COCODataset``, DATASETS.FEW_SHOT): an
  image is taken while any of its classes has fewer than ``k`` images, and counts once for each
  class it shows, so a class can end up with more than ``k`` boxes.

The official code leaves the order unshuffled for seed 0 (DATASETS.SHUFFLE_SEED 0 means "no
shuffle"); here every seed shuffles. The official ODinW few-shot files use seeds 3, 30 and 300
(``configs/odinw_13/*.yaml``: ``fewshot_train_shot{k}_seed{3,30,300}.json``). Crowd boxes are never
counted.

Few-shot sets are repeated within an epoch so that a run sees a comparable number of iterations
whatever ``k`` (official ``--custom_shot_and_epoch_and_general_copy``: 1, 3, 5 and 10 shots use
8, 4, 2 and 1 copies, with 200 epochs): :data:`OFFICIAL_COPIES`.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from typing import Any, Literal, get_args

ShotUnit = Literal["boxes", "images"]

# Copies of a k-shot set per epoch (official README, ODinW fine-tuning: "1_200_8", "3_200_4",
# "5_200_2", "10_200_1" = shots_epochs_copies); other k and the full data use 1.
OFFICIAL_COPIES: dict[int, int] = {1: 8, 3: 4, 5: 2, 10: 1}
# Epochs of every official ODinW fine-tuning run (ended earlier by SOLVER.AUTO_TERMINATE_PATIENCE).
OFFICIAL_EPOCHS = 200


class FewShotError(ValueError):
    """A k-shot subset that cannot be drawn; the message names the file, the class and k."""


def copies_for(shots: int | None) -> int:
    """Copies per epoch of a ``shots``-shot set (None: the full data) as in the official runs."""
    return OFFICIAL_COPIES.get(shots, 1) if shots else 1


def sample_few_shot(
    data: Mapping[str, Any], shots: int, seed: int, unit: ShotUnit = "boxes", source: str = "annotations"
) -> dict[str, Any]:
    """The ``shots``-shot subset of a COCO detection dict.

    Args:
        data: COCO JSON (``images``, ``annotations``, ``categories``).
        shots: k >= 1.
        seed: draws the image order; the same seed gives the same subset.
        unit: ``boxes`` (exactly k boxes per class) or ``images`` (the official rule, module doc).
        source: the file's name, for error messages.

    Returns:
        A COCO dict with the selected images (ascending id), all their annotations, the same
        categories and a ``few_shot`` entry recording ``shots``, ``seed``, ``unit``, ``source``.

    Raises:
        FewShotError: a class with fewer than k boxes (images), or no exact k-box draw for the seed.
    """
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise FewShotError(f"shots must be an integer >= 1, got {shots!r}")
    if unit not in get_args(ShotUnit):
        raise FewShotError(f"few-shot unit must be one of {list(get_args(ShotUnit))}, got {unit!r}")
    names = {category["id"]: category["name"] for category in data["categories"]}
    per_image: dict[Any, Counter[int]] = {image["id"]: Counter() for image in data["images"]}
    for index, annotation in enumerate(data["annotations"]):
        if annotation.get("iscrowd", 0):
            continue
        image_id, category_id = annotation.get("image_id"), annotation.get("category_id")
        if image_id not in per_image or category_id not in names:
            raise FewShotError(f"{source}: annotations[{index}] refers to an unknown image or category "
                               f"(image_id {image_id!r}, category_id {category_id!r})")
        per_image[image_id][category_id] += 1

    available: Counter[int] = Counter()
    for counts in per_image.values():
        available.update(counts if unit == "boxes" else Counter(set(counts)))
    for category_id, name in names.items():
        if available[category_id] < shots:
            what = "boxes" if unit == "boxes" else "images with a box"
            raise FewShotError(f"{source}: class {name!r} has {available[category_id]} {what}, fewer than "
                               f"k={shots} shots")

    order = sorted((image_id for image_id, counts in per_image.items() if counts), key=_id_order)
    random.Random(seed).shuffle(order)
    if unit == "boxes":
        selected, taken = _exact_boxes(order, per_image, shots, sorted(names, key=lambda c: (available[c], c)))
    else:
        selected, taken = _official_images(order, per_image, shots)
    short = [names[category_id] for category_id in names if taken[category_id] < shots]
    if short:
        raise FewShotError(
            f"{source}: cannot draw exactly k={shots} boxes of class {short[0]!r} with seed {seed}: every "
            f"image left would take a class past {shots} boxes; try another seed or the 'images' rule"
        )

    chosen = set(selected)
    subset = {key: value for key, value in data.items() if key not in ("images", "annotations")}
    subset["images"] = sorted((image for image in data["images"] if image["id"] in chosen),
                              key=lambda image: _id_order(image["id"]))
    subset["annotations"] = [annotation for annotation in data["annotations"] if annotation["image_id"] in chosen]
    subset["few_shot"] = {"shots": shots, "seed": seed, "unit": unit, "source": source}
    return subset


def _exact_boxes(
    order: list[Any], per_image: dict[Any, Counter[int]], shots: int, classes: list[int]
) -> tuple[list[Any], Counter[int]]:
    """Images in ``order`` that give every class exactly ``shots`` boxes, as far as greedy gets.

    Classes are filled one at a time, the rarest first (while the others still have room), each
    from its images in ``order``; an image is taken only if no class then exceeds ``shots``.
    """
    taken: Counter[int] = Counter()
    selected: list[Any] = []
    chosen: set[Any] = set()
    for category_id in classes:
        for image_id in order:
            if taken[category_id] >= shots:
                break
            counts = per_image[image_id]
            if category_id not in counts or image_id in chosen:
                continue
            if all(taken[other] + count <= shots for other, count in counts.items()):
                selected.append(image_id)
                chosen.add(image_id)
                taken.update(counts)
    return selected, taken


def _official_images(
    order: list[Any], per_image: dict[Any, Counter[int]], shots: int
) -> tuple[list[Any], Counter[int]]:
    """The official rule: an image is taken while one of its classes has fewer than ``shots`` images."""
    taken: Counter[int] = Counter()
    selected: list[Any] = []
    for image_id in order:
        classes = set(per_image[image_id])
        if any(taken[category_id] < shots for category_id in classes):
            selected.append(image_id)
            taken.update(classes)
    return selected, taken


def boxes_per_class(data: Mapping[str, Any]) -> dict[str, int]:
    """Non-crowd boxes per class name (every category listed, in id order)."""
    counts = Counter(a["category_id"] for a in data["annotations"] if not a.get("iscrowd", 0))
    return {c["name"]: counts[c["id"]] for c in sorted(data["categories"], key=lambda c: c["id"])}


def _id_order(image_id: Any) -> tuple[bool, Any]:
    """Sort key of image ids that may be ints or strings (ints first, numerically)."""
    return isinstance(image_id, str), image_id


__all__ = [
    "FewShotError",
    "OFFICIAL_COPIES",
    "OFFICIAL_EPOCHS",
    "ShotUnit",
    "boxes_per_class",
    "copies_for",
    "sample_few_shot",
]
