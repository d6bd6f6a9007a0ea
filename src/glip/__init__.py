"""GLIP: Grounded Language-Image Pre-training in pure PyTorch.

>>> from glip import GLIP
>>> model = GLIP.from_pretrained("glip_t")                     # doctest: +SKIP
>>> detections = model.predict("image.jpg", classes=["person", "dog"])  # doctest: +SKIP

The public names are imported on first use (PEP 562 module ``__getattr__``), so ``import glip``
and the command line (``glip --help``, ``glip models``) start without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from glip.config import GLIPConfig
    from glip.modeling.postprocess import Detections
    from glip.pipeline import GLIP

__all__ = ["GLIP", "GLIPConfig", "Detections"]
__version__ = "0.1.0"

# Public name -> module that defines it.
_LAZY = {"GLIP": "glip.pipeline", "GLIPConfig": "glip.config", "Detections": "glip.modeling.postprocess"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'glip' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
