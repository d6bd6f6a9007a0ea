"""The network owns its anchors: training computes losses from a bare GLIPModel, no pipeline."""

from __future__ import annotations

from glip.config import GLIPConfig
from glip.hub.presets import PRESETS
from glip.modeling.anchors import AnchorGenerator
from glip.modeling.glip import GLIPModel


def test_bare_network_has_the_anchors_of_its_config() -> None:
    config: GLIPConfig = PRESETS["glip_nano"].config
    network = GLIPModel(config)
    assert isinstance(network.anchor_generator, AnchorGenerator)
    anchors = network.anchor_generator([(4, 4)] * len(config.anchors.strides), "cpu")
    assert len(anchors) == len(config.anchors.strides) and anchors[0].shape == (16, 4)
    assert not any("anchor" in key for key in network.state_dict())
