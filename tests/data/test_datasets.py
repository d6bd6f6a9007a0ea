"""Training datasets, transforms, prompts and collate on tiny fixtures written in tmp_path."""

from __future__ import annotations

import json
import logging
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from glip.data import (
    Collator,
    DatasetOptions,
    DetectionDataset,
    GroundingDataset,
    MixedDataset,
    ODVGDataset,
    TestTransforms,
    TrainTransforms,
    collate,
)
from glip.data.prompts import clean_category_name, full_category_prompt, sampled_category_prompt
from glip.data.transforms import flip_boxes, swap_left_right
from glip.processing import default_offline_vocab_dir, load_tokenizer

DATA_LOGGER = "glip.data.datasets"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(default_offline_vocab_dir())


def _identity_transforms() -> TestTransforms:
    """Resize to the image's own shorter side: boxes keep their coordinates."""
    return TestTransforms(min_size=40, max_size=None)


def _write_image(path: Path, height: int = 40, width: int = 60, seed: int = 0) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _coco(
    tmp_path: Path, annotations: list[dict], categories: list[dict] | None = None, name: str = "coco.json"
) -> Path:
    _write_image(tmp_path / "img1.png", seed=1)
    _write_image(tmp_path / "img2.png", seed=2)
    data = {
        "images": [
            {"id": 2, "file_name": "img2.png", "height": 40, "width": 60},
            {"id": 1, "file_name": "img1.png", "height": 40, "width": 60},
        ],
        "annotations": annotations,
        "categories": categories
        or [{"id": 1, "name": "cat"}, {"id": 5, "name": "dog"}, {"id": 3, "name": "traffic_light"}],
    }
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _simple_annotations() -> list[dict]:
    return [
        {"id": 10, "image_id": 1, "category_id": 5, "bbox": [10, 5, 20, 10]},
        {"id": 11, "image_id": 1, "category_id": 1, "bbox": [0, 0, 30, 30]},
        {"id": 12, "image_id": 2, "category_id": 3, "bbox": [30, 10, 10, 20]},
    ]


# ------------------------------------------------------------------------------------------ detection


def test_detection_deterministic_prompt_and_boxes(tmp_path: Path, tokenizer) -> None:
    path = _coco(tmp_path, _simple_annotations())
    dataset = DetectionDataset(path, tmp_path, tokenizer, transforms=_identity_transforms(), deterministic=True)
    assert len(dataset) == 2
    sample = dataset[0]  # image ids are sorted: id 1 first
    assert sample.image_id == 1
    # Categories in file order (contiguous ids 1, 2, 3), names cleaned, ". " between, none at the end.
    assert sample.caption == "cat. dog. traffic light"
    assert sample.labels.tolist() == [2, 1]
    torch.testing.assert_close(sample.boxes, torch.tensor([[10.0, 5.0, 29.0, 14.0], [0.0, 0.0, 29.0, 29.0]]))
    assert sample.tokens_positive == [[(5, 8)], [(0, 3)]]
    assert sample.positive_map.shape == (2, 256)
    torch.testing.assert_close(sample.positive_map.sum(1), torch.ones(2), atol=1e-5, rtol=0)
    assert sample.image.shape == (3, 40, 60)
    assert sample.original_size == (40, 60)


def test_dataset_options_object_and_keyword_settings_agree(tmp_path: Path, tokenizer) -> None:
    """One options dataclass for every format; keywords replace its fields, unknown ones are named."""
    path = _coco(tmp_path, _simple_annotations())
    options = DatasetOptions(_identity_transforms(), deterministic=True, max_query_len=64, seed=4)
    by_object = DetectionDataset(path, tmp_path, tokenizer, options)
    by_keywords = DetectionDataset(path, tmp_path, tokenizer, transforms=options.transforms, deterministic=True,
                                   max_query_len=64, seed=4)
    assert by_object.options == by_keywords.options == options
    assert by_object[0].caption == by_keywords[0].caption and by_object[0].positive_map.shape[1] == 64
    with pytest.raises(TypeError, match=r"num_negative.*the dataset options are \['transforms'"):
        DetectionDataset(path, tmp_path, tokenizer, num_negative=3)
    with pytest.raises(ValueError, match="num_negatives must be >= 0, got -1"):
        DatasetOptions(num_negatives=-1)
    with pytest.raises(ValueError, match="max_query_len must be at least 3"):
        GroundingDataset(path, tmp_path, tokenizer, options, max_query_len=2)


