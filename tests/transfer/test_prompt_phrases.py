"""Detections of a prompt-tuned model name its classes, not the descriptive texts it was tuned with."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from glip.modeling.language import PromptOffset
from glip.pipeline import GLIP
from glip.transfer.prompt_tuning import base_reference, save_prompt_tuned

TEXTS = ["heart, two round lobes and a point", "arrow", "crescent, a thin curved moon"]
NAMES = ["heart", "arrow", "crescent"]


def test_detections_of_a_prompt_tuned_model_name_the_classes(model_dir: Path, tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    base = tmp_path / "base"
    shutil.copytree(model_dir, base)
    model = GLIP.from_pretrained(base)
    model.prompt_offset = PromptOffset(64, 32, TEXTS, NAMES)
    model.prompt_offset.offset.data.normal_()
    in_memory = model.eval().predict(image)
    loaded = GLIP.from_pretrained(save_prompt_tuned(model, tmp_path / "tuned", base_reference(base), NAMES))
    for detections in (in_memory, loaded.predict(image), GLIP.from_pretrained(model.save_pretrained(tmp_path / "whole")).predict(image)):
        assert len(detections) > 0 and set(detections.phrases) <= set(NAMES)
