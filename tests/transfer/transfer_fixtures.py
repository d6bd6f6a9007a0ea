"""Tiny model and tiny COCO data for the transfer tests (written to temporary folders)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from glip.config import BERT_BASE_UNCASED, GLIPConfig
from glip.pipeline import GLIP

# The tiny GLIP of tests/training/training_fixtures.py, testing at 64 px.
TINY_MODEL: dict[str, Any] = {
    "swin": {"embed_dim": 12, "depths": [1, 1, 1, 1], "num_heads": [1, 2, 4, 8], "drop_path_rate": 0.1},
    "fpn": {"out_channels": 32, "drop_block_prob": 0.1},
    "language": {
        "bert": {
            **BERT_BASE_UNCASED,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
        "max_query_len": 64,
    },
    "fusion": {"embed_dim": 32, "num_heads": 2},
    "head": {"channels": 32, "num_layers": 1},
    "input": {"min_size_test": 64},
    # Every candidate decoded: an untrained model scores below the official 0.05.
    "postprocess": {"score_threshold": 0.0},
}

# Non-contiguous ids, listed out of id order: labels must still map back to these ids.
CATEGORIES = [{"id": 7, "name": "crescent"}, {"id": 1, "name": "heart"}, {"id": 3, "name": "arrow"}]
PROMPTS = {"heart": "heart, two round lobes and a point", "crescent": "crescent, a thin curved moon"}
IMAGE_SIZE = 64


def tiny_model(seed: int = 0) -> GLIP:
    torch.manual_seed(seed)
    return GLIP(GLIPConfig.from_dict(TINY_MODEL), default_threshold=0.0).eval()


def coco_dict(num_images: int, seed: int = 0) -> dict[str, Any]:
    """COCO detection dict: image i has 1 + i % 3 boxes of cycling classes (no image files)."""
    generator = np.random.default_rng(seed)
    images, annotations = [], []
    ids = [category["id"] for category in CATEGORIES]
    for index in range(num_images):
        images.append({"id": index + 1, "file_name": f"img_{index}.png", "height": IMAGE_SIZE, "width": IMAGE_SIZE})
        for box in range(1 + index % 3):
            x, y = (int(value) for value in generator.integers(0, 30, size=2))
            size = int(generator.integers(12, 30))
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1,
                                "category_id": ids[(index + box) % len(ids)], "bbox": [x, y, size, size],
                                "area": size * size, "iscrowd": 0})
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def write_split(folder: Path, num_images: int, seed: int = 0) -> tuple[Path, Path]:
    """``coco_dict`` written as ``folder/annotations.json`` with random 64x64 images in ``folder/images``."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    data = coco_dict(num_images, seed)
    generator = np.random.default_rng(seed)
    for image in data["images"]:
        pixels = generator.integers(0, 256, size=(IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / image["file_name"])
    path = folder / "annotations.json"
    path.write_text(json.dumps(data))
    return path, images