def test_crowd_ignored_and_empty_images_left_out(tmp_path: Path, tokenizer) -> None:
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 1},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10]},
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [5, 5, 1, 10]},  # 1 px wide only
    ]
    path = _coco(tmp_path, annotations)
    dataset = DetectionDataset(path, tmp_path, tokenizer, transforms=_identity_transforms(), deterministic=True)
    assert [record.image_id for record in dataset.records] == [1]
    assert dataset[0].boxes.shape == (1, 4)
    kept = DetectionDataset(
        path, tmp_path, tokenizer, transforms=_identity_transforms(), deterministic=True, keep_empty_images=True
    )
    assert len(kept) == 2
    assert kept[1].boxes.shape == (0, 4)  # the 1-pixel box is empty in the inclusive convention


def test_degenerate_boxes_counted_with_one_warning(tmp_path: Path, tokenizer, caplog) -> None:
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 10, 10]},  # fine
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 30, 30, 30]},  # reaches outside: clipped
        {"id": 3, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 10]},  # zero width: dropped
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": [70, 5, 10, 10]},  # outside the image: dropped
        {"id": 5, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 0]},  # zero height: dropped
    ]
    path = _coco(tmp_path, annotations)
    with caplog.at_level(logging.WARNING, logger=DATA_LOGGER):
        dataset = DetectionDataset(path, tmp_path, tokenizer, transforms=_identity_transforms(), deterministic=True)
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "coco.json" in warnings[0].getMessage() and "1 reach outside" in warnings[0].getMessage()
    stats = dataset.box_stats
    assert (stats.num_boxes, stats.num_clipped, stats.num_dropped) == (5, 1, 3)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=DATA_LOGGER):
        sample = dataset[0]
    assert not caplog.records  # nothing new at load time: the sizes were declared
    torch.testing.assert_close(sample.boxes, torch.tensor([[10.0, 10.0, 19.0, 19.0], [50.0, 30.0, 59.0, 39.0]]))


@pytest.mark.parametrize(
    ("bbox", "message"),
    [
        ("[1, 1, Infinity, 5]", r"annotations\[0\] \(id 7\): field 'bbox' has a NaN or infinite value"),
        ("[1, NaN, 4, 5]", r"annotations\[0\] \(id 7\): field 'bbox' has a NaN or infinite value"),
        ("[5, 5, -3, 10]", r"annotations\[0\] \(id 7\): field 'bbox' \[5, 5, -3, 10\] has width -3"),
        ("[5, 5, 3, -0.5]", r"annotations\[0\] \(id 7\): field 'bbox' .* height -0.5"),
        ('[1, 1, "9", 9]', r"annotations\[0\] \(id 7\): field 'bbox' must be 4 numbers"),
    ],
)
def test_impossible_boxes_stop_the_read_naming_file_id_and_field(tmp_path: Path, tokenizer, bbox, message) -> None:
    """Not silently dropped: a NaN or a negative width is a broken file, said before training starts."""
    path = tmp_path / "bad.json"
    path.write_text(
        '{"images": [{"id": 1, "file_name": "img1.png", "height": 40, "width": 60}], "categories": '
        '[{"id": 1, "name": "cat"}], "annotations": [{"id": 7, "image_id": 1, "category_id": 1, '
        f'"bbox": {bbox}}}, {{"id": 2, "image_id": 1, "category_id": 1, "bbox": [1, 1, 9, 9]}}]}}'
    )
    with pytest.raises(ValueError, match=r"bad\.json: " + message):
        DetectionDataset(path, tmp_path, tokenizer)
    grounding = json.loads(path.read_text())  # Python's json reads NaN and Infinity, and writes them back
    grounding["images"][0]["caption"] = "a cat"
    for annotation in grounding["annotations"]:
        annotation["tokens_positive"] = [[2, 5]]
    path.write_text(json.dumps(grounding))
    with pytest.raises(ValueError, match=r"bad\.json: " + message):
        GroundingDataset(path, tmp_path, tokenizer)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (
            lambda data: data["annotations"][1].pop("bbox"),
            r"coco\.json: annotations\[1\] \(id 11\): missing field 'bbox'",
        ),
        (
            lambda data: data["annotations"][0].update(bbox=[1, 2, 3]),
            r"annotations\[0\] \(id 10\): field 'bbox' must be 4",
        ),
        (lambda data: data["annotations"][2].update(category_id=99), r"annotations\[2\] \(id 12\): category_id 99"),
        (lambda data: data["annotations"][2].update(image_id=42), r"annotations\[2\] \(id 12\): image_id 42"),
        (lambda data: data["images"][1].pop("file_name"), r"images\[1\] \(id 1\): missing field 'file_name'"),
        (lambda data: data["categories"][0].pop("name"), r"categories\[0\]: missing field 'name'"),
        (lambda data: data.pop("annotations"), r"coco\.json: missing field 'annotations'"),
    ],
)
def test_missing_fields_name_file_and_record(tmp_path: Path, tokenizer, mutate, message) -> None:
    path = _coco(tmp_path, _simple_annotations())
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        DetectionDataset(path, tmp_path, tokenizer)


