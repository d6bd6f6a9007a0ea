"""Unit tests of glip.processing: image loading and transform, batching, tokenisation, prompts."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from glip import quirks
from glip.processing import (
    ImageBatch,
    InferenceOptions,
    batch_images,
    build_class_prompts,
    build_grounding_prompt,
    class_list_caption,
    create_positive_map,
    default_max_size,
    default_offline_vocab_dir,
    find_phrase_spans,
    image_to_tensor,
    load_image,
    load_tokenizer,
    preprocess_image,
    preprocess_images,
    resized_size,
    tokenize_captions,
)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(default_offline_vocab_dir())


def _random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------- images


def test_load_rgb_png_roundtrip(tmp_path: Path) -> None:
    array = _random_rgb(9, 13)
    Image.fromarray(array).save(tmp_path / "rgb.png")
    image = load_image(tmp_path / "rgb.png")
    assert image.mode == "RGB" and image.size == (13, 9)
    np.testing.assert_array_equal(np.asarray(image), array)
    # str paths work too
    np.testing.assert_array_equal(np.asarray(load_image(str(tmp_path / "rgb.png"))), array)


def test_load_grayscale_png_replicates_channels(tmp_path: Path) -> None:
    gray = np.arange(60, dtype=np.uint8).reshape(6, 10)
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    array = np.asarray(load_image(tmp_path / "gray.png"))
    assert array.shape == (6, 10, 3)
    for channel in range(3):
        np.testing.assert_array_equal(array[:, :, channel], gray)


def test_load_rgba_drops_alpha(tmp_path: Path) -> None:
    rgba = np.concatenate([_random_rgb(5, 7), np.full((5, 7, 1), 17, np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "rgba.png")), rgba[:, :, :3])


def test_load_palette_image(tmp_path: Path) -> None:
    rgb = Image.fromarray(_random_rgb(8, 8))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(tmp_path / "palette.png")
    loaded = load_image(tmp_path / "palette.png")
    assert loaded.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(loaded), np.asarray(palette.convert("RGB")))


def test_load_16_bit_grayscale_scales_to_8_bit(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 100, 65535, 300]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    array = np.asarray(load_image(tmp_path / "deep.png"))
    np.testing.assert_array_equal(array[0, :, 0], [0, 100, 255, 1])


def test_load_applies_exif_orientation(tmp_path: Path) -> None:
    image = Image.fromarray(_random_rgb(10, 20))  # 20 wide, 10 high
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_image(tmp_path / "rotated.jpg").size == (10, 20)
    assert load_image(tmp_path / "rotated.jpg", exif_transpose=False).size == (20, 10)


def test_load_numpy_arrays() -> None:
    rgb = _random_rgb(4, 6)
    np.testing.assert_array_equal(np.asarray(load_image(rgb)), rgb)
    np.testing.assert_array_equal(np.asarray(load_image(rgb[:, :, ::-1], channel_order="BGR")), rgb)
    gray = rgb[:, :, 0]
    np.testing.assert_array_equal(np.asarray(load_image(gray))[:, :, 1], gray)
    np.testing.assert_array_equal(np.asarray(load_image(gray[:, :, None]))[:, :, 2], gray)
    rgba = np.concatenate([rgb, np.zeros((4, 6, 1), np.uint8)], axis=2)
    np.testing.assert_array_equal(np.asarray(load_image(rgba)), rgb)
    deep = (rgb.astype(np.uint16) * 257)
    np.testing.assert_array_equal(np.asarray(load_image(deep)), rgb)


def test_load_pil_image_keeps_rgb_and_converts_others() -> None:
    rgb = Image.fromarray(_random_rgb(3, 5))
    np.testing.assert_array_equal(np.asarray(load_image(rgb)), np.asarray(rgb))
    assert load_image(rgb.convert("L")).mode == "RGB"
    assert load_image(rgb.convert("CMYK")).mode == "RGB"


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")


def test_non_image_file_is_a_clear_value_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image")
    with pytest.raises(ValueError, match="notes.png.*not a recognised image"):
        load_image(path)


def test_truncated_png_is_a_clear_value_error(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(_random_rgb(64, 64)).save(buffer, format="PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ValueError, match="cut.png.*truncated or corrupt"):
        load_image(path)


def test_truncated_jpeg_is_a_clear_value_error(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(_random_rgb(64, 64)).save(buffer, format="JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[:400])
    with pytest.raises(ValueError, match="cut.jpg"):
        load_image(path)


def test_directory_is_a_clear_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="directory"):
        load_image(tmp_path)


def test_unsupported_inputs_raise() -> None:
    with pytest.raises(TypeError, match="path, a PIL image or a numpy array"):
        load_image(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="float"):
        load_image(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        load_image(np.zeros((4, 4, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="shape"):
        load_image(np.zeros((2, 4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="empty"):
        load_image(np.zeros((0, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="channel_order"):
        load_image(np.zeros((4, 4, 3), dtype=np.uint8), channel_order="RBG")
    with pytest.raises(ValueError, match="mode 'F'"):
        load_image(Image.fromarray(np.zeros((4, 4), dtype=np.float32)))


def test_resized_size_matches_official_rules() -> None:
    assert resized_size(301, 417, 160) == (160, 221)  # case b of the reference data
    assert resized_size(417, 301, 160) == (221, 160)
    assert resized_size(256, 256, 192) == (192, 192)
    assert resized_size(160, 500, 160) == (160, 500)  # already at size
    # evaluation: the longer side is capped (Resize.get_size, rounding the reduced shorter side)
    assert resized_size(480, 640, 800, 1333) == (800, 1066)
    assert resized_size(500, 2000, 800, 1333) == (333, 1332)
    with pytest.raises(ValueError, match="min_size"):
        resized_size(10, 10, 0)


@pytest.mark.parametrize("size", [(301, 417), (417, 301), (97, 97), (50, 333)])
def test_resize_equals_torchvision_resize_on_pil(size: tuple[int, int]) -> None:
    """The demo's ``T.Resize(m)`` on a PIL image, reproduced without torchvision."""
    array = _random_rgb(*size, seed=size[0])
    tensor, original = preprocess_image(array, 160)
    expected = T.Compose(
        [
            T.ToPILImage(),
            T.Resize(160),
            T.ToTensor(),
            T.Lambda(lambda x: x * 255),
            T.Normalize(mean=quirks.BGR_PIXEL_MEAN, std=quirks.BGR_PIXEL_STD),
        ]
    )(np.ascontiguousarray(array[:, :, ::-1]))
    assert original == size
    assert torch.equal(tensor, expected)


