"""k-shot sampling: exactly k boxes per class, deterministic by seed, clear errors."""

from __future__ import annotations

from collections import Counter

import pytest

from glip.transfer.fewshot import FewShotError, boxes_per_class, copies_for, sample_few_shot
from transfer_fixtures import coco_dict


@pytest.mark.parametrize("shots", [1, 3, 5, 10])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exactly_k_boxes_per_class(shots: int, seed: int) -> None:
    data = coco_dict(80)
    subset = sample_few_shot(data, shots, seed)
    assert set(boxes_per_class(subset).values()) == {shots}
    chosen = {image["id"] for image in subset["images"]}
    # Every box of a chosen image is kept (an unlabelled object would be trained as background).
    assert subset["annotations"] == [a for a in data["annotations"] if a["image_id"] in chosen]
    assert [image["id"] for image in subset["images"]] == sorted(chosen)
    assert subset["few_shot"] == {"shots": shots, "seed": seed, "unit": "boxes", "source": "annotations"}
    assert subset["categories"] == data["categories"]


def test_deterministic_by_seed_and_different_across_seeds() -> None:
    data = coco_dict(80)
    draws = {seed: [image["id"] for image in sample_few_shot(data, 3, seed)["images"]] for seed in range(4)}
    assert draws[0] == [image["id"] for image in sample_few_shot(data, 3, 0)["images"]]
    assert len({tuple(ids) for ids in draws.values()}) > 1


def test_k_larger_than_a_class_names_the_class_and_k() -> None:
    data = coco_dict(30)
    arrows = [a for a in data["annotations"] if a["category_id"] == 3]
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] != 3] + arrows[:2]
    with pytest.raises(FewShotError, match=r"train.json: class 'arrow' has 2 boxes, fewer than k=3"):
        sample_few_shot(data, 3, 0, source="train.json")
    assert set(boxes_per_class(sample_few_shot(data, 2, 0)).values()) == {2}


def test_crowd_boxes_are_not_counted() -> None:
    data = coco_dict(30)
    for annotation in data["annotations"][::4]:
        annotation["iscrowd"] = 1
    subset = sample_few_shot(data, 2, 0)
    kept = Counter(a["category_id"] for a in subset["annotations"] if not a["iscrowd"])
    assert set(kept.values()) == {2}


def test_official_image_rule_takes_k_images_per_class() -> None:
    data = coco_dict(80)
    subset = sample_few_shot(data, 3, 5, unit="images")
    images_per_class = Counter()
    for image in subset["images"]:
        images_per_class.update({a["category_id"] for a in subset["annotations"] if a["image_id"] == image["id"]})
    assert min(images_per_class.values()) >= 3
    # An image is taken only while one of its classes still needs images.
    assert len(subset["images"]) <= 3 * len(data["categories"])


def test_bad_arguments() -> None:
    with pytest.raises(FewShotError, match="shots must be an integer >= 1"):
        sample_few_shot(coco_dict(10), 0, 0)
    with pytest.raises(FewShotError, match="unit"):
        sample_few_shot(coco_dict(10), 1, 0, unit="boxen")  # type: ignore[arg-type]
    broken = coco_dict(10)
    broken["annotations"][0]["category_id"] = 99
    with pytest.raises(FewShotError, match=r"annotations\[0\] refers to an unknown"):
        sample_few_shot(broken, 1, 0)


def test_official_copies() -> None:
    assert [copies_for(k) for k in (1, 3, 5, 10, 2, None)] == [8, 4, 2, 1, 1, 1]
