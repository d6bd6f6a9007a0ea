"""Prompt offsets: zero offsets change nothing; a prompt-tuned model saves and loads like any other."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from glip.hub.loading import PROMPT_TUNING_FILE, PROMPT_TUNING_WEIGHTS
from glip.modeling.language import PromptOffset
from glip.pipeline import GLIP
from transfer_fixtures import tiny_model

CLASSES = ["heart, two round lobes and a point", "arrow", "crescent"]


@pytest.fixture()
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)


def _tuned(seed: int = 1) -> GLIP:
    model = tiny_model()
    model.prompt_offset = PromptOffset(64, 32, CLASSES)
    generator = torch.Generator().manual_seed(seed)
    model.prompt_offset.offset.data.copy_(torch.randn(64, 32, generator=generator))
    return model.eval()


def _same(first, second) -> bool:
    return torch.equal(first.scores, second.scores) and torch.equal(first.boxes, second.boxes) and torch.equal(
        first.labels, second.labels)


def test_zero_offsets_change_nothing_and_tuned_offsets_do(image: np.ndarray) -> None:
    base = tiny_model()
    zero = tiny_model()
    zero.prompt_offset = PromptOffset(64, 32, CLASSES)
    zero.eval()
    assert _same(base.predict(image, classes=CLASSES), zero.predict(image))
    assert not torch.equal(base.predict(image, classes=CLASSES).scores, _tuned().predict(image).scores)


def test_offsets_leave_padding_rows_of_the_dot_product_features_zero() -> None:
    model = _tuned()
    ids = torch.tensor([[101, 2000, 102, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    text = model.encode_text(ids, mask)
    assert torch.count_nonzero(text.embedded[0, 3:]) == 0 and torch.count_nonzero(text.embedded[0, :3]) > 0


def test_save_and_load_round_trip_gives_identical_predictions(image: np.ndarray, tmp_path: Path) -> None:
    model = _tuned()
    directory = model.save_pretrained(tmp_path / "tuned")
    assert "prompt_offset.offset" not in load_file(directory / "model.safetensors")
    assert json.loads((directory / PROMPT_TUNING_FILE).read_text())["classes"] == CLASSES
    loaded = GLIP.from_pretrained(directory)
    assert loaded.prompt_offset is not None and loaded.prompt_offset.classes == tuple(CLASSES)
    assert torch.equal(loaded.prompt_offset.offset, model.prompt_offset.offset)
    # Without classes= the tuned prompt is used; its phrases name the tuned classes.
    expected = model.predict(image, classes=CLASSES)
    got = loaded.predict(image)
    assert _same(expected, got) and len(got) > 0
    assert set(got.phrases) <= set(CLASSES)
    # A plain model saved in the same place afterwards drops the prompt-tuning files.
    tiny_model().save_pretrained(directory)
    assert not (directory / PROMPT_TUNING_WEIGHTS).exists()
    assert GLIP.from_pretrained(directory).prompt_offset is None


def test_another_prompt_is_warned_about(image: np.ndarray, caplog: pytest.LogCaptureFixture) -> None:
    model = _tuned()
    with caplog.at_level(logging.WARNING, logger="glip.pipeline"):
        model.predict(image, classes=CLASSES)
        assert not caplog.records
        model.predict(image, classes=["dog"])
    assert "tuned for the classes" in caplog.text


def test_broken_prompt_tuning_files_are_named(tmp_path: Path) -> None:
    directory = _tuned().save_pretrained(tmp_path / "tuned")
    (directory / PROMPT_TUNING_FILE).rename(tmp_path / "saved.json")
    with pytest.raises(ValueError, match=f"{PROMPT_TUNING_WEIGHTS} without {PROMPT_TUNING_FILE}"):
        GLIP.from_pretrained(directory)
    (directory / PROMPT_TUNING_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=f"{PROMPT_TUNING_FILE}: cannot read prompt tuning"):
        GLIP.from_pretrained(directory)
    (directory / PROMPT_TUNING_FILE).write_text(json.dumps({"format": "glip-prompt-tuning", "classes": []}))
    with pytest.raises(ValueError, match="non-empty list of class texts"):
        GLIP.from_pretrained(directory)
    from safetensors.torch import save_file

    (tmp_path / "saved.json").replace(directory / PROMPT_TUNING_FILE)
    save_file({"offset": torch.zeros(10, 32)}, directory / PROMPT_TUNING_WEIGHTS)
    with pytest.raises(ValueError, match=r"prompt offsets of shape \(10, 32\) do not fit the model"):
        GLIP.from_pretrained(directory)


def test_training_caption_is_the_evaluation_caption(tmp_path: Path) -> None:
    """Prompt offsets are per token position: training and evaluation must write the same caption."""
    from glip.data import DetectionDataset
    from glip.data.prompts import full_category_prompt
    from glip.evaluation.prompts import CategoryText, build_category_prompts, category_texts
    from glip.transfer.data import training_file
    from glip.transfer.prompts import ClassPrompts, class_texts
    from transfer_fixtures import CATEGORIES, PROMPTS, coco_dict

    model = tiny_model()
    texts = class_texts(CATEGORIES, ClassPrompts(PROMPTS), "train.json")
    path = tmp_path / "train.json"
    path.write_text(json.dumps(training_file(coco_dict(6), texts)))
    dataset = DetectionDataset(path, tmp_path, model.tokenizer, deterministic=True, max_query_len=64)
    training = full_category_prompt([1], dataset.category_names, model.tokenizer, 64).caption
    names = [category["name"] for category in sorted(CATEGORIES, key=lambda category: category["id"])]
    evaluation_texts = category_texts(names, {name: CategoryText(text) for name, text in PROMPTS.items()})
    evaluation = build_category_prompts(evaluation_texts, model.tokenizer, 64)
    assert len(evaluation) == 1 and evaluation[0].caption == training
    assert training == f"{PROMPTS['heart']}. arrow. {PROMPTS['crescent']}"


def test_a_prompt_tuned_folder_is_its_offsets_and_reloads_to_the_same_detections(
    image: np.ndarray, model_dir: Path, tmp_path: Path
) -> None:
    from glip.transfer.prompt_tuning import base_reference, save_prompt_tuned

    base = tmp_path / "base"
    shutil.copytree(model_dir, base)
    model = GLIP.from_pretrained(base)
    model.prompt_offset = PromptOffset(64, 32, CLASSES)
    model.prompt_offset.offset.data.copy_(torch.randn(64, 32, generator=torch.Generator().manual_seed(3)))
    folder = save_prompt_tuned(model, tmp_path / "tuned", base_reference(base), ["heart", "arrow", "crescent"])

    assert sorted(path.name for path in folder.iterdir()) == [PROMPT_TUNING_FILE, PROMPT_TUNING_WEIGHTS]
    size = sum(path.stat().st_size for path in folder.iterdir())
    assert size < 64 * 32 * 4 + 4096 and size * 20 < (base / "model.safetensors").stat().st_size
    info = json.loads((folder / PROMPT_TUNING_FILE).read_text())
    assert info["base"]["model"] == str(base.resolve()) and info["base"]["fingerprint"].startswith("sha256:")
    assert info["class_names"] == ["heart", "arrow", "crescent"]

    loaded = GLIP.from_pretrained(folder)
    expected, got = model.eval().predict(image), loaded.predict(image)
    assert _same(expected, got) and len(got) > 0
    # Tuning a tuned prompt again refers to the first base: offsets replace offsets, never stack.
    assert base_reference(folder) == base_reference(base) and base_reference("glip_nano") == "glip_nano"

    # Offsets tuned on other weights would silently detect worse: a changed base is an error.
    tiny_model(seed=1).save_pretrained(base)
    with pytest.raises(ValueError, match="tuned on base model .*base.* load the offsets onto the model"):
        GLIP.from_pretrained(folder)
    shutil.rmtree(base)
    with pytest.raises(FileNotFoundError, match="tuned.*its base model is missing"):
        GLIP.from_pretrained(folder)


def test_a_hub_preset_base_is_named_by_its_preset(
    image: np.ndarray, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A base downloaded from the Hub is stored by name and converted again on load (stubbed here)."""
    from glip.hub import loading
    from glip.hub.presets import Preset
    from glip.transfer.prompt_tuning import base_reference, save_prompt_tuned

    weights = tiny_model().state_dict()
    monkeypatch.setitem(loading.PRESETS, "tiny_hub", Preset("tiny_hub", "test", tiny_model().config, "tiny.pth",
                                                          default_threshold=0.0))
    monkeypatch.setattr(loading, "download_preset_checkpoint", lambda preset: tmp_path / preset.checkpoint)
    monkeypatch.setattr(loading, "read_official_checkpoint", lambda path: {"checkpoint": path})
    monkeypatch.setattr(loading, "convert_official_state_dict",
                        lambda official, fusion_enabled: {key: value.clone() for key, value in weights.items()})
    model = GLIP.from_pretrained("tiny_hub")
    model.prompt_offset = PromptOffset(64, 32, CLASSES)
    model.prompt_offset.offset.data.copy_(torch.randn(64, 32, generator=torch.Generator().manual_seed(5)))
    folder = save_prompt_tuned(model, tmp_path / "tuned", base_reference("tiny_hub"), CLASSES)
    assert json.loads((folder / PROMPT_TUNING_FILE).read_text())["base"]["model"] == "tiny_hub"
    loaded = GLIP.from_pretrained(folder)
    assert loaded.default_threshold == 0.0 and _same(model.eval().predict(image), loaded.predict(image))
