"""Pre- and post-processing against tensors produced by the official GLIP demo path.

Reference: ``tests/reference/glip_tiny{,_a}_parity`` (data card quirks 1, 2, 10-12).
* image: the demo transform of the stored PNG (PIL bilinear resize, BGR 0-255, normalised) — exact;
* text: token ids, attention mask and positive map of the prompt — exact;
* anchors of every level — exact;
* post-processing fed with the stored head outputs: candidates (a set: the official per-level order
  is that of an unsorted top-k), detections after NMS + top-100 (resized-image coordinates) and
  after rescaling to the original image — same labels, scores within 1e-5, boxes within 1e-3 px.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from glip.modeling.anchors import AnchorGenerator
from glip.modeling.postprocess import Detections, GroundingPostProcessor
from glip.processing import (
    build_class_prompts,
    build_grounding_prompt,
    default_offline_vocab_dir,
    find_phrase_spans,
    load_tokenizer,
    preprocess_image,
    tokenize_captions,
)

CASES = [
    ("glip_tiny_parity", "a"),
    ("glip_tiny_parity", "b"),
    ("glip_tiny_parity", "c"),
    ("glip_tiny_a_parity", "a"),
    ("glip_tiny_a_parity", "c"),
]
LEVELS = ("p3", "p4", "p5", "p6", "p7")
SCORE_ATOL = 1e-5
BOX_ATOL = 1e-3


@cache
def _load_case(reference_dir: Path, model: str, case: str) -> tuple[dict[str, torch.Tensor], dict]:
    folder = reference_dir / model
    return load_file(folder / f"case_{case}.safetensors"), json.loads((folder / f"case_{case}.json").read_text())


@cache
def _tokenizer():
    return load_tokenizer(default_offline_vocab_dir())


def _prompt(meta: dict):
    """The case's prompt built as the demo does: a class list, or a caption with custom entities."""
    if meta["prompt_kind"] == "class_list":
        (prompt,) = build_class_prompts(meta["prompt"], _tokenizer())
        return prompt
    spans = []
    for entity in meta["custom_entity"]:
        if "char_bounds" in entity:
            spans.append(tuple(entity["char_bounds"]))
        else:
            spans.extend(find_phrase_spans(meta["prompt"], [entity["span"]]))
    return build_grounding_prompt(meta["prompt"], spans, _tokenizer())


@pytest.mark.parametrize(("model", "case"), CASES)
def test_image_transform(reference_dir: Path, model: str, case: str) -> None:
    tensors, meta = _load_case(reference_dir, model, case)
    image, original_size = preprocess_image(reference_dir / model / meta["image_file"], meta["demo_min_image_size"])
    assert list(original_size) == meta["original_hw"]
    assert image.shape == tensors["image"].shape
    assert torch.equal(image, tensors["image"])


@pytest.mark.parametrize(("model", "case"), CASES)
def test_text_inputs(reference_dir: Path, model: str, case: str) -> None:
    tensors, meta = _load_case(reference_dir, model, case)
    prompt = _prompt(meta)
    assert prompt.caption == meta["caption_string_fed_to_model"]
    assert [[list(span) for span in spans] for spans in prompt.spans] == meta["tokens_positive"]
    text = tokenize_captions([prompt.caption], _tokenizer(), max_len=256)
    assert torch.equal(text.input_ids, tensors["text.input_ids"])
    assert torch.equal(text.attention_mask, tensors["text.attention_mask"])
    assert torch.equal(prompt.positive_map, tensors["text.positive_map"])
    expected = {int(label): tokens for label, tokens in meta["positive_map_label_to_token"].items()}
    assert prompt.label_to_tokens() == expected


@pytest.mark.parametrize(("model", "case"), CASES)
def test_anchors(reference_dir: Path, model: str, case: str) -> None:
    tensors, _ = _load_case(reference_dir, model, case)
    grid_sizes = [tuple(tensors[f"head.bbox_reg.{level}"].shape[-2:]) for level in LEVELS]
    for level, anchors in zip(LEVELS, AnchorGenerator()(grid_sizes)):
        assert torch.equal(anchors, tensors[f"anchors.{level}"]), level