def test_malformed_json_names_file(tmp_path: Path, tokenizer) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"images": [')
    with pytest.raises(ValueError, match=r"broken\.json: malformed JSON at line 1"):
        DetectionDataset(path, tmp_path, tokenizer)
    with pytest.raises(ValueError, match=r"broken\.json: malformed JSON"):
        GroundingDataset(path, tmp_path, tokenizer)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        DetectionDataset(tmp_path / "missing.json", tmp_path, tokenizer)


def test_undecodable_image_skipped_and_collate_drops_it(tmp_path: Path, tokenizer, caplog) -> None:
    path = _coco(tmp_path, _simple_annotations())
    (tmp_path / "img2.png").write_bytes(b"this is not a png")
    dataset = DetectionDataset(path, tmp_path, tokenizer, transforms=_identity_transforms(), deterministic=True)
    with caplog.at_level(logging.WARNING, logger=DATA_LOGGER):
        assert dataset[1] is None
        assert dataset[1] is None
    reports = [record.getMessage() for record in caplog.records]
    assert len(reports) == 1 and "img2.png" in reports[0]  # reported once per file
    batch = collate([dataset[0], dataset[1]], tokenizer)
    assert batch is not None and len(batch.targets) == 1 and batch.image_ids == [1]
    assert collate([None, None], tokenizer) is None
    (tmp_path / "img1.png").unlink()
    assert dataset[0] is None  # a missing file is skipped too


def test_sampling_reproducible_per_seed_epoch_index(tmp_path: Path, tokenizer) -> None:
    categories = [{"id": i, "name": f"thing{i}"} for i in range(1, 40)]
    annotations = [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 20, 20]}]
    path = _coco(tmp_path, annotations, categories)
    transforms = TrainTransforms(min_sizes=(32, 48, 64), max_size=100, flip_prob=0.5)
    first = DetectionDataset(path, tmp_path, tokenizer, transforms=transforms, seed=3)
    second = DetectionDataset(path, tmp_path, tokenizer, transforms=transforms, seed=3)
    sample, again = first[0], second[0]
    assert sample.caption == again.caption and torch.equal(sample.image, again.image)
    assert torch.equal(sample.boxes, again.boxes)
    captions = set()
    for epoch in range(6):
        first.set_epoch(epoch)
        captions.add(first[0].caption)
    assert len(captions) > 1
    assert DetectionDataset(path, tmp_path, tokenizer, transforms=transforms, seed=4)[0].caption != sample.caption


def test_negative_sampling_keeps_positives_within_256_tokens(tmp_path: Path, tokenizer) -> None:
    # 400 categories of 3-4 tokens each ("category number 17. "): far more than 256 tokens.
    categories = [{"id": i, "name": f"category number {i}"} for i in range(1, 401)]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 5, "bbox": [1, 1, 20, 20]},
        {"id": 2, "image_id": 1, "category_id": 300, "bbox": [5, 5, 20, 20]},
        {"id": 3, "image_id": 1, "category_id": 5, "bbox": [10, 10, 20, 20]},
    ]
    path = _coco(tmp_path, annotations, categories)
    dataset = DetectionDataset(path, tmp_path, tokenizer, transforms=_identity_transforms(), num_negatives=85)
    num_names = []
    for epoch in range(20):
        dataset.set_epoch(epoch)
        sample = dataset[0]
        assert len(tokenizer(sample.caption)["input_ids"]) <= 256
        names = sample.caption.split(". ")
        assert "category number 5" in names and "category number 300" in names
        assert len(names) == len(set(names))
        assert sample.labels.tolist() == [5, 300, 5]
        for spans, label in zip(sample.tokens_positive, sample.labels.tolist()):
            ((begin, end),) = spans
            assert sample.caption[begin:end] == f"category number {label}"
        assert bool((sample.positive_map.sum(1) > 0.99).all())
        num_names.append(len(names))
    # Half of the time all 85 negatives are drawn (fewer fit the budget), else 1..85.
    assert max(num_names) > 40 and min(num_names) < max(num_names)


