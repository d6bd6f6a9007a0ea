"""Swin backbone and FPN against tensors produced by the official GLIP code.

Reference: ``tests/reference/glip_tiny{,_a}_parity`` (tiny Swin: embed 12, depths 2-2-2-2, window 7;
FPN 32 channels). The network input is the stored demo-transformed ``image`` zero-padded at
bottom/right to a multiple of 32, as the official ``to_image_list`` does (quirk 1). The cases include a
non-square input (b) and stride-32 maps smaller than the window (quirk 4: the shifted blocks still roll).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from glip.config import FPNConfig, SwinConfig
from glip.hub.convert import convert_official_state_dict, read_official_checkpoint
from glip.modeling.fpn import FPN
from glip.modeling.swin import SwinBackbone

CASES = [
    ("glip_tiny_parity", "a"),
    ("glip_tiny_parity", "b"),
    ("glip_tiny_parity", "c"),
    ("glip_tiny_a_parity", "a"),
    ("glip_tiny_a_parity", "c"),
]
# Both reference models share this architecture (README "Tiny model").
SWIN = SwinConfig(embed_dim=12, depths=(2, 2, 2, 2), num_heads=(2, 4, 8, 16), window_size=7, drop_path_rate=0.0)
FPN_CONFIG = FPNConfig(out_channels=32, drop_block_prob=0.0)


@cache
def load_models(model_dir: Path) -> tuple[SwinBackbone, FPN]:
    official = read_official_checkpoint(model_dir / "checkpoint.pth")
    fusion_enabled = any(".b_attn." in key for key in official)
    converted = convert_official_state_dict(official, fusion_enabled=fusion_enabled)
    backbone = SwinBackbone.from_config(SWIN).eval()
    fpn = FPN.from_config(FPN_CONFIG, in_channels=backbone.out_channels[1:]).eval()
    for module, prefix in ((backbone, "backbone."), (fpn, "fpn.")):
        weights = {key[len(prefix) :]: value for key, value in converted.items() if key.startswith(prefix)}
        module.load_state_dict(weights, strict=True)
    return backbone, fpn


def assert_feature_close(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    # Data card: features atol 1e-4 * max(1, max |value|) (float32 drift of a different op order).
    atol = 1e-4 * max(1.0, expected.abs().max().item())
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0, msg=lambda message: f"{name}: {message}")


@pytest.mark.parametrize(("model_name", "case"), CASES)
def test_swin_and_fpn_match_official(reference_dir: Path, model_name: str, case: str) -> None:
    backbone, fpn = load_models(reference_dir / model_name)
    reference = load_file(reference_dir / model_name / f"case_{case}.safetensors")
    image = reference["image"]  # [3, H, W]
    height, width = image.shape[-2:]
    images = F.pad(image, (0, -width % 32, 0, -height % 32))[None]  # [1, 3, H32, W32]
    with torch.no_grad():
        stages = backbone(images)
        levels = fpn(stages[1:])
    for index, stage in enumerate(stages):
        assert_feature_close(stage, reference[f"swin.stage{index + 2}"], f"swin.stage{index + 2}")
    for index, level in enumerate(levels):
        assert_feature_close(level, reference[f"fpn.p{index + 3}"], f"fpn.p{index + 3}")