def test_image_to_tensor_is_bgr_normalised() -> None:
    image = Image.fromarray(np.full((2, 3, 3), (10, 20, 30), dtype=np.uint8))
    tensor = image_to_tensor(image)
    assert tensor.shape == (3, 2, 3) and tensor.dtype == torch.float32
    expected = [(30 - 103.53) / 57.375, (20 - 116.28) / 57.12, (10 - 123.675) / 58.395]
    torch.testing.assert_close(tensor[:, 0, 0], torch.tensor(expected), rtol=0, atol=1e-5)


def test_batch_images_pads_with_zeros_to_32() -> None:
    first = torch.ones(3, 40, 50)
    second = torch.full((3, 33, 70), 2.0)
    batch, sizes = batch_images([first, second])
    assert batch.shape == (2, 3, 64, 96)
    assert sizes == [(40, 50), (33, 70)]
    assert torch.equal(batch[0, :, :40, :50], first) and batch[0, :, 40:].abs().sum() == 0
    assert batch[0, :, :, 50:].abs().sum() == 0
    assert torch.equal(batch[1, :, :33, :70], second) and batch[1, :, 33:].abs().sum() == 0
    unpadded, _ = batch_images([first], size_divisibility=0)
    assert unpadded.shape == (1, 3, 40, 50)
    with pytest.raises(ValueError, match="at least one"):
        batch_images([])
    with pytest.raises(ValueError, match=r"images\[1\]"):
        batch_images([first, torch.ones(1, 4, 4)])