def test_positive_overflow_drops_boxes_of_classes_left_out(tmp_path: Path, tokenizer) -> None:
    names = {label: f"very long category name number {label}" for label in range(1, 101)}  # ~7 tokens each
    labels = list(range(1, 101))
    prompt = sampled_category_prompt(labels, names, tokenizer, random.Random(0), max_len=64)
    assert len(tokenizer(prompt.caption)["input_ids"]) <= 64
    assert 0 < len(prompt.label_spans) < 100  # only some positives fit, and no negative
    for label, (begin, end) in prompt.label_spans.items():
        assert prompt.caption[begin:end] == names[label]


def test_full_category_prompt_keeps_positives_when_too_long(tokenizer) -> None:
    names = {label: f"category number {label}" for label in range(1, 200)}
    prompt = full_category_prompt([150, 3], names, tokenizer, max_len=64)
    assert len(tokenizer(prompt.caption)["input_ids"]) <= 64
    assert 150 in prompt.label_spans and 3 in prompt.label_spans
    assert list(prompt.label_spans) == sorted(prompt.label_spans)  # still in category order
    short = full_category_prompt([2], {1: "a_b", 2: "c (d)"}, tokenizer)
    assert short.caption == "a b. c " and short.label_spans == {1: (0, 3), 2: (5, 7)}


def test_clean_category_name() -> None:
    assert clean_category_name("bat_(animal)") == "bat "
    assert clean_category_name("traffic_light") == "traffic light"


# ------------------------------------------------------------------------------------------ grounding


def _mdetr(tmp_path: Path, caption: str, annotations: list[dict]) -> Path:
    _write_image(tmp_path / "g.png", height=50, width=80)
    data = {
        "images": [{"id": 3, "file_name": "g.png", "height": 50, "width": 80, "caption": caption}],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "object"}],
    }
    path = tmp_path / "mdetr.json"
    path.write_text(json.dumps(data))
    return path


def test_grounding_dataset(tmp_path: Path, tokenizer) -> None:
    caption = "the dog on the left and the cat on the right"
    annotations = [
        {"id": 1, "image_id": 3, "category_id": 1, "bbox": [0, 0, 20, 20], "tokens_positive": [[4, 7]]},
        {"id": 2, "image_id": 3, "category_id": 1, "bbox": [50, 10, 20, 30], "tokens_positive": [[28, 31], [39, 44]]},
    ]
    path = _mdetr(tmp_path, caption, annotations)
    dataset = GroundingDataset(path, tmp_path, tokenizer, transforms=TestTransforms(min_size=50, max_size=None))
    sample = dataset[0]
    assert sample.caption == caption
    assert sample.tokens_positive == [[(4, 7)], [(28, 31), (39, 44)]]
    assert sample.labels.tolist() == [1, 1]
    torch.testing.assert_close(sample.boxes, torch.tensor([[0.0, 0.0, 19.0, 19.0], [50.0, 10.0, 69.0, 39.0]]))
    tokens = tokenizer(caption)["input_ids"]
    row = sample.positive_map[1]
    grounded = [tokenizer.convert_ids_to_tokens(tokens[i]) for i in torch.nonzero(row).flatten().tolist()]
    assert grounded == ["cat", "right"]


