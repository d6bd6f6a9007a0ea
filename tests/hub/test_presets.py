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


def test_bundled_glip_nano_config_is_the_presets() -> None:
    """The shipped GLIP-Nano folder and its preset describe one model (the folder names its own vocab)."""
    import dataclasses
    import json

    from glip.config import GLIPConfig
    from glip.hub.loading import CONFIG_FILE, bundled_weights_dir
    from glip.hub.presets import PRESETS

    preset = PRESETS["glip_nano"]
    document = json.loads((bundled_weights_dir() / preset.bundled / CONFIG_FILE).read_text())
    bundled = GLIPConfig.from_dict(document["config"])
    assert dataclasses.replace(bundled, language=dataclasses.replace(bundled.language, tokenizer="")) == \
        dataclasses.replace(preset.config, language=dataclasses.replace(preset.config.language, tokenizer=""))
    assert document["metadata"]["default_threshold"] == preset.default_threshold
