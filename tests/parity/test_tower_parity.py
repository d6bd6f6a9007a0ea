"""DyHead tower (fusion, text layer, DyConv) against tensors of the official GLIP code.

The tower is built from the official checkpoint and fed the reference FPN levels and BERT
hidden states; every stored intermediate (``dyhead.{i}.fuse.*``, ``dyhead.{i}.bert.*``,
``dyhead.{i}.dyconv.*``) is compared along the chain. The reference prompts were padded to 256
tokens; they are compared both unpadded (L real tokens) and padded to 256 with garbage hidden
states under mask 0, since padded tokens must not change any real output.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor

from glip.hub.convert import convert_official_state_dict, fusion_width_from_state_dict, read_official_checkpoint
from glip.modeling.dyhead import DyHeadTower

LEVELS = ("p3", "p4", "p5", "p6", "p7")
NUM_LAYERS = 2
CHANNELS = 32
FUSION_HEADS = 8
PADDED_LENGTH = 256

CASES = [
    ("glip_tiny_parity", True, "a"),
    ("glip_tiny_parity", True, "b"),
    ("glip_tiny_parity", True, "c"),
    ("glip_tiny_a_parity", False, "a"),
    ("glip_tiny_a_parity", False, "c"),
]


def _assert_close(actual: Tensor, expected: Tensor, name: str) -> None:
    # Data-card advice for features: atol 1e-4 * max(1, max |value|).
    atol = 1e-4 * max(1.0, expected.abs().max().item())
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} vs {tuple(expected.shape)}"
    error = (actual - expected).abs().max().item()
    assert error <= atol, f"{name}: max |diff| {error:.3g} > {atol:.3g}"


_TOWERS: dict[str, DyHeadTower] = {}


def _tower(folder: Path, fusion_enabled: bool) -> DyHeadTower:
    if folder.name not in _TOWERS:
        official = read_official_checkpoint(folder / "checkpoint.pth")
        bert_config = json.loads((folder / "text_config.json").read_text())
        tower = DyHeadTower(
            channels=CHANNELS,
            num_layers=NUM_LAYERS,
            text_dim=bert_config["hidden_size"],
            fusion_enabled=fusion_enabled,
            fusion_embed_dim=fusion_width_from_state_dict(official) or 64,
            fusion_num_heads=FUSION_HEADS,
            bert_config=bert_config,
        )
        converted = convert_official_state_dict(official, fusion_enabled=fusion_enabled)
        tower.load_state_dict({k[len("tower.") :]: v for k, v in converted.items() if k.startswith("tower.")})
        _TOWERS[folder.name] = tower.eval()
    return _TOWERS[folder.name]


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "padded256"])
@pytest.mark.parametrize(("model", "fusion_enabled", "case"), CASES)
def test_tower_matches_official(
    reference_dir: Path, model: str, fusion_enabled: bool, case: str, padded: bool
) -> None:
    folder = reference_dir / model
    tower = _tower(folder, fusion_enabled)
    ref = load_file(folder / f"case_{case}.safetensors")

    fpn_levels = [ref[f"fpn.{level}"] for level in LEVELS]
    bert_hidden = ref["lang.bert.hidden"]  # [1, L, D]
    num_tokens = bert_hidden.shape[1]
    mask = torch.ones(1, num_tokens, dtype=torch.long)
    if padded:
        generator = torch.Generator().manual_seed(0)
        garbage = 3.0 * torch.randn(1, PADDED_LENGTH - num_tokens, bert_hidden.shape[2], generator=generator)
        bert_hidden = torch.cat([bert_hidden, garbage], dim=1)
        mask = torch.cat([mask, torch.zeros(1, PADDED_LENGTH - num_tokens, dtype=torch.long)], dim=1)

    visual, text = fpn_levels, bert_hidden
    with torch.no_grad():
        for i, layer in enumerate(tower.layers):
            if fusion_enabled:
                visual, text = layer.fusion(visual, text, mask)
                for level, feature in zip(LEVELS, visual):
                    _assert_close(feature, ref[f"dyhead.{i}.fuse.visual.{level}"], f"dyhead.{i}.fuse.visual.{level}")
                _assert_close(text[:, :num_tokens], ref[f"dyhead.{i}.fuse.lang_hidden"], f"dyhead.{i}.fuse.lang_hidden")
                text = layer.text_layer(text, mask)
                _assert_close(text[:, :num_tokens], ref[f"dyhead.{i}.bert.lang_hidden"], f"dyhead.{i}.bert.lang_hidden")
            else:
                assert layer.fusion is None and layer.text_layer is None
            visual = layer.dyconv(visual)
            for level, feature in zip(LEVELS, visual):
                _assert_close(feature, ref[f"dyhead.{i}.dyconv.visual.{level}"], f"dyhead.{i}.dyconv.visual.{level}")

        # The whole tower in one call gives the same final outputs.
        final_visual, final_text = tower(fpn_levels, bert_hidden, mask)
    last = NUM_LAYERS - 1
    for level, feature in zip(LEVELS, final_visual):
        _assert_close(feature, ref[f"dyhead.{last}.dyconv.visual.{level}"], f"tower output {level}")
    expected_text = ref[f"dyhead.{last}.bert.lang_hidden"] if fusion_enabled else ref["lang.bert.hidden"]
    _assert_close(final_text[:, :num_tokens], expected_text, "tower text output")
