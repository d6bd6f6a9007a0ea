"""Tiny annotation files and images for the evaluation tests (written to tmp_path)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

IMAGE_HEIGHT, IMAGE_WIDTH = 48, 64


def write_images(folder: Path, names: list[str], seed: int = 0) -> None:
    """Random RGB pictures of 48x64 (all one size, so that batching pads nothing)."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(seed)
    for name in names:
        pixels = generator.integers(0, 256, size=(IMAGE_HEIGHT, IMAGE_WIDTH, 3), dtype=np.uint8)
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / name)


def coco_dict(category_names: list[str], num_images: int, seed: int = 0, file_prefix: str = "") -> dict[str, Any]:
    """A COCO detection dict: ``num_images`` 48x64 images with 1-3 boxes of random categories."""
    generator = np.random.default_rng(seed)
    images, annotations = [], []
    for index in range(num_images):
        images.append({"id": 10 + index, "file_name": f"{file_prefix}img_{index}.png", "height": IMAGE_HEIGHT,
                       "width": IMAGE_WIDTH})
        for _ in range(1 + index % 3):
            x, y = int(generator.integers(0, 30)), int(generator.integers(0, 20))
            width, height = int(generator.integers(12, 34)), int(generator.integers(10, 28))
            annotations.append({"id": len(annotations) + 1, "image_id": 10 + index,
                                "category_id": int(generator.integers(1, len(category_names) + 1)),
                                "bbox": [x, y, width, height], "area": width * height, "iscrowd": 0})
    categories = [{"id": index + 1, "name": name} for index, name in enumerate(category_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_coco(folder: Path, category_names: list[str], num_images: int = 4, seed: int = 0,
               name: str = "annotations.json") -> tuple[Path, Path]:
    """A COCO file and its images in ``folder``; returns ``(annotation file, image folder)``."""
    data = coco_dict(category_names, num_images, seed)
    write_images(folder, [image["file_name"] for image in data["images"]], seed)
    path = folder / name
    path.write_text(json.dumps(data))
    return path, folder


def lvis_dict(seed: int = 0, num_images: int = 8) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An LVIS-style dict (6 categories: 2 rare, 2 common, 2 frequent; negative and not-exhaustive
    lists) and detections for it, some near the ground truth, some anywhere, some on categories
    without a verdict on their image."""
    generator = np.random.default_rng(seed)
    frequencies = ["r", "r", "c", "c", "f", "f"]
    categories = [{"id": 3 * index + 1, "name": f"thing_{index}", "frequency": frequency}
                  for index, frequency in enumerate(frequencies)]
    category_ids = [category["id"] for category in categories]
    images, annotations, results = [], [], []
    for index in range(num_images):
        image_id = 100 + index
        present = sorted({int(value) for value in generator.choice(category_ids, size=2)})
        others = [category for category in category_ids if category not in present]
        negative = sorted(int(value) for value in generator.choice(others, size=2, replace=False))
        not_exhaustive = present[:1] if index % 3 == 0 else []
        images.append({"id": image_id, "file_name": f"lvis_{index}.png", "height": 80, "width": 100,
                       "neg_category_ids": negative, "not_exhaustive_category_ids": not_exhaustive})
        for category in present:
            for _ in range(int(generator.integers(1, 3))):
                x, y = float(generator.uniform(0, 60)), float(generator.uniform(0, 40))
                width, height = float(generator.uniform(4, 40)), float(generator.uniform(4, 40))
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": category,
                                    "bbox": [x, y, width, height], "area": width * height})
                jitter = generator.normal(0, 3, 4)
                bbox = [x + jitter[0], y + jitter[1], abs(width + jitter[2]), abs(height + jitter[3])]
                results.append({"image_id": image_id, "category_id": category, "score": float(generator.uniform()),
                                "bbox": bbox})
        for _ in range(4):
            x, y = float(generator.uniform(0, 60)), float(generator.uniform(0, 40))
            results.append({"image_id": image_id, "category_id": int(generator.choice(category_ids)),
                            "score": float(generator.uniform(0, 0.8)),
                            "bbox": [x, y, float(generator.uniform(5, 40)), float(generator.uniform(5, 40))]})
    return {"images": images, "annotations": annotations, "categories": categories}, results


def write_lvis_many_categories(folder: Path, num_images: int = 3) -> Path:
    """An LVIS v1-style file (images found through ``coco_url``) with 120 multi-word categories."""
    words = ["red", "wooden", "striped", "folding", "antique", "metal"]
    categories = [{"id": 1000 + 7 * index, "name": f"{words[index % 6]}_{words[(index // 6) % 6]}_thing_({index})",
                   "frequency": "rcf"[index % 3]} for index in range(120)]
    images, annotations = [], []
    for index in range(num_images):
        category = categories[index * 11]["id"]
        images.append({"id": 5 + index, "coco_url": f"http://images.cocodataset.org/val2017/{index:012d}.jpg",
                       "height": 48, "width": 64, "neg_category_ids": [categories[3]["id"]],
                       "not_exhaustive_category_ids": []})
        annotations.append({"id": index + 1, "image_id": 5 + index, "category_id": category,
                            "bbox": [4, 4, 30, 20], "area": 600})
    write_images(folder, [f"val2017/{index:012d}.jpg" for index in range(num_images)])
    path = folder / "lvis.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


CAPTIONS = ["a small red car next to a tall tree", "two dogs play with a ball", "a photo of nothing at all"]


def write_mdetr_grounding(folder: Path) -> Path:
    """Three images with one caption each, in MDETR's separate-GT layout; the last caption has no
    grounded phrase, and one box belongs to two phrases (MDETR merges near-identical boxes)."""
    write_images(folder, [f"{index}.jpg" for index in range(3)], seed=3)
    images = [
        {"id": 0, "file_name": "0.jpg", "caption": CAPTIONS[0], "original_img_id": 900, "sentence_id": 0,
         "tokens_positive_eval": [[[2, 15]], [[26, 35]]], "height": 48, "width": 64},
        {"id": 1, "file_name": "1.jpg", "caption": CAPTIONS[1], "original_img_id": 901, "sentence_id": 0,
         "tokens_positive_eval": [[[0, 8]], [[19, 25]]], "height": 48, "width": 64},
        {"id": 2, "file_name": "2.jpg", "caption": CAPTIONS[2], "original_img_id": 902, "sentence_id": 0,
         "tokens_positive_eval": [], "height": 48, "width": 64},
    ]
    annotations = [
        {"id": 1, "image_id": 0, "bbox": [4, 6, 24, 20], "tokens_positive": [[2, 15]], "category_id": 1},
        {"id": 2, "image_id": 0, "bbox": [30, 2, 20, 40], "tokens_positive": [[26, 35]], "category_id": 1},
        {"id": 3, "image_id": 1, "bbox": [0, 0, 40, 30], "tokens_positive": [[0, 8], [19, 25]], "category_id": 1},
        {"id": 4, "image_id": 1, "bbox": [10, 10, 20, 20], "tokens_positive": [[0, 8]], "category_id": 1},
    ]
    path = folder / "final_flickr_separateGT_val.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "object"}]}))
    return path


def write_odinw_root(root: Path) -> Path:
    """pothole (one folder per split) and pistols (flat export layout) as published, 3 images each."""
    for folder, annotation, category in (("pothole/valid", "pothole/valid/annotations_without_background.json",
                                          "pothole"),
                                         ("pistols/export", "pistols/export/val_annotations_without_background.json",
                                          "pistol")):
        data = coco_dict([category], num_images=3, seed=len(folder))
        write_images(root / folder, [image["file_name"] for image in data["images"]])
        (root / annotation).write_text(json.dumps(data))
    return root