@pytest.mark.parametrize(
    "annotation, message",
    [
        ({"id": 9, "image_id": 3, "bbox": [0, 0, 5, 5]}, r"annotations\[0\] \(id 9\): missing field 'tokens_positive'"),
        (
            {"id": 9, "image_id": 3, "bbox": [0, 0, 5, 5], "tokens_positive": [[2, 99]]},
            r"annotations\[0\] \(id 9\): span \[2, 99\]",
        ),
        (
            {"id": 9, "image_id": 3, "bbox": [0, 0, 5, 5], "tokens_positive": [3, 4]},
            r"annotations\[0\] \(id 9\): tokens_positive must",
        ),
    ],
)
def test_grounding_bad_annotations(tmp_path: Path, tokenizer, annotation: dict, message: str) -> None:
    path = _mdetr(tmp_path, "a dog", [annotation])
    with pytest.raises(ValueError, match=r"mdetr\.json: " + message):
        GroundingDataset(path, tmp_path, tokenizer)


def test_grounding_missing_caption(tmp_path: Path, tokenizer) -> None:
    path = _mdetr(tmp_path, "a dog", [])
    data = json.loads(path.read_text())
    del data["images"][0]["caption"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"mdetr\.json: images\[0\] \(id 3\): missing field 'caption'"):
        GroundingDataset(path, tmp_path, tokenizer)


# ------------------------------------------------------------------------------------------ transforms


def test_flip_boxes_and_caption_kept_as_glip_does(tmp_path: Path, tokenizer) -> None:
    caption = "the dog on the left"
    annotations = [
        {"id": 1, "image_id": 3, "category_id": 1, "bbox": [0, 0, 20, 20], "tokens_positive": [[4, 7], [15, 19]]}
    ]
    path = _mdetr(tmp_path, caption, annotations)
    plain = GroundingDataset(path, tmp_path, tokenizer, transforms=TrainTransforms((50,), None, flip_prob=0.0))[0]
    flipped = GroundingDataset(path, tmp_path, tokenizer, transforms=TrainTransforms((50,), None, flip_prob=1.0))[0]
    assert torch.equal(flipped.image, plain.image.flip(-1))
    # x' = W - x - 1 with W = 80: [0, 19] -> [60, 79].
    torch.testing.assert_close(flipped.boxes, torch.tensor([[60.0, 0.0, 79.0, 19.0]]))
    assert flipped.caption == caption  # GLIP's flip leaves the caption alone
    assert torch.equal(flipped.positive_map, plain.positive_map)
    mdetr_style = GroundingDataset(
        path, tmp_path, tokenizer, transforms=TrainTransforms((50,), None, flip_prob=1.0, swap_left_right=True)
    )[0]
    assert mdetr_style.caption == "the dog on the right"
    assert mdetr_style.tokens_positive == [[(4, 7), (15, 20)]]


def test_swap_left_right_moves_spans() -> None:
    caption = "Left cup, right spoon, bright leftover left"
    spans = [[(0, 8)], [(10, 21)], [(23, 38)], [(39, 43)]]
    swapped, moved = swap_left_right(caption, spans)
    assert swapped == "Right cup, left spoon, bright leftover right"
    assert [swapped[b:e] for ((b, e),) in moved] == ["Right cup", "left spoon", "bright leftover", "right"]
    assert swap_left_right("no words here", [[(0, 2)]]) == ("no words here", [[(0, 2)]])


def test_flip_boxes_inclusive_convention() -> None:
    boxes = torch.tensor([[0.0, 1.0, 9.0, 5.0]])
    assert flip_boxes(boxes, 10).tolist() == [[0.0, 1.0, 9.0, 5.0]]
    assert torch.equal(flip_boxes(flip_boxes(boxes, 37), 37), boxes)


def test_multiscale_resize_respects_max_size(tmp_path: Path, tokenizer) -> None:
    path = _coco(tmp_path, _simple_annotations())
    transforms = TrainTransforms(min_sizes=(20, 30), max_size=45, flip_prob=0.0)
    dataset = DetectionDataset(path, tmp_path, tokenizer, transforms=transforms, deterministic=True)
    sizes = set()
    for epoch in range(12):
        dataset.set_epoch(epoch)
        sample = dataset[0]
        sizes.add(sample.image_size)
        scale = sample.image_size[1] / 60
        expected = torch.tensor([0.0, 0.0, 29.0 * scale, 29.0 * sample.image_size[0] / 40])
        torch.testing.assert_close(sample.boxes[1], expected)
    # 40x60 image: shorter side 20 -> 20x30; 30 -> 30x45 (exactly the cap).
    assert sizes == {(20, 30), (30, 45)}


# ------------------------------------------------------------------------------------------ ODVG


