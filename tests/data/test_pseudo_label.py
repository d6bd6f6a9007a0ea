"""Pseudo-labelling: a teacher's groundings become training data for a student."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glip.data import GroundingDataset
from glip.data.pseudo_label import pseudo_label, read_caption_pairs, shapes_world_phrases
from glip.data.shapes_world import synthesize
from glip.pipeline import GLIP
from glip.processing import default_offline_vocab_dir


def test_shapes_world_phrases() -> None:
    caption = "the red circle left of a square and the large blue star"
    assert [caption[b:e] for b, e in shapes_world_phrases(caption)] == ["the red circle", "a square",
                                                                        "the large blue star"]


def test_pseudo_labels_train_like_gold_grounding(reference_dir: Path, tmp_path: Path) -> None:
    split = synthesize(tmp_path / "scenes", 3, seed=5, split="train", show_progress=False)
    folder = reference_dir / "glip_tiny_parity"
    teacher = GLIP.from_official(folder / "checkpoint.pth", folder / "config.yaml", folder / "text_config.json",
                                 default_offline_vocab_dir())
    out = tmp_path / "pseudo.json"
    stats = pseudo_label(teacher, split["captions"], split["images"], out, threshold=0.3,
                         phrase_extractor=shapes_world_phrases)
    data = json.loads(out.read_text())
    assert stats["boxes"] == len(data["annotations"]) > 0
    for annotation in data["annotations"]:
        assert annotation["score"] >= 0.3
        image = next(i for i in data["images"] if i["id"] == annotation["image_id"])
        begin, end = annotation["tokens_positive"][0]
        assert image["caption"][begin:end] in image["caption"]
    dataset = GroundingDataset(out, split["images"], teacher.tokenizer)
    sample = next(s for s in (dataset[i] for i in range(len(dataset))) if s is not None)
    assert sample.boxes.shape[0] == sample.positive_map.shape[0] > 0


def test_bad_caption_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "captions.json"
    path.write_text(json.dumps([{"file_name": "a.png"}]))
    with pytest.raises(ValueError, match="record 0"):
        read_caption_pairs(path)