def test_preprocess_images_batch(tmp_path: Path) -> None:
    Image.fromarray(_random_rgb(30, 60)).save(tmp_path / "wide.png")
    batch = preprocess_images([tmp_path / "wide.png", _random_rgb(50, 40)], 20)
    assert isinstance(batch, ImageBatch)
    assert batch.pixels.shape == (2, 3, 32, 64)
    assert batch.image_sizes == [(20, 40), (25, 20)]
    assert batch.original_sizes == [(30, 60), (50, 40)]
    single, _ = preprocess_image(tmp_path / "wide.png", 20)
    assert torch.equal(batch.pixels[0, :, :20, :40], single)
    with pytest.raises(TypeError, match="sequence"):
        preprocess_images(tmp_path / "wide.png", 20)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------- tokenizer/text


def test_offline_vocab_is_bert_base_uncased(tokenizer) -> None:
    assert (default_offline_vocab_dir() / "vocab.txt").is_file()
    assert tokenizer.vocab_size == 30522
    ids = tokenizer("A Person.")["input_ids"]
    assert ids == [101, 1037, 2711, 1012, 102]


def test_load_tokenizer_needs_vocab(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="vocab.txt"):
        load_tokenizer(tmp_path)


def test_tokenize_captions_pads_and_truncates(tokenizer) -> None:
    text = tokenize_captions(["person . cup . ", "word " * 400], tokenizer, max_len=256)
    assert text.input_ids.shape == (2, 256) and text.input_ids.dtype == torch.int64
    assert text.attention_mask[0].sum() == 6 and text.input_ids[0, 6:].abs().sum() == 0
    assert text.attention_mask[1].sum() == 256 and text.input_ids[1, -1] == 102
    with pytest.raises(TypeError, match="sequence"):
        tokenize_captions("person", tokenizer)


def test_class_list_caption() -> None:
    caption, spans = class_list_caption(["person", "traffic light"])
    assert caption == "person . traffic light . "
    assert spans == [(0, 6), (9, 22)]
    assert [caption[b:e] for b, e in spans] == ["person", "traffic light"]


def test_positive_map_fallbacks_for_spaces(tokenizer) -> None:
    caption = "a big  dog"
    encoding = tokenizer(caption)
    # [CLS] a big dog [SEP]: "big" is token 2, "dog" token 3.
    # A span starting on a space falls back to begin+1 (or +2), one ending on a space to end-2.
    positive_map = create_positive_map(encoding, [[(1, 5)], [(6, 10)], [(2, 6)], [(5, 7)]], max_len=8)
    assert positive_map.shape == (4, 8)
    assert positive_map[0].nonzero().flatten().tolist() == [2]
    assert positive_map[1].nonzero().flatten().tolist() == [3]
    assert positive_map[2].nonzero().flatten().tolist() == [2]
    # Only spaces: the fallbacks land on "dog" (begin+2) and "big" (end-3), an empty range.
    assert positive_map[3].abs().sum() == 0
    torch.testing.assert_close(positive_map[0, 2], torch.tensor(1 / (1 + quirks.POSITIVE_MAP_EPS)))


def test_positive_map_rows_normalised(tokenizer) -> None:
    (prompt,) = build_class_prompts(["traffic light", "person"], tokenizer)
    assert prompt.label_to_tokens() == {1: [1, 2], 2: [4]}
    torch.testing.assert_close(prompt.positive_map.sum(1), torch.ones(2), rtol=0, atol=1e-5)
    assert prompt.positive_map.shape == (2, 256)


def test_grounding_prompt(tokenizer) -> None:
    caption = "a cup of coffee on a saucer next to a small spoon."
    spans = [(2, 15), [(21, 27)]] + find_phrase_spans(caption, ["small spoon"])
    prompt = build_grounding_prompt(caption, spans, tokenizer)
    assert prompt.phrases == ["cup of coffee", "saucer", "small spoon"]
    assert prompt.label_ids == [1, 2, 3]
    assert prompt.label_to_tokens() == {1: [2, 3, 4], 2: [7, 8], 3: [12, 13]}
    with pytest.raises(ValueError, match="does not occur"):
        find_phrase_spans(caption, ["teapot"])
    with pytest.raises(ValueError, match=r"spans\[0\]"):
        build_grounding_prompt(caption, [(10, 200)], tokenizer)
    with pytest.raises(ValueError, match="label_ids"):
        build_grounding_prompt(caption, [(2, 15)], tokenizer, label_ids=[1, 2])


