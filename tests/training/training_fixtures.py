"""Tiny model, tiny data and recipe files for the training tests (written to tmp_path)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from glip.config import BERT_BASE_UNCASED

# A GLIP small enough to train a few steps in well under a second per step on one CPU thread.
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
}

CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 7, "name": "traffic_light"}]
IMAGE_HEIGHT, IMAGE_WIDTH = 48, 64


def _write_image(path: Path, seed: int) -> None:
    generator = np.random.default_rng(seed)
    pixels = generator.integers(0, 256, size=(IMAGE_HEIGHT, IMAGE_WIDTH, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_coco(folder: Path, num_images: int = 6) -> Path:
    """COCO detection JSON with ``num_images`` random images of 48x64 and 1-3 boxes each."""
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    generator = np.random.default_rng(0)
    for index in range(num_images):
        name = f"coco_{index}.png"
        _write_image(folder / name, seed=index)
        images.append({"id": index + 1, "file_name": name, "height": IMAGE_HEIGHT, "width": IMAGE_WIDTH})
        for box in range(1 + index % 3):
            x, y = generator.integers(0, 30), generator.integers(0, 20)
            width, height = generator.integers(12, 34), generator.integers(10, 28)
            category = CATEGORIES[(index + box) % len(CATEGORIES)]["id"]
            annotations.append(
                {"id": len(annotations) + 1, "image_id": index + 1, "category_id": int(category),
                 "bbox": [int(x), int(y), int(width), int(height)], "iscrowd": 0, "area": int(width * height)}
            )
    path = folder / "coco.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return path


def write_grounding(folder: Path, num_images: int = 4) -> Path:
    """MDETR grounding JSON: one caption per image, boxes grounded to character spans."""
    folder.mkdir(parents=True, exist_ok=True)
    caption = "a small red car next to a tall tree"
    spans = [[[2, 15]], [[26, 35]]]  # "small red car", "tall tree"
    images, annotations = [], []
    for index in range(num_images):
        name = f"grounding_{index}.png"
        _write_image(folder / name, seed=100 + index)
        images.append({"id": index + 1, "file_name": name, "height": IMAGE_HEIGHT, "width": IMAGE_WIDTH,
                       "caption": caption})
        for box, span in enumerate(spans):
            annotations.append(
                {"id": len(annotations) + 1, "image_id": index + 1, "category_id": 1,
                 "bbox": [4 + 20 * box + index, 6 + index, 24, 30], "tokens_positive": span, "iscrowd": 0}
            )
    path = folder / "grounding.json"
    categories = [{"id": 1, "name": "object"}]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def recipe_dict(data_dir: Path, output_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A recipe of a few steps on both fixtures (COCO + grounding mixed)."""
    recipe: dict[str, Any] = {
        "model": TINY_MODEL,
        "output_dir": str(output_dir),
        "batch_size": 2,
        "max_steps": 5,
        "seed": 3,
        "data": {
            "sources": [
                {"kind": "coco", "annotations": str(write_coco(data_dir)), "images": str(data_dir), "weight": 2.0},
                {"kind": "grounding", "annotations": str(write_grounding(data_dir)), "images": str(data_dir)},
            ],
            "min_sizes": [48, 64],
            "max_size": 96,
            "num_negatives": 2,
            "num_workers": 0,
        },
        "optimizer": {"lr": 1.0e-3, "language_lr": 1.0e-4},
        "schedule": {"warmup_steps": 2, "warmup_factor": 0.1},
        "checkpoint_every": 2,
        "log_every": 1,
        "progress_bar": False,
        "num_threads": 1,
    }
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        if name:
            recipe[section] = {**recipe[section], name: value}
        else:
            recipe[key] = value
    return recipe


def write_recipe(path: Path, recipe: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path
