"""The public API: loading, predict (single, batch, chunked prompts), saving, bad input."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glip import GLIP, Detections
from glip.processing import default_offline_vocab_dir

TINY = "glip_tiny_parity"


@lru_cache(maxsize=None)
def _tiny(reference_dir: Path) -> GLIP:
    folder = reference_dir / TINY
    return GLIP.from_official(folder / "checkpoint.pth", folder / "config.yaml", folder / "text_config.json",
                              default_offline_vocab_dir())


@pytest.fixture
def model(reference_dir: Path) -> GLIP:
    return _tiny(reference_dir)


@pytest.fixture
def image_path(reference_dir: Path) -> Path:
    return reference_dir / TINY / "case_a_astronaut.png"


def test_predict_single_image_types(model: GLIP, image_path: Path) -> None:
    from_path = model.predict(image_path, classes=["person", "cup"], threshold=0.3, min_size=160)
    pil = Image.open(image_path)
    from_pil = model.predict(pil, classes=["person", "cup"], threshold=0.3, min_size=160)
    from_array = model.predict(np.asarray(pil.convert("RGB")), classes=["person", "cup"], threshold=0.3, min_size=160)
    assert isinstance(from_path, Detections) and len(from_path) > 0
    for other in (from_pil, from_array):
        assert torch.equal(other.boxes, from_path.boxes) and torch.equal(other.scores, from_path.scores)
    assert set(from_path.labels.tolist()) <= {1, 2}
    assert all(phrase in {"person", "cup"} for phrase in from_path.phrases)
    assert (from_path.scores > 0.3).all()
    assert from_path.boxes[:, 2].max() <= 255 and from_path.boxes[:, 3].max() <= 255


def test_batch_reports_bad_items_and_goes_on(model: GLIP, image_path: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")
    results = model.predict([image_path, broken, tmp_path / "missing.png", image_path], classes=["person"],
                            threshold=0.3, min_size=128)
    assert results[1] is None and results[2] is None
    assert torch.equal(results[0].scores, results[3].scores)
    with pytest.raises(ValueError, match="broken.jpg"):
        model.predict(broken, classes=["person"])


def test_grounding_with_spans(model: GLIP, image_path: Path) -> None:
    caption = "a person holding a red flag"
    detections = model.predict(image_path, caption=caption, spans=[(2, 8), (19, 27)], threshold=0.0, min_size=128)
    assert set(detections.phrases) <= {"person", "red flag"}
    assert set(detections.labels.tolist()) <= {1, 2}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": []}, "classes is empty"),
        ({"classes": ["person", "  "]}, r"classes\[1\]"),
        ({"caption": "   "}, "caption is empty"),
        ({"caption": "a dog", "spans": [(2, 40)]}, r"spans\[0\]"),
        ({"caption": "a dog", "spans": [(3, 2)]}, r"spans\[0\]"),
        ({}, "exactly one of"),
        ({"classes": ["a"], "caption": "a"}, "exactly one of"),
    ],
)
def test_bad_prompts_are_named(model: GLIP, image_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        model.predict(image_path, **kwargs)


def test_long_class_lists_are_chunked_with_global_labels(model: GLIP, image_path: Path) -> None:
    """Past 256 tokens, the prompt splits at class boundaries; labels stay global."""
    classes = [f"object number {index} of many kinds" for index in range(60)]
    prompts = model.build_prompts(classes=classes)
    assert len(prompts) >= 2
    assert [label for prompt in prompts for label in prompt.label_ids] == list(range(1, 61))
    first = prompts[0].phrases
    merged = model.predict(image_path, classes=classes, threshold=0.0, min_size=128, max_detections=300)
    alone = model.predict(image_path, classes=first, threshold=0.0, min_size=128, max_detections=300)
    assert merged.labels.max().item() > len(first), "later chunks produce detections too"
    in_first = merged.labels <= len(first)
    # Each chunk is scored exactly as its own prompt would be (the backbone ran once for both).
    expected = {(round(s, 6), tuple(round(v, 3) for v in b)) for s, b in zip(alone.scores.tolist(), alone.boxes.tolist())}
    got = {(round(s, 6), tuple(round(v, 3) for v in b))
           for s, b in zip(merged.scores[in_first].tolist(), merged.boxes[in_first].tolist())}
    assert got <= expected and len(got) > 0


def test_save_and_load_pretrained_round_trip(model: GLIP, image_path: Path, tmp_path: Path) -> None:
    directory = model.save_pretrained(tmp_path / "tiny")
    assert (directory / "model.safetensors").is_file() and (directory / "tokenizer" / "vocab.txt").is_file()
    loaded = GLIP.from_pretrained(directory)
    first = model.predict(image_path, classes=["person", "tie"], threshold=0.2, min_size=128)
    second = loaded.predict(image_path, classes=["person", "tie"], threshold=0.2, min_size=128)
    assert torch.equal(first.scores, second.scores) and torch.equal(first.boxes, second.boxes)
    assert not list(tmp_path.glob(".tiny.*")), "no staging folder left behind"


def test_unknown_preset_lists_available() -> None:
    with pytest.raises(FileNotFoundError, match="glip_t_a"):
        GLIP.from_pretrained("glip_huge")


def test_offline_preset_download_fails_fast_with_instructions(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError) as error:
        GLIP.from_pretrained("glip_t")
    message = str(error.value)
    assert "glip_tiny_model_o365_goldg_cc_sbu.pth" in message and "huggingface.co/GLIPModel/GLIP" in message


def test_text_padding_does_not_change_outputs(model: GLIP, image_path: Path) -> None:
    """BERT + fusion + head ignore pad tokens: a 256-token prompt equals its unpadded form."""
    from glip.processing import preprocess_images, tokenize_captions

    batch = preprocess_images([image_path], 128)
    tokens = tokenize_captions(["person . tie . "], model.tokenizer)
    length = int(tokens.attention_mask.sum())
    with torch.no_grad():
        visual = model.encode_image(batch.pixels)
        padded = model.fuse_and_predict(visual, model.encode_text(tokens.input_ids, tokens.attention_mask))
        short = model.fuse_and_predict(
            visual, model.encode_text(tokens.input_ids[:, :length], tokens.attention_mask[:, :length]))
    for a, b in zip(padded.dot_product_logits, short.dot_product_logits):
        torch.testing.assert_close(a[..., :length], b, atol=1e-4, rtol=1e-4)
    for a, b in zip(padded.box_regression, short.box_regression):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------ defaults, options, bad images


def test_inference_defaults_come_from_the_config(model: GLIP) -> None:
    defaults = model.inference_defaults
    # The official-format config of the tiny model: 800, no cap in our config (demo path).
    assert model.config.input.max_size_test == 0
    assert (defaults.min_size, defaults.max_size) == (model.config.input.min_size_test, 1333)
    assert defaults.threshold == model.default_threshold
    assert defaults.nms_threshold == model.config.postprocess.nms_threshold
    assert defaults.max_detections == model.config.postprocess.detections_per_image
    # A smaller min_size without max_size gets the cap of that size.
    assert model.inference_options(min_size=224).max_size == 373


def test_default_cap_bounds_an_elongated_image(model: GLIP) -> None:
    batch = model.preprocess([np.zeros((2, 2000, 3), dtype=np.uint8), np.zeros((3, 4000, 3), dtype=np.uint8)])
    assert batch.image_sizes == [(1, 1000), (1, 1333)]
    uncapped = model.preprocess([np.zeros((4, 60, 3), dtype=np.uint8)], min_size=16, max_size=0)
    assert uncapped.image_sizes == [(16, 240)]


@pytest.mark.parametrize(
    ("option", "value"),
    [("threshold", 2.0), ("threshold", float("nan")), ("threshold", "high"), ("max_detections", 0),
     ("nms_threshold", 0.0), ("min_size", 0), ("max_size", -1)],
)
def test_bad_options_are_named_before_any_work(model: GLIP, image_path: Path, option: str, value) -> None:
    with pytest.raises((ValueError, TypeError), match=option):
        model.predict([image_path], classes=["person"], **{option: value})


def test_one_class_as_a_string_is_one_class(model: GLIP, image_path: Path) -> None:
    (prompt,) = model.build_prompts(classes="person")
    assert prompt.phrases == ["person"] and prompt.caption == "person . "
    detections = model.predict(image_path, classes="person", threshold=0.0, min_size=128)
    assert set(detections.phrases) == {"person"}


def test_encode_prompt_takes_a_class_list(model: GLIP, image_path: Path) -> None:
    encoded = model.encode_prompt(["person", "cup"])
    assert encoded.prompt.phrases == ["person", "cup"]
    assert model.encode_prompt("cup").prompt.phrases == ["cup"]
    direct = model.predict(image_path, classes=["person", "cup"], threshold=0.0, min_size=128)
    reused = model.predict_encoded(image_path, encoded, threshold=0.0, min_size=128)
    assert torch.equal(direct.scores, reused.scores)


def test_list_predict_survives_every_bad_image(model: GLIP, image_path: Path, tmp_path: Path, caplog) -> None:
    from tests.test_processing import _png_declaring

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_declaring(30000, 30000))
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    url = "http://example.com/a.jpg"
    with caplog.at_level("ERROR", logger="glip.pipeline"):
        results = model.predict([bomb, image_path, empty, url], classes=["person"], threshold=0.3, min_size=96)
    assert results[0] is None and results[2] is None and results[3] is None
    assert isinstance(results[1], Detections)
    for name in ("bomb.png", "empty.png", "http://example.com/a.jpg"):
        assert name in caplog.text
    for single, message in ((bomb, "bomb.png"), (empty, "empty.png"), (url, "URLs are not supported")):
        with pytest.raises(ValueError, match=message):
            model.predict(single, classes=["person"])


@pytest.mark.parametrize(("shape", "min_size"), [((1, 1), 1), ((1, 1), 40), ((1, 7), 1), ((3, 3), 64)])
def test_tiny_image_gives_no_empty_boxes(model: GLIP, shape: tuple[int, int], min_size: int) -> None:
    # At 1x1 px every box clips to the point (0, 0): the legacy +1 width calls it one pixel.
    detections = model.predict(np.full((*shape, 3), 128, dtype=np.uint8), classes=["person", "cup"], threshold=0.0,
                               min_size=min_size, max_detections=1000)
    boxes = detections.boxes
    assert bool((boxes[:, 2] > boxes[:, 0]).all()) and bool((boxes[:, 3] > boxes[:, 1]).all())


def test_class_agnostic_nms_argument_gives_one_label_per_place(model: GLIP, image_path: Path) -> None:
    from glip.modeling.postprocess import box_iou_legacy

    per_label = model.predict(image_path, classes=["person", "astronaut"], threshold=0.0, min_size=96)
    agnostic = model.predict(image_path, classes=["person", "astronaut"], threshold=0.0, min_size=96,
                             class_agnostic_nms=True)
    assert len(agnostic) < len(per_label)
    iou = box_iou_legacy(agnostic.boxes, agnostic.boxes).fill_diagonal_(0)
    assert float(iou.max()) <= model.config.postprocess.nms_threshold


def test_processor_apart_from_the_network_reproduces_predict(model: GLIP, image_path: Path) -> None:
    """GLIPProcessor owns prompts, tokens, image transform and decoding; the network only computes."""
    from glip.processing import GLIPProcessor

    processor = GLIPProcessor(model.config, default_threshold=0.2, tokenizer=model.tokenizer)
    assert not isinstance(processor, torch.nn.Module)
    (prompt,) = processor.build_prompts(classes=["person", "cup"])
    tokens = processor.tokenize(prompt)
    batch = processor.preprocess([image_path], min_size=128)
    with torch.no_grad():
        visual = model.encode_image(batch.pixels)
        outputs = model.fuse_and_predict(visual, model.encode_text(tokens.input_ids, tokens.attention_mask))
    anchors = model.anchor_generator([tuple(level.shape[-2:]) for level in visual], batch.pixels.device)
    (detections,) = processor.postprocessor()(
        outputs.box_regression, outputs.centerness, outputs.dot_product_logits, anchors, batch.image_sizes,
        prompt.positive_map, label_ids=prompt.label_ids, phrases=prompt.phrases, original_sizes=batch.original_sizes)
    detections = detections.above(processor.inference_defaults.threshold)
    expected = model.predict(image_path, classes=["person", "cup"], threshold=0.2, min_size=128)
    assert torch.equal(detections.scores, expected.scores) and torch.equal(detections.boxes, expected.boxes)
    assert detections.phrases == expected.phrases


def test_bf16_switch_runs_half_precision_and_restores_float32(model: GLIP, image_path: Path, monkeypatch) -> None:
    classes = ["person", "helmet", "flag"]
    exact = model.predict(image_path, classes=classes, threshold=0.0, min_size=160)
    seen: list[torch.dtype] = []
    fuse = model.fuse_and_predict

    def recording(visual, text):
        seen.append(visual[0].dtype)  # the FPN's output
        return fuse(visual, text)

    monkeypatch.setattr(model, "fuse_and_predict", recording)
    half = model.predict(image_path, classes=classes, threshold=0.0, min_size=160, dtype="bf16")
    assert seen == [torch.bfloat16]  # the network ran under bf16 autocast
    assert half.scores.dtype == torch.float32 and half.boxes.dtype == torch.float32
    assert model.inference_dtype == torch.float32  # the call did not change the model's setting
    # bf16 keeps 8 bits of mantissa: scores agree to a few 1e-3, not to the float32 tolerances.
    top = min(len(exact), len(half), 5)
    torch.testing.assert_close(half.scores[:top], exact.scores[:top], atol=0.03, rtol=0)
    again = model.predict(image_path, classes=classes, threshold=0.0, min_size=160)
    torch.testing.assert_close(again.scores, exact.scores, atol=0, rtol=0)
    with model.compute_dtype(torch.bfloat16):
        assert model.predict(image_path, classes=classes, threshold=0.0, min_size=160).scores.shape == half.scores.shape
    with pytest.raises(ValueError, match="dtype must be one of"):
        model.predict(image_path, classes=classes, min_size=160, dtype="int8")
