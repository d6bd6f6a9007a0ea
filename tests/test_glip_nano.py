"""The bundled GLIP-Nano on fixed Shapes-world scenes: behaviour, not stored numbers.

Each ground-truth object must be found with its shape's label at IoU >= 0.5, and nothing else may
score above the model's default threshold (calibrated on the train split,
benchmarks/calibrate_nano.py) once its class-agnostic NMS has run.
"""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from glip import GLIP
from glip.data.shapes_world import SHAPES, render_scene, sample_scene
from glip.modeling.postprocess import box_iou_legacy

# (seed, index) of test-split scenes: (7, 0) is the scene of `glip demo` (4 objects), (7, 2) has 6.
SCENES = [(7, 0), (7, 2)]


@lru_cache(maxsize=None)
def _nano() -> GLIP:
    return GLIP.from_pretrained("glip_nano")


def test_nano_defaults_come_from_its_config() -> None:
    defaults = _nano().inference_defaults
    assert defaults.min_size == 224 and defaults.max_size == 373
    assert defaults.class_agnostic_nms
    assert 0.0 < defaults.threshold < 1.0


@pytest.mark.parametrize(("seed", "index"), SCENES)
def test_nano_finds_each_shape_once(seed: int, index: int) -> None:
    scene = sample_scene(seed, "test", index)
    detections = _nano().predict(render_scene(scene), classes=list(SHAPES))
    # (x, y, w, h) of the drawn pixels -> inclusive xyxy, the detections' convention.
    truth = torch.tensor([(x, y, x + w - 1, y + h - 1) for x, y, w, h in (item.box for item in scene.objects)])
    labels = torch.tensor([SHAPES.index(item.shape) + 1 for item in scene.objects])
    iou = box_iou_legacy(detections.boxes, truth)  # [N, G]
    for column, item in enumerate(scene.objects):
        found = (iou[:, column] >= 0.5) & (detections.labels == labels[column])
        assert bool(found.any()), f"{item.colour} {item.shape} at {item.box} not found: {detections}"
    assert len(detections) == len(scene.objects), f"extra boxes above the default threshold: {detections}"