def test_odvg_detection_matches_coco(tmp_path: Path, tokenizer) -> None:
    coco = _coco(tmp_path, _simple_annotations())
    lines = [
        {"filename": "img1.png", "height": 40, "width": 60, "id": 1, "detection": {"instances": [
            {"bbox": [10, 5, 30, 15], "label": 2, "category": "dog"},
            {"bbox": [0, 0, 30, 30], "label": 1, "category": "cat"},
        ]}},
    ]
    jsonl = tmp_path / "od.jsonl"
    jsonl.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    label_map = {"1": "cat", "2": "dog", "3": "traffic_light"}
    odvg = ODVGDataset(
        jsonl, tmp_path, tokenizer, label_map=label_map, transforms=_identity_transforms(), deterministic=True
    )
    reference = DetectionDataset(coco, tmp_path, tokenizer, transforms=_identity_transforms(), deterministic=True)
    ours, theirs = odvg[0], reference[0]
    assert ours.caption == theirs.caption
    assert torch.equal(ours.boxes, theirs.boxes)
    assert torch.equal(ours.positive_map, theirs.positive_map)
    assert torch.equal(ours.image, theirs.image)


def test_odvg_grounding_and_errors(tmp_path: Path, tokenizer) -> None:
    _write_image(tmp_path / "g.png", height=50, width=80)
    lines = [
        {"filename": "g.png", "height": 50, "width": 80, "grounding": {"caption": "A red ball and a Box", "regions": [
            {"bbox": [0, 0, 20, 20], "phrase": "a red ball"},
            {"bbox": [30, 0, 60, 20], "phrase": "box", "tokens_positive": [[17, 20]]},
            {"bbox": [30, 0, 60, 20], "phrase": "unicorn"},
        ]}},
    ]
    jsonl = tmp_path / "vg.jsonl"
    jsonl.write_text(json.dumps(lines[0]) + "\n\n")
    dataset = ODVGDataset(jsonl, tmp_path, tokenizer, transforms=TestTransforms(50, None))
    sample = dataset[0]
    assert sample.tokens_positive == [[(0, 10)], [(17, 20)]]
    assert dataset.box_stats.num_unresolved == 1
    torch.testing.assert_close(sample.boxes, torch.tensor([[0.0, 0.0, 19.0, 19.0], [30.0, 0.0, 59.0, 19.0]]))

    jsonl.write_text(json.dumps(lines[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"vg\.jsonl: line 2: malformed JSON"):
        ODVGDataset(jsonl, tmp_path, tokenizer)
    jsonl.write_text(json.dumps(lines[0]) + "\n" + json.dumps({"height": 5, "width": 5, "grounding": {}}) + "\n")
    with pytest.raises(ValueError, match=r"vg\.jsonl: line 2: missing field 'filename'"):
        ODVGDataset(jsonl, tmp_path, tokenizer)
    bad_instance = {"filename": "g.png", "detection": {"instances": [{"bbox": [0, 0, 5, 5], "category": "x"}]}}
    jsonl.write_text(json.dumps(bad_instance) + "\n")
    with pytest.raises(ValueError, match=r"line 1: detection\.instances\[0\]: missing field 'label'"):
        ODVGDataset(jsonl, tmp_path, tokenizer)
    backwards = {"filename": "g.png", "grounding": {"caption": "a box", "regions": [{"bbox": [30, 0, 20, 20]}]}}
    jsonl.write_text(json.dumps(backwards) + "\n")  # x2 < x1: a negative width in corner layout
    with pytest.raises(ValueError, match=r"line 1: grounding\.regions\[0\]: field 'bbox' .* width -10"):
        ODVGDataset(jsonl, tmp_path, tokenizer)


# ------------------------------------------------------------------------------------------ mixing


class _Numbers(Dataset):
    def __init__(self, tag: str, size: int) -> None:
        self.tag, self.size = tag, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[str, int]:
        return self.tag, index


def test_mixed_dataset_weights() -> None:
    sources = [_Numbers("a", 50), _Numbers("b", 7), _Numbers("c", 10)]
    mixed = MixedDataset(sources, [3.0, 1.0, 0.0], num_samples=4000, seed=1)
    draws = [mixed[i] for i in range(len(mixed))]
    counts = Counter(tag for tag, _ in draws)
    assert counts["c"] == 0
    assert abs(counts["a"] / 4000 - 0.75) < 0.03
    # Within a source every image comes once before any comes again.
    b_indices = [index for tag, index in draws if tag == "b"]
    for start in range(0, len(b_indices) - 7, 7):
        assert sorted(b_indices[start : start + 7]) == list(range(7))
    # The plan depends on (seed, epoch) only.
    assert [MixedDataset(sources, [3.0, 1.0, 0.0], num_samples=4000, seed=1)[i] for i in range(50)] == draws[:50]
    mixed.set_epoch(1)
    assert [mixed[i] for i in range(50)] != draws[:50]
    assert sum(mixed.source_counts()) == 4000


def test_mixed_dataset_validates() -> None:
    with pytest.raises(ValueError, match="weights"):
        MixedDataset([_Numbers("a", 3)], [1.0, 2.0])
    with pytest.raises(ValueError, match="non-negative"):
        MixedDataset([_Numbers("a", 3)], [-1.0])
    with pytest.raises(ValueError, match="empty"):
        MixedDataset([_Numbers("a", 3), _Numbers("b", 0)], [1.0, 1.0])


def test_mixed_dataset_of_our_datasets(tmp_path: Path, tokenizer) -> None:
    path = _coco(tmp_path, _simple_annotations())
    detection = DetectionDataset(path, tmp_path, tokenizer, transforms=_identity_transforms())
    mixed = MixedDataset([detection], [1.0], num_samples=6, seed=0)
    captions = [mixed[i].caption for i in range(6)]
    assert len(set(captions)) > 1  # repeats of an image get their own random source
    assert [mixed[i].caption for i in range(6)] == captions


# ------------------------------------------------------------------------------------------ collate


def test_collate_pads_and_binarises(tmp_path: Path, tokenizer) -> None:
    path = _coco(tmp_path, _simple_annotations())
    dataset = DetectionDataset(path, tmp_path, tokenizer, transforms=TestTransforms(33, None), deterministic=True)
    batch = Collator(tokenizer, max_len=256, size_divisibility=32)([dataset[0], dataset[1]])
    assert batch is not None
    assert batch.images.shape == (2, 3, 64, 64)  # 33x49 padded to /32
    assert batch.image_sizes == [(33, 49), (33, 49)]
    assert batch.input_ids.shape == batch.attention_mask.shape == (2, 256)
    assert [target.boxes.shape[0] for target in batch.targets] == [2, 1]
    assert batch.positive_map.shape == (3, 256)
    assert set(batch.positive_map.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(batch.targets[0].positive_map, (dataset[0].positive_map > 0).float())
    assert batch.images[0, :, 33:].abs().sum() == 0 and batch.images[0, :, :, 49:].abs().sum() == 0
    moved = batch.to("cpu")
    assert torch.equal(moved.images, batch.images)


def test_objects_another_file_lists_but_this_one_lacks_become_ignore_boxes(tmp_path: Path, tokenizer) -> None:
    # The "every object" file has image 1's two boxes plus a third; this file names two of them.
    everything = _coco(tmp_path, [*_simple_annotations(),
                                  {"id": 13, "image_id": 1, "category_id": 1, "bbox": [40, 20, 10, 10]}],
                       name="all.json")
    partial = _coco(tmp_path, _simple_annotations())
    transforms = TestTransforms(min_size=80, max_size=None)  # scale 2: ignore boxes are resized too
    dataset = DetectionDataset(partial, tmp_path, tokenizer, transforms=transforms, deterministic=True,
                               ignore_objects_from=everything)
    first, second = dataset[0], dataset[1]
    torch.testing.assert_close(first.ignore_boxes, torch.tensor([[80.0, 40.0, 98.0, 58.0]]))  # [40, 20, 49, 29] x 2
    assert second.ignore_boxes is None  # nothing missing from image 2
    plain = DetectionDataset(partial, tmp_path, tokenizer, transforms=transforms, deterministic=True)[0]
    assert plain.ignore_boxes is None
    torch.testing.assert_close(first.boxes, plain.boxes)
    torch.testing.assert_close(first.positive_map, plain.positive_map)
    assert first.tokens_positive == plain.tokens_positive
    batch = collate([first, second], tokenizer)
    torch.testing.assert_close(batch.targets[0].ignore_boxes, first.ignore_boxes)
    assert batch.targets[1].ignore_boxes is None