def test_class_prompts_chunk_at_class_boundaries_with_global_labels(tokenizer) -> None:
    classes = [f"class {name}" for name in ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta")] * 6
    classes += ["traffic light", "hair drier"]
    prompts = build_class_prompts(classes, tokenizer, max_len=24)
    assert len(prompts) > 1
    label_ids = [label for prompt in prompts for label in prompt.label_ids]
    assert label_ids == list(range(1, len(classes) + 1))
    for prompt in prompts:
        encoded = tokenizer(prompt.caption)["input_ids"]
        assert len(encoded) <= 24
        assert prompt.positive_map.shape == (len(prompt.label_ids), 24)
        caption, _ = class_list_caption(prompt.phrases)
        assert prompt.caption == caption
        for label, phrase, tokens in zip(prompt.label_ids, prompt.phrases, prompt.label_to_tokens().values()):
            assert phrase == classes[label - 1]
            assert tokenizer.decode([encoded[t] for t in tokens]) == phrase
    # A list that fits stays one prompt, identical to the demo's.
    (single,) = build_class_prompts(["person", "cup"], tokenizer)
    assert single.caption == "person . cup . " and single.label_ids == [1, 2]


def test_class_prompts_label_cap(tokenizer) -> None:
    prompts = build_class_prompts([f"name{i}" for i in range(10)], tokenizer, max_labels_per_prompt=4)
    assert [prompt.label_ids for prompt in prompts] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]


def test_class_prompts_bad_inputs(tokenizer) -> None:
    with pytest.raises(ValueError, match="empty"):
        build_class_prompts([], tokenizer)
    with pytest.raises(ValueError, match=r"classes\[1\]"):
        build_class_prompts(["cat", "  "], tokenizer)
    with pytest.raises(TypeError, match="not one string"):
        build_class_prompts("cat", tokenizer)
    with pytest.raises(ValueError, match="alone needs"):
        build_class_prompts(["cat", "very " * 40 + "long"], tokenizer, max_len=32)
    with pytest.raises(ValueError, match="max_labels_per_prompt"):
        build_class_prompts(["cat"], tokenizer, max_labels_per_prompt=0)


# ------------------------------------------------------------------ size caps and refused images


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header declares ``width x height`` (no pixel data)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_extreme_aspect_ratio_keeps_one_pixel_and_the_cap() -> None:
    # 2000x2 at min_size 224 under the default cap 373: the shorter side would round to 0 px.
    assert resized_size(2, 2000, 224, 373) == (1, 373)
    assert resized_size(2000, 2, 224, 373) == (373, 1)
    tensor, original = preprocess_image(_random_rgb(2, 2000), 224, 373)
    assert original == (2, 2000) and tuple(tensor.shape) == (3, 1, 373)


def test_default_cap_follows_the_official_test_ratio() -> None:
    assert default_max_size(800) == 1333
    assert default_max_size(224) == 373
    assert default_max_size(800, config_max_size=1000) == 1000  # a config's own cap wins
    # A 2000x2 image under the default cap stays tiny (uncapped it would be 224 x 224000).
    assert resized_size(2, 2000, 224, default_max_size(224)) == (1, 373)


def test_url_is_refused_with_advice() -> None:
    with pytest.raises(ValueError, match="URLs are not supported: download the image first"):
        load_image("https://example.com/cat.jpg")


def test_empty_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.png.*empty \(0 bytes\)"):
        load_image(path)


def test_decompression_bomb_is_a_value_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_declaring(30000, 30000))
    assert path.stat().st_size < 100
    with pytest.raises(ValueError, match=r"bomb\.png.*decompression bomb"):
        load_image(path)


