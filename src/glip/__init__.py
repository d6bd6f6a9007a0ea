"""GLIP: Grounded Language-Image Pre-training in pure PyTorch.

>>> from glip import GLIP
>>> model = GLIP.from_pretrained("glip_t")                     # doctest: +SKIP
>>> detections = model.predict("image.jpg", classes=["person", "dog"])  # doctest: +SKIP
"""

from glip.config import GLIPConfig
from glip.modeling.postprocess import Detections
from glip.pipeline import GLIP

__all__ = ["GLIP", "GLIPConfig", "Detections"]
__version__ = "0.1.0"
