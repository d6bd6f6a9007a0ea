"""Presets are plain data: light to import, per-model settings where the models differ."""

from __future__ import annotations

import subprocess
import sys


def test_presets_import_without_torch() -> None:
    """``glip models`` lists presets from a fast CLI: glip.hub.presets must not import torch."""
    code = ("import sys, glip.hub.presets; "
            "print(sorted(m for m in ('torch', 'transformers', 'huggingface_hub') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_only_glip_nano_preset_uses_class_agnostic_nms() -> None:
    """GLIP-Nano's preset suppresses across labels; official presets keep the official per-label NMS."""
    from glip.hub.presets import PRESETS

    agnostic = {name for name, preset in PRESETS.items() if preset.config.postprocess.class_agnostic_nms}
    assert agnostic == {"glip_nano"}