def _assert_same_sorted(ours: Detections, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> None:
    """Equal as sets of detections; the reference scores are distinct, so sorting aligns them."""
    assert len(ours) == scores.shape[0]
    order = torch.argsort(ours.scores, descending=True)
    expected_order = torch.argsort(scores, descending=True)
    assert torch.equal(ours.labels[order], labels[expected_order])
    torch.testing.assert_close(ours.scores[order], scores[expected_order], rtol=0, atol=SCORE_ATOL)
    torch.testing.assert_close(ours.boxes[order], boxes[expected_order], rtol=0, atol=BOX_ATOL)


def _assert_same_set(ours: Detections, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor) -> None:
    """Equal as multisets, matching each candidate to the closest of its label (scores can tie)."""
    assert len(ours) == scores.shape[0]
    for label in labels.unique().tolist():
        mine = ours.labels == label
        theirs = labels == label
        assert int(mine.sum()) == int(theirs.sum()), f"label {label}"
        mine_rows = torch.cat([ours.boxes[mine], ours.scores[mine, None] / SCORE_ATOL * BOX_ATOL], dim=1)
        their_rows = torch.cat([boxes[theirs], scores[theirs, None] / SCORE_ATOL * BOX_ATOL], dim=1)
        distance = torch.cdist(mine_rows.double(), their_rows.double(), p=float("inf"))
        nearest = distance.argmin(dim=1)
        assert nearest.unique().numel() == nearest.numel(), f"label {label}: matching is not one-to-one"
        assert float(distance.min(dim=1).values.max()) <= BOX_ATOL, f"label {label}"


@pytest.mark.parametrize(("model", "case"), CASES)
def test_postprocess(reference_dir: Path, model: str, case: str) -> None:
    tensors, meta = _load_case(reference_dir, model, case)
    thresholds = meta["thresholds"]
    processor = GroundingPostProcessor(
        score_threshold=thresholds["ATSS.INFERENCE_TH(pre_nms_thresh)"],
        pre_nms_top_n=thresholds["ATSS.PRE_NMS_TOP_N(per level)"],
        nms_threshold=thresholds["ATSS.NMS_TH"],
        detections_per_image=thresholds["ATSS.DETECTIONS_PER_IMG"],
        score_aggregation=thresholds["SCORE_AGG"],
        min_box_size=thresholds["min_size"],
    )
    regression = [tensors[f"head.bbox_reg.{level}"] for level in LEVELS]
    centerness = [tensors[f"head.centerness.{level}"] for level in LEVELS]
    # The stored logits cover the L real tokens only; the positive map never points past them.
    logits = [tensors[f"head.dot_product_logits.{level}"] for level in LEVELS]
    anchors = AnchorGenerator()([tuple(r.shape[-2:]) for r in regression])
    image_size = tuple(meta["preprocessed_chw"][1:])
    positive_map = tensors["text.positive_map"]

    (candidates,) = processor.select_candidates(regression, centerness, logits, anchors, [image_size], positive_map)
    prefix = "postproc.candidates.img0"
    _assert_same_set(candidates, tensors[f"{prefix}.boxes"], tensors[f"{prefix}.scores"], tensors[f"{prefix}.labels"])

    detections = processor.select_detections(candidates)
    prefix = "postproc.after_nms_topk.img0"
    _assert_same_sorted(
        detections, tensors[f"{prefix}.boxes"], tensors[f"{prefix}.scores"], tensors[f"{prefix}.labels"]
    )

    (rescaled,) = processor(
        regression, centerness, logits, anchors, [image_size], positive_map,
        phrases=_prompt(meta).phrases, original_sizes=[tuple(meta["original_hw"])],
    )
    _assert_same_sorted(rescaled, tensors["det.boxes"], tensors["det.scores"], tensors["det.labels"])
    assert rescaled.phrases == [_prompt(meta).phrases[label - 1] for label in rescaled.labels.tolist()]
