"""End-to-end parity with the official GLIP code on the tiny reference checkpoints.

The whole public path is exercised: ``GLIP.from_official`` (official .pth + partial yacs YAML),
preprocessing, prompts, every stage of the network, and ``predict``'s final detections, which
must match the official ones as a set: same labels, scores within 1e-4, boxes within 0.01 px.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from glip.pipeline import GLIP
from glip.processing import default_offline_vocab_dir, preprocess_images, tokenize_captions

CASES = [("glip_tiny_parity", "a"), ("glip_tiny_parity", "b"), ("glip_tiny_parity", "c"),
         ("glip_tiny_a_parity", "a"), ("glip_tiny_a_parity", "c")]
LEVELS = ("p3", "p4", "p5", "p6", "p7")


@lru_cache(maxsize=None)
def _model(folder: Path) -> GLIP:
    return GLIP.from_official(
        folder / "checkpoint.pth", folder / "config.yaml", folder / "text_config.json", default_offline_vocab_dir()
    )


def _case(reference_dir: Path, folder_name: str, case: str):
    folder = reference_dir / folder_name
    meta = json.loads((folder / f"case_{case}.json").read_text())
    tensors = load_file(folder / f"case_{case}.safetensors")
    return folder, meta, tensors


def _prompt_kwargs(meta: dict) -> dict:
    if meta["prompt_kind"] == "class_list":
        return {"classes": meta["prompt"]}
    return {"caption": meta["prompt"], "spans": [spans for spans in meta["tokens_positive"]]}


def _close(actual: torch.Tensor, expected: torch.Tensor, name: str, relative: float = 1e-4) -> None:
    tolerance = relative * max(1.0, expected.abs().max().item())
    difference = (actual - expected).abs().max().item()
    assert difference <= tolerance, f"{name}: max |diff| {difference:.3g} > {tolerance:.3g}"


@pytest.mark.parametrize(("folder_name", "case"), CASES)
def test_stages_match_official(reference_dir: Path, folder_name: str, case: str) -> None:
    folder, meta, ref = _case(reference_dir, folder_name, case)
    model = _model(folder)
    batch = preprocess_images([folder / meta["image_file"]], meta["demo_min_image_size"])
    assert torch.equal(batch.pixels[0, :, : ref["image"].shape[1], : ref["image"].shape[2]], ref["image"])
    prompt = model.build_prompts(**_prompt_kwargs(meta))[0]
    tokens = tokenize_captions([prompt.caption], model.tokenizer)
    assert torch.equal(tokens.input_ids, ref["text.input_ids"])
    assert torch.equal(tokens.attention_mask, ref["text.attention_mask"])
    if "text.positive_map" in ref:
        _close(prompt.positive_map, ref["text.positive_map"], "positive_map", 1e-6)
    length = int(ref["text.attention_mask"].sum())
    with torch.no_grad():
        visual = model.encode_image(batch.pixels)
        for level, feature in zip(LEVELS, visual):
            _close(feature, ref[f"fpn.{level}"], f"fpn.{level}")
        text = model.encode_text(tokens.input_ids, tokens.attention_mask)
        _close(text.hidden[:, :length], ref["lang.bert.hidden"], "lang.bert.hidden")
        outputs = model.fuse_and_predict(visual, text)
    for index, level in enumerate(LEVELS):
        _close(outputs.box_regression[index], ref[f"head.bbox_reg.{level}"], f"bbox_reg.{level}")
        _close(outputs.centerness[index], ref[f"head.centerness.{level}"], f"centerness.{level}")
        _close(outputs.dot_product_logits[index][..., :length], ref[f"head.dot_product_logits.{level}"],
               f"dot_product_logits.{level}")


@pytest.mark.parametrize(("folder_name", "case"), CASES)
def test_predict_matches_official_detections(reference_dir: Path, folder_name: str, case: str) -> None:
    folder, meta, ref = _case(reference_dir, folder_name, case)
    model = _model(folder)
    detections = model.predict(folder / meta["image_file"], threshold=0.0, min_size=meta["demo_min_image_size"],
                               **_prompt_kwargs(meta))
    order = torch.argsort(ref["det.scores"], descending=True)
    expected_scores, expected_labels, expected_boxes = ref["det.scores"][order], ref["det.labels"][order], ref["det.boxes"][order]
    assert len(detections) == len(expected_scores) == 100
    assert torch.equal(detections.labels, expected_labels)
    assert (detections.scores - expected_scores).abs().max().item() <= 1e-4
    assert (detections.boxes - expected_boxes).abs().max().item() <= 0.01
    names = meta["prompt"] if meta["prompt_kind"] == "class_list" else None
    if names is not None:
        assert detections.phrases == [names[label - 1] for label in detections.labels.tolist()]
