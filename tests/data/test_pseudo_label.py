"""Pseudo-labelling: a teacher's groundings become training data for a student."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from glip.data import GroundingDataset
from glip.data.pseudo_label import pseudo_label, read_caption_pairs, shapes_world_phrases
from glip.data.shapes_world import synthesize
from glip.pipeline import GLIP
from glip.processing import default_offline_vocab_dir


def test_shapes_world_phrases() -> None:
    caption = "the red circle left of a square and the large blue star"
    assert [caption[b:e] for b, e in shapes_world_phrases(caption)] == ["the red circle", "a square",
                                                                        "the large blue star"]


@pytest.mark.slow  # a full GLIP-T teacher (230M parameters) on the CPU; the stub tests below run by default
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
        phrases = [image["caption"][b:e] for b, e in shapes_world_phrases(image["caption"])]
        assert image["caption"][begin:end] == phrases[annotation["phrase_ids"]]
    dataset = GroundingDataset(out, split["images"], teacher.tokenizer)
    sample = next(s for s in (dataset[i] for i in range(len(dataset))) if s is not None)
    assert sample.boxes.shape[0] == sample.positive_map.shape[0] > 0


class _StubTeacher:
    """Answers every caption with two boxes: one for phrase 2 above the threshold, one for phrase 1
    below it (a teacher that does not threshold by itself); fails on the file ``fail_on``."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls: list[tuple[str, list, float]] = []
        self.fail_on = fail_on

    def predict(self, image, caption: str, spans: list, threshold: float) -> SimpleNamespace:
        self.calls.append((caption, spans, threshold))
        if self.fail_on is not None and len(self.calls) == 2:
            raise RuntimeError("teacher crashed")
        return SimpleNamespace(
            boxes=torch.tensor([[1.0, 2.0, 10.0, 20.0], [0.0, 0.0, 5.0, 5.0]]),
            scores=torch.tensor([0.9, 0.2]),
            labels=torch.tensor([2, 1]),
        )


def _caption_files(tmp_path: Path) -> Path:
    for name in ("a.png", "c.png"):
        Image.new("RGB", (32, 24)).save(tmp_path / name)
    captions = [
        {"file_name": "a.png", "caption": "the red circle left of a square"},
        {"file_name": "b.png", "caption": "nothing to see"},  # no phrase: not even opened
        {"file_name": "missing.png", "caption": "a star"},  # unreadable: skipped, counted
        {"file_name": "c.png", "caption": "a blue star above the small triangle"},
    ]
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(captions))
    return path


def test_pseudo_label_writes_grounding_of_the_phrases_above_threshold(tmp_path: Path) -> None:
    teacher = _StubTeacher()
    out = tmp_path / "out" / "pseudo.json"
    stats = pseudo_label(teacher, _caption_files(tmp_path), tmp_path, out, threshold=0.5,
                         phrase_extractor=shapes_world_phrases)
    assert stats == {"captions": 4, "skipped_images": 1, "phrases": 4, "boxes": 2}
    assert [call[2] for call in teacher.calls] == [0.5, 0.5]
    data = json.loads(out.read_text())
    assert [(image["id"], image["file_name"], image["height"], image["width"]) for image in data["images"]] == [
        (1, "a.png", 24, 32), (4, "c.png", 24, 32)]
    # Only the 0.9 box (of phrase 2) survives; inclusive corners -> xywh with the legacy +1.
    phrases = []
    for annotation in data["annotations"]:
        image = next(image for image in data["images"] if image["id"] == annotation["image_id"])
        begin, end = annotation["tokens_positive"][0]
        phrases.append(image["caption"][begin:end])
        assert annotation["bbox"] == [1.0, 2.0, 10.0, 19.0] and annotation["score"] == pytest.approx(0.9)
        assert annotation["phrase_ids"] == 1
    assert phrases == ["a square", "the small triangle"]
    assert data["info"]["threshold"] == 0.5 and data["info"]["boxes"] == 2


def test_pseudo_label_writes_nothing_when_the_teacher_fails(tmp_path: Path) -> None:
    """Atomic: an interrupted run leaves the previous output whole and no partial file."""
    out = tmp_path / "pseudo.json"
    out.write_text('{"previous": true}')
    with pytest.raises(RuntimeError, match="teacher crashed"):
        pseudo_label(_StubTeacher(fail_on="c.png"), _caption_files(tmp_path), tmp_path, out,
                     phrase_extractor=shapes_world_phrases)
    assert json.loads(out.read_text()) == {"previous": True}
    assert not [path for path in tmp_path.iterdir() if path.name.endswith(".tmp")]


def test_bad_caption_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "captions.json"
    path.write_text(json.dumps([{"file_name": "a.png"}]))
    with pytest.raises(ValueError, match="record 0"):
        read_caption_pairs(path)