def test_large_photo_between_pil_limits_loads(tmp_path: Path, monkeypatch) -> None:
    """PIL only warns between MAX_IMAGE_PIXELS and twice that (a 12000x9000 photo with the default
    limit); such a file loads, even where warnings are errors. Scaled down: limit 1000 px."""
    import warnings

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "large.png"
    Image.fromarray(_random_rgb(30, 40)).save(path)  # 1200 px: between 1000 and 2000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(path).size == (40, 30)


# ---------------------------------------------------------------------- options and prompt checks


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"threshold": 1.5}, ValueError, "threshold"),
        ({"threshold": float("nan")}, ValueError, "threshold"),
        ({"threshold": "0.5"}, TypeError, "threshold"),
        ({"max_detections": 0}, ValueError, "max_detections"),
        ({"max_detections": 2.5}, TypeError, "max_detections"),
        ({"nms_threshold": 0.0}, ValueError, "nms_threshold"),
        ({"nms_threshold": 1.2}, ValueError, "nms_threshold"),
        ({"min_size": 0}, ValueError, "min_size"),
        ({"max_size": -1}, ValueError, "max_size"),
    ],
)
def test_inference_options_name_the_bad_option(overrides: dict, error: type, message: str) -> None:
    defaults = InferenceOptions(min_size=800, max_size=1333, threshold=0.7, nms_threshold=0.6, max_detections=100)
    with pytest.raises(error, match=message):
        defaults.with_overrides(**overrides)
    assert defaults.with_overrides(threshold=None, max_detections=5).max_detections == 5


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("postprocess", {"nms_threshold": 1.5}, "postprocess.nms_threshold"),
        ("postprocess", {"score_threshold": -0.1}, "postprocess.score_threshold"),
        ("postprocess", {"detections_per_image": 0}, "postprocess.detections_per_image"),
        ("input", {"min_size_test": 0}, "input.min_size_test"),
        ("input", {"max_size_test": -5}, "input.max_size_test"),
    ],
)
def test_config_json_values_are_checked(section: str, values: dict, message: str) -> None:
    from glip.config import GLIPConfig

    with pytest.raises(ValueError, match=message):
        GLIPConfig.from_dict({section: values})


def test_float_and_reversed_spans_are_refused(tokenizer) -> None:
    with pytest.raises(TypeError, match=r"spans\[0\].*integer"):
        build_grounding_prompt("a red flag", [(2.0, 5)], tokenizer)
    with pytest.raises(ValueError, match=r"spans\[1\].*begin < end"):
        build_grounding_prompt("a red flag", [(2, 5), (9, 6)], tokenizer)
    with pytest.raises(ValueError, match=r"spans\[0\].*10 characters"):
        build_grounding_prompt("a red flag", [(2, 11)], tokenizer)
    with pytest.raises(TypeError, match=r"spans must be a list.*\.\.\.$"):
        build_grounding_prompt("a red flag", "2:5 " * 100, tokenizer)


def test_unscorable_phrases_are_warned(tokenizer, caplog) -> None:
    with caplog.at_level("WARNING", logger="glip.processing"):
        prompt = build_class_prompts(["cat", "\u200b"], tokenizer)[0]
    assert prompt.positive_map[1].sum() == 0
    assert "'\\u200b'" in caplog.text and "never be detected" in caplog.text
    caplog.clear()
    # A span past the token limit: the map is 8 tokens wide, "flag" is token 9.
    caption = "one two three four five six seven eight flag"
    with caplog.at_level("WARNING", logger="glip.processing"):
        build_grounding_prompt(caption, [(0, 3), (40, 44)], tokenizer, max_len=8)
    assert "'flag'" in caplog.text and "'one'" not in caplog.text


def test_long_user_text_is_cut_in_messages(tokenizer) -> None:
    huge = " ".join(["word"] * 1000)
    with pytest.raises(ValueError) as error:
        build_class_prompts([huge], tokenizer, max_len=64)
    assert len(str(error.value)) < 200 and "..." in str(error.value)
    with pytest.raises(ValueError) as error:
        find_phrase_spans(huge, ["absent"])
    assert len(str(error.value)) < 250
