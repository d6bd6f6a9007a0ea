"""Training inputs against one official training step (``tests/reference/glip_tiny_loss``).

The card's samples are rebuilt through our datasets, transforms and collate:
* (a) detection: COCO boxes of the card, categories person/flag/helmet/rocket (helmet without a box),
  deterministic prompt "person. flag. helmet. rocket" (``convert_od_to_grounding_simple``);
* (b) grounding: MDETR-style caption and spans of the card;
* (c) the batch [(a), (b)].
Compared: padded images (exact, same float32 operations), collated binarised positive map, token ids
and mask (exact), boxes after the transforms (1e-5 px) and labels (exact). Settings of the card:
shorter side 160 (max 1333), no flip.
"""

from __future__ import annotations

import json
import shutil
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from glip.data import Batch, DetectionDataset, GroundingDataset, TrainTransforms, collate
from glip.processing import default_offline_vocab_dir, load_tokenizer

BOX_ATOL = 1e-5


@cache
def _tokenizer():
    return load_tokenizer(default_offline_vocab_dir())


def _transforms() -> TrainTransforms:
    return TrainTransforms(min_sizes=(160,), max_size=1333, flip_prob=0.0)


def _detection_dataset(reference_dir: Path, tmp_path: Path) -> DetectionDataset:
    meta = json.loads((reference_dir / "glip_tiny_loss" / "case_a.json").read_text())["samples"][0]
    shutil.copy(reference_dir / "glip_tiny_parity" / "case_a_astronaut.png", tmp_path / "a.png")
    annotations = [
        {"id": index + 1, "image_id": 1, **{key: item[key] for key in ("bbox", "category_id", "iscrowd", "area")}}
        for index, item in enumerate(meta["coco_annotations_xywh"])
    ]
    categories = [{"id": int(key), "name": name} for key, name in meta["ind_to_class"].items()]
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "height": 256, "width": 256}],
        "annotations": annotations,
        "categories": categories,
    }
    (tmp_path / "a.json").write_text(json.dumps(coco))
    return DetectionDataset(
        tmp_path / "a.json", tmp_path, _tokenizer(), transforms=_transforms(), deterministic=True
    )


def _grounding_dataset(reference_dir: Path, tmp_path: Path) -> GroundingDataset:
    meta = json.loads((reference_dir / "glip_tiny_loss" / "case_b.json").read_text())["samples"][0]
    shutil.copy(reference_dir / "glip_tiny_parity" / "case_b_coffee_301x417.png", tmp_path / "b.png")
    annotations = [{"id": index + 1, "image_id": 7, **item} for index, item in enumerate(meta["coco_annotations_xywh"])]
    mdetr = {
        "images": [{"id": 7, "file_name": "b.png", "height": 301, "width": 417, "caption": meta["caption"]}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "object"}],
    }
    (tmp_path / "b.json").write_text(json.dumps(mdetr))
    return GroundingDataset(tmp_path / "b.json", tmp_path, _tokenizer(), transforms=_transforms())


def _batch(reference_dir: Path, tmp_path: Path, case: str) -> Batch:
    samples = []
    if case in ("a", "c"):
        samples.append(_detection_dataset(reference_dir, tmp_path)[0])
    if case in ("b", "c"):
        samples.append(_grounding_dataset(reference_dir, tmp_path)[0])
    batch = collate(samples, _tokenizer(), max_len=256, size_divisibility=32)
    assert batch is not None
    return batch


@pytest.mark.parametrize("case", ["a", "b", "c"])
def test_training_inputs_match_official(reference_dir: Path, tmp_path: Path, case: str) -> None:
    folder = reference_dir / "glip_tiny_loss"
    reference = load_file(folder / f"case_{case}.safetensors")
    meta = json.loads((folder / f"case_{case}.json").read_text())
    batch = _batch(reference_dir, tmp_path, case)

    assert batch.captions == meta["captions"]
    assert [list(size) for size in batch.image_sizes] == meta["image_sizes_hw"]
    assert batch.images.shape == reference["input.images"].shape
    # Same float32 operations in the same order as the official transforms: bit-exact.
    assert torch.equal(batch.images, reference["input.images"])
    assert torch.equal(batch.input_ids, reference["text.input_ids"])
    assert torch.equal(batch.attention_mask, reference["text.attention_mask"])
    assert torch.equal(batch.positive_map, reference["input.positive_map"])
    for index, target in enumerate(batch.targets):
        torch.testing.assert_close(
            target.boxes, reference[f"target.img{index}.boxes_xyxy"], rtol=0, atol=BOX_ATOL
        )
        assert torch.equal(target.labels, reference[f"target.img{index}.labels"])


def test_detection_sample_tokens_positive(reference_dir: Path, tmp_path: Path) -> None:
    """The spans of the card's detection sample (helmet has no box, so no row)."""
    meta = json.loads((reference_dir / "glip_tiny_loss" / "case_a.json").read_text())["samples"][0]
    sample = _detection_dataset(reference_dir, tmp_path)[0]
    assert sample.caption == meta["caption"]
    assert [[list(span) for span in spans] for spans in sample.tokens_positive] == meta["tokens_positive"]
