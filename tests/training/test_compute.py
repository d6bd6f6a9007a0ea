"""Losses on an annotation file (``compute_losses``) and the deterministic training mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from glip.config import GLIPConfig
from glip.hub import loading
from glip.pipeline import GLIP
from glip.processing import default_offline_vocab_dir
from glip.training import compute_losses, deterministic_train_mode
from glip.training.compute import detect_annotation_kind
from training_fixtures import TINY_MODEL, write_coco, write_grounding

LOSS_NAMES = ["loss_reg", "loss_centerness", "loss_cls", "loss_dot_product_token"]


def _tiny_glip() -> GLIP:
    torch.manual_seed(0)
    return GLIP(GLIPConfig.from_dict(TINY_MODEL))


def test_deterministic_train_mode_switches_off_every_stochastic_layer() -> None:
    model = _tiny_glip().eval()
    images = torch.randn(1, 3, 64, 64)
    input_ids = torch.randint(1000, 2000, (1, 16))
    mask = torch.ones(1, 16, dtype=torch.long)

    model.train()
    torch.manual_seed(1)
    first = model(images, input_ids, mask).dot_product_logits[0]
    torch.manual_seed(2)
    assert not torch.equal(first, model(images, input_ids, mask).dot_product_logits[0]), "dropout should be on"
    model.eval()

    with deterministic_train_mode(model):
        assert model.training and model.tower.training
        torch.manual_seed(1)
        first = model(images, input_ids, mask).dot_product_logits[0]
        torch.manual_seed(2)
        second = model(images, input_ids, mask).dot_product_logits[0]
    assert torch.equal(first, second)
    assert not model.training and not any(module.training for module in model.modules())
    assert model.fpn.drop_block_prob == 0.1 and model.backbone.layers[3].blocks[0].drop_path_rate > 0
    assert model.tower.layers[0].fusion.attention.dropout == 0.1


def test_compute_losses_on_coco_and_grounding_files(tmp_path: Path) -> None:
    coco, grounding = write_coco(tmp_path), write_grounding(tmp_path)
    assert detect_annotation_kind(coco) == "coco" and detect_annotation_kind(grounding) == "grounding"
    model = _tiny_glip().eval()
    for annotations in (coco, grounding):
        losses = compute_losses(model, annotations, tmp_path, min_sizes=64, max_size=96)
        assert list(losses) == LOSS_NAMES and losses["loss_cls"] == 0.0
        assert all(isinstance(value, float) and value > 0 for name, value in losses.items() if name != "loss_cls")
        assert compute_losses(model, annotations, tmp_path, min_sizes=64, max_size=96) == losses
        per_image = compute_losses(model, annotations, tmp_path, batch_size=1, min_sizes=64, max_size=96)
        assert list(per_image) == LOSS_NAMES
    assert not model.training, "the caller's mode is restored"

    random_losses = compute_losses(model, coco, tmp_path, deterministic=False, min_sizes=(48, 64), max_size=96)
    assert list(random_losses) == LOSS_NAMES
    with pytest.raises(ValueError, match="one min size"):
        compute_losses(model, coco, tmp_path, min_sizes=(48, 64))


def test_unknown_annotation_format(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png"}]}))
    with pytest.raises(ValueError, match="neither MDETR grounding"):
        detect_annotation_kind(path)


# ------------------------------------------------------------------------------------------ parity

# The samples of tests/reference/glip_tiny_loss (README "Samples"): images of glip_tiny_parity.
_DETECTION = {
    "images": [{"id": 1, "file_name": "case_a_astronaut.png", "height": 256, "width": 256}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [40, 8, 200, 247], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [0, 0, 70, 90], "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 4, "bbox": [180, 100, 40, 90], "iscrowd": 0},
    ],
    "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "flag"}, {"id": 3, "name": "helmet"},
                   {"id": 4, "name": "rocket"}],
}
_GROUNDING = {
    "images": [{"id": 1, "file_name": "case_b_coffee_301x417.png", "height": 301, "width": 417,
                "caption": "a cup of coffee on a saucer next to a small spoon."}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [100, 40, 220, 200], "tokens_positive": [[2, 15]]},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [40, 120, 340, 170], "tokens_positive": [[21, 27]]},
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [250, 200, 120, 60], "tokens_positive": [[38, 49]]},
    ],
}


@pytest.mark.parametrize(("case", "annotations"), [("a", _DETECTION), ("b", _GROUNDING)])
def test_losses_match_the_official_training_step(
    reference_dir: Path, tmp_path: Path, case: str, annotations: dict
) -> None:
    folder = reference_dir / "glip_tiny_parity"
    config, state_dict = loading.official_checkpoint_and_config(
        folder / "checkpoint.pth", folder / "config.yaml", folder / "text_config.json", default_offline_vocab_dir()
    )
    # The official VLFuse attention dropout (0.1) stays in the config: deterministic mode turns it off.
    assert config.fusion.attention_dropout > 0
    model = GLIP(config)
    model.load_state_dict(state_dict, strict=True)
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(annotations))

    losses = compute_losses(model, path, folder, min_sizes=160)
    expected = load_file(reference_dir / "glip_tiny_loss" / f"case_{case}.safetensors")
    for name in LOSS_NAMES:
        assert losses[name] == pytest.approx(expected[f"loss.{name}"].item(), rel=1e-5, abs=1e-7), name
