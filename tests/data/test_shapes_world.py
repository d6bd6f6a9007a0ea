"""The Shapes world generator: determinism, the specification's numbers, captions and files."""

from __future__ import annotations

import contextlib
import io
import json
import math
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from glip.data import shapes_world
from glip.data.shapes_world import (
    COLOURS,
    DESCRIPTIVE_PROMPTS,
    HELD_OUT_PAIRS,
    PAIRS,
    SHAPES,
    TRANSFER_SHAPES,
    SceneObject,
    encode_png,
    render_scene,
    sample_scene,
    synthesize,
)

RELATION_WORDS = {" left of ": (0, -1), " right of ": (0, 1), " above ": (1, -1), " below ": (1, 1)}
POSITION_WORDS = {"on the left": (0, -1), "on the right": (0, 1), "at the top": (1, -1), "at the bottom": (1, 1)}


@pytest.fixture(scope="module")
def train_split(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return synthesize(tmp_path_factory.mktemp("train") / "split", 30, seed=7, split="train", show_progress=False)


@pytest.fixture(scope="module")
def test_split(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return synthesize(tmp_path_factory.mktemp("test") / "split", 24, seed=11, split="test", show_progress=False)


@pytest.fixture(scope="module")
def transfer_split(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out_dir = tmp_path_factory.mktemp("transfer") / "split"
    return synthesize(out_dir, 20, seed=3, split="transfer-train", show_progress=False)


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def _mask(item: SceneObject) -> np.ndarray:
    """``[896, 896]`` bool: the 4x pixels PIL fills for one object."""
    mask = Image.new("L", (896, 896), 0)
    draw = ImageDraw.Draw(mask)
    if item.shape == "circle":
        draw.ellipse([item.outline[0], item.outline[1]], fill=1)
    else:
        draw.polygon(list(item.outline), fill=1)
    return np.asarray(mask).astype(bool)


def _iou(first: list[float], second: list[float]) -> float:
    width = min(first[0] + first[2], second[0] + second[2]) - max(first[0], second[0])
    height = min(first[1] + first[3], second[1] + second[3]) - max(first[1], second[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    return inter / (first[2] * first[3] + second[2] * second[3] - inter)


# --------------------------------------------------------------------------------------------------
# Determinism
# --------------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes(train_split: dict[str, Path], tmp_path: Path) -> None:
    again = synthesize(tmp_path / "again", 30, seed=7, split="train", show_progress=False)
    first, second = _tree_bytes(train_split["info"].parent), _tree_bytes(again["info"].parent)
    assert first.keys() == second.keys()
    assert all(first[name] == second[name] for name in first)


def test_image_does_not_depend_on_split_length(train_split: dict[str, Path], tmp_path: Path) -> None:
    short = synthesize(tmp_path / "short", 5, seed=7, split="train", show_progress=False)
    for index in range(5):
        name = f"{index:06d}.png"
        assert (short["images"] / name).read_bytes() == (train_split["images"] / name).read_bytes()
    long_captions = _load(train_split["captions"])
    short_captions = _load(short["captions"])
    assert long_captions[: len(short_captions)] == short_captions


def test_seed_and_split_change_the_scenes() -> None:
    reference = sample_scene(5, "train", 0)
    assert sample_scene(5, "train", 0) == reference
    assert sample_scene(6, "train", 0).objects != reference.objects
    assert sample_scene(5, "test", 0).objects != reference.objects


def test_png_decodes_to_the_rendered_pixels(train_split: dict[str, Path]) -> None:
    with Image.open(train_split["images"] / "000003.png") as image:
        assert image.mode == "RGB" and image.size == (224, 224)
        pixels = np.asarray(image)
    np.testing.assert_array_equal(pixels, render_scene(sample_scene(7, "train", 3)))
    small = np.random.default_rng(0).integers(0, 256, size=(70, 9, 3), dtype=np.uint8)  # one deflate block
    big = np.random.default_rng(1).integers(0, 256, size=(300, 100, 3), dtype=np.uint8)  # several blocks
    for array in (small, big):
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_png(array)))), array)


# --------------------------------------------------------------------------------------------------
# The specification's numbers
# --------------------------------------------------------------------------------------------------


def test_scene_numbers() -> None:
    scenes = [sample_scene(21, "test", index) for index in range(200)]
    counts = [len(scene.objects) for scene in scenes]
    assert set(counts) == {1, 2, 3, 4, 5, 6}
    assert 0.15 < np.mean([bool(scene.clutter) for scene in scenes]) < 0.45
    for scene in scenes:
        assert 170 <= scene.background <= 235
        for line in scene.clutter:
            assert line.width in (4, 8, 12) and scene.background - 50 <= line.grey <= scene.background - 25
        for item in scene.objects:
            assert 14.0 <= item.side <= 72.0
            assert item.shape in SHAPES and item.colour in COLOURS
            assert all(abs(value - base) <= 20 for value, base in zip(item.rgb, COLOURS[item.colour]))
            assert 0.0 <= item.rotation < 360.0 and (item.shape != "circle" or item.rotation == 0.0)
            x, y, width, height = item.box
            assert x >= 0 and y >= 0 and x + width <= 224 and y + height <= 224
            assert all(value * 4 == int(value * 4) for value in item.box)
            assert item.size_word == ("small" if item.side < 30 else "large" if item.side > 52 else None)
        for first, second in combinations(scene.objects, 2):
            assert _iou(list(first.box), list(second.box)) <= 0.2
    sides = [item.side for scene in scenes for item in scene.objects]
    assert min(sides) < 20 and max(sides) > 66


def test_boxes_are_tight_boxes_of_the_drawn_pixels() -> None:
    for index in range(6):
        for item in sample_scene(2, "transfer-test" if index % 2 else "test", index).objects:
            rows, columns = np.nonzero(_mask(item))
            width, height = columns.max() + 1 - columns.min(), rows.max() + 1 - rows.min()
            drawn = (columns.min() / 4, rows.min() / 4, width / 4, height / 4)
            assert drawn == item.box
            if item.shape == "circle":
                assert math.isclose(item.box[2], item.side, abs_tol=0.5)
                assert math.isclose(item.box[3], item.side, abs_tol=0.5)


def test_objects_are_drawn_in_their_colour_on_top_of_earlier_ones() -> None:
    checked = 0
    for index in range(20):
        scene = sample_scene(4, "test", index)
        pixels = render_scene(scene)
        for position, item in enumerate(scene.objects):
            if item.shape not in ("circle", "square", "hexagon", "cross"):
                continue
            column, row = (int(value) for value in item.centre)
            covered = any(
                x - 1 <= column <= x + width and y - 1 <= row <= y + height
                for x, y, width, height in (later.box for later in scene.objects[position + 1 :])
            )
            if not covered:
                assert tuple(pixels[row, column]) == item.rgb
                checked += 1
    assert checked > 10


def test_categories_and_pair_ids(train_split: dict[str, Path], test_split: dict[str, Path]) -> None:
    assert len(PAIRS) == 36 and PAIRS[0] == "red circle" and PAIRS[1] == "red square" and PAIRS[35] == "orange cross"
    assert set(HELD_OUT_PAIRS) == {"green triangle", "orange circle", "blue star"}
    for split in (train_split, test_split):
        categories = _load(split["detection"])["categories"]
        assert [(c["id"], c["name"]) for c in categories] == list(enumerate(SHAPES, start=1))
        assert _load(split["grounding"])["categories"] == categories
    test_pairs = _load(test_split["pairs"])["categories"]
    assert [(c["id"], c["name"]) for c in test_pairs] == list(enumerate(PAIRS, start=1))
    train_pairs = _load(train_split["pairs"])["categories"]
    kept = [(k, name) for k, name in enumerate(PAIRS, start=1) if name not in HELD_OUT_PAIRS]
    assert [(c["id"], c["name"]) for c in train_pairs] == kept


def test_detection_files_match_the_scenes(test_split: dict[str, Path]) -> None:
    detection, pairs = _load(test_split["detection"]), _load(test_split["pairs"])
    assert detection["images"] == pairs["images"]
    assert [image["file_name"] for image in detection["images"]] == [f"{k:06d}.png" for k in range(24)]
    by_image: dict[int, list[dict]] = {}
    for annotation in detection["annotations"]:
        assert annotation["iscrowd"] == 0 and annotation["area"] == annotation["bbox"][2] * annotation["bbox"][3]
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    assert [a["id"] for a in detection["annotations"]] == list(range(1, len(detection["annotations"]) + 1))
    for index in range(24):
        scene = sample_scene(11, "test", index)
        annotations = by_image[index + 1]
        assert [a["bbox"] for a in annotations] == [list(item.box) for item in scene.objects]
        assert [SHAPES[a["category_id"] - 1] for a in annotations] == [item.shape for item in scene.objects]
    assert [PAIRS[a["category_id"] - 1] for a in pairs["annotations"]] == [
        item.pair for index in range(24) for item in sample_scene(11, "test", index).objects
    ]


def test_files_load_with_pycocotools(train_split: dict[str, Path], transfer_split: dict[str, Path]) -> None:
    from pycocotools.coco import COCO

    for path in (train_split["detection"], train_split["pairs"], train_split["grounding"], transfer_split["detection"]):
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(path))
        assert len(coco.getImgIds()) > 0 and len(coco.getAnnIds()) > 0


# --------------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------------


def _resolve(phrase: str, objects: tuple[SceneObject, ...]) -> set[int]:
    """The objects a stand-alone phrase denotes, by an independent reading of the grammar."""
    words = phrase.split()
    if words[0] in ("a", "an"):
        assert len(words) == 2 and words[0] == ("an" if words[1][0] in "aeiou" else "a")
        return {i for i, item in enumerate(objects) if item.shape == words[1]}
    assert words[0] == "the", phrase
    rest = words[1:]
    if len(rest) == 2 and rest[1] == "shape":
        return {i for i, item in enumerate(objects) if item.colour == rest[0]}
    size = rest.pop(0) if rest[0] in ("small", "large") else None
    colour = rest.pop(0) if rest[0] in COLOURS else None
    shape = rest.pop(0)
    matches = [
        i
        for i, item in enumerate(objects)
        if item.shape == shape
        and (colour is None or item.colour == colour)
        and (size is None or item.size_word == size)
    ]
    if not rest:
        return set(matches)
    axis, sign = POSITION_WORDS[" ".join(rest)]
    assert colour is not None and size is None and len(matches) >= 2, phrase
    values = sorted((sign * objects[i].centre[axis], i) for i in matches)
    assert values[-1][0] > values[-2][0], phrase
    return {values[-1][1]}


def _check_caption(
    text: str, groundings: tuple[tuple[int, int, int], ...], objects: tuple[SceneObject, ...], is_train: bool
) -> None:
    """Every span is a whole phrase naming its object uniquely; joins and relations parse."""
    assert groundings and groundings[0][1] == 0 and groundings[-1][2] == len(text)
    assert len({obj for obj, _, _ in groundings}) == len(groundings) <= 3
    separators = []
    for position, (obj, start, end) in enumerate(groundings):
        phrase = text[start:end]
        item = objects[obj]
        assert _resolve(phrase, objects) == {obj} or any(
            text[end:].startswith(words) for words in RELATION_WORDS
        ), (text, phrase)
        if is_train and item.pair in HELD_OUT_PAIRS:
            assert not (item.colour in phrase.split() and item.shape in phrase.split()), (text, phrase)
        for word in phrase.split():
            assert word not in COLOURS or word == item.colour
            assert word not in SHAPES + TRANSFER_SHAPES or word == item.shape
        if position + 1 < len(groundings):
            separators.append(text[end : groundings[position + 1][1]])
    # Relations: "<the shape> <relation> <the colour shape>": only this target among its shape.
    top_level = []
    for position, separator in enumerate(separators):
        if separator in RELATION_WORDS:
            target, reference = groundings[position][0], groundings[position + 1][0]
            assert _resolve(text[groundings[position + 1][1] : groundings[position + 1][2]], objects) == {reference}
            head = text[groundings[position][1] : groundings[position][2]].split()
            assert head[0] == "the" and len(head) == 2
            axis, sign = RELATION_WORDS[separator]
            anchor = objects[reference].centre[axis]
            satisfying = {
                i
                for i, item in enumerate(objects)
                if i != reference and item.shape == head[1] and sign * (item.centre[axis] - anchor) > 0
            }
            assert satisfying == {target}, text
        else:
            top_level.append(separator)
    assert top_level == [", "] * (len(top_level) - 1) + [" and "] or top_level == [], text


@pytest.mark.parametrize("split", ["train", "test", "transfer-test"])
def test_captions_identify_their_objects(split: str) -> None:
    templates_seen = set()
    caption_counts = []
    for index in range(150):
        scene = sample_scene(13, split, index)
        caption_counts.append(len(scene.captions))
        assert len({caption.text for caption in scene.captions}) == len(scene.captions)
        for caption in scene.captions:
            _check_caption(caption.text, caption.groundings, scene.objects, split == "train")
            for _, start, end in caption.groundings:
                phrase = caption.text[start:end]
                templates_seen.add(
                    "relation"
                    if any(caption.text[end:].startswith(w) for w in RELATION_WORDS)
                    else "position"
                    if any(phrase.endswith(w) for w in POSITION_WORDS)
                    else "size"
                    if phrase.split()[1] in ("small", "large")
                    else "colour"
                    if phrase.endswith(" shape")
                    else "shape"
                    if phrase.split()[0] in ("a", "an")
                    else "pair"
                )
    assert templates_seen == {"relation", "position", "size", "colour", "shape", "pair"}
    # Two captions per image unless the image allows fewer (rare: e.g. two alike objects side by side).
    assert set(caption_counts) <= {0, 1, 2} and np.mean(np.asarray(caption_counts) == 2) > 0.95


def test_held_out_pairs_are_never_named_in_train(train_split: dict[str, Path]) -> None:
    captions = [entry["caption"] for entry in _load(train_split["captions"])]
    captions += [caption.text for index in range(300) for caption in sample_scene(17, "train", index).captions]
    for caption in captions:
        assert not any(pair in caption for pair in HELD_OUT_PAIRS), caption
    pairs, detection = _load(train_split["pairs"]), _load(train_split["detection"])
    held_out_ids = {PAIRS.index(pair) + 1 for pair in HELD_OUT_PAIRS}
    assert not held_out_ids & {a["category_id"] for a in pairs["annotations"]}
    scenes = [sample_scene(7, "train", index) for index in range(30)]
    held_out_objects = sum(item.pair in HELD_OUT_PAIRS for scene in scenes for item in scene.objects)
    assert held_out_objects > 0
    assert len(pairs["annotations"]) == len(detection["annotations"]) - held_out_objects
    # Held-out objects are still referred to in training text, by shape or colour alone.
    grounded_pairs = {
        scene.objects[obj].pair
        for scene in (sample_scene(17, "train", index) for index in range(300))
        for caption in scene.captions
        for obj, _, _ in caption.groundings
    }
    assert set(HELD_OUT_PAIRS) <= grounded_pairs
    # The test split names them like any other pair.
    test_scenes = [sample_scene(17, "test", index) for index in range(300)]
    test_captions = " ".join(caption.text for scene in test_scenes for caption in scene.captions)
    assert all(pair in test_captions for pair in HELD_OUT_PAIRS)


def test_grounding_file_matches_captions_and_detection(train_split: dict[str, Path]) -> None:
    grounding, detection = _load(train_split["grounding"]), _load(train_split["detection"])
    captions = _load(train_split["captions"])
    images = {image["id"]: image for image in detection["images"]}
    boxes = {(a["image_id"], tuple(a["bbox"]), a["category_id"]) for a in detection["annotations"]}
    assert [{"file_name": e["file_name"], "caption": e["caption"]} for e in grounding["images"]] == captions
    annotations: dict[int, list[dict]] = {}
    for annotation in grounding["annotations"]:
        annotations.setdefault(annotation["image_id"], []).append(annotation)
    for entry in grounding["images"]:
        original = images[entry["original_img_id"]]
        assert entry["file_name"] == original["file_name"] and entry["width"] == entry["height"] == 224
        own = annotations[entry["id"]]
        assert entry["tokens_positive_eval"] == [a["tokens_positive"] for a in own]
        assert [a["phrase_ids"] for a in own] == list(range(len(own)))
        for annotation in own:
            assert (entry["original_img_id"], tuple(annotation["bbox"]), annotation["category_id"]) in boxes
        scene = sample_scene(7, "train", entry["original_img_id"] - 1)
        object_of_box = {tuple(item.box): k for k, item in enumerate(scene.objects)}
        spans = tuple((object_of_box[tuple(a["bbox"])], *a["tokens_positive"][0]) for a in own)
        _check_caption(entry["caption"], spans, scene.objects, is_train=True)
    assert len(grounding["images"]) >= 30  # one or two captions per image


def test_transfer_split(transfer_split: dict[str, Path]) -> None:
    assert "pairs" not in transfer_split and not (transfer_split["info"].parent / "pairs.json").exists()
    assert "colours" not in transfer_split and not (transfer_split["info"].parent / "colours.json").exists()
    detection = _load(transfer_split["detection"])
    assert [(c["id"], c["name"]) for c in detection["categories"]] == [(1, "heart"), (2, "arrow"), (3, "crescent")]
    assert {a["category_id"] for a in detection["annotations"]} <= {1, 2, 3}
    for index in range(20):
        assert all(item.shape in TRANSFER_SHAPES for item in sample_scene(3, "transfer-train", index).objects)
    for entry in _load(transfer_split["captions"]):
        assert not set(entry["caption"].replace(",", " ").split()) & set(SHAPES), entry
    assert set(DESCRIPTIVE_PROMPTS) == set(TRANSFER_SHAPES)
    assert all(DESCRIPTIVE_PROMPTS[name].startswith(name + ", ") for name in TRANSFER_SHAPES)
    info = _load(transfer_split["info"])
    assert info["split"] == "transfer-train" and info["held_out_pairs"] == [] and info["num_images"] == 20


# --------------------------------------------------------------------------------------------------
# Arguments and atomic writing
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"num_images": 0}, "num_images"),
        ({"num_images": 2.5}, "num_images"),
        ({"num_images": True}, "num_images"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.0}, "seed"),
        ({"split": "val"}, "split"),
    ],
)
def test_bad_arguments_are_named(arguments: dict, named: str, tmp_path: Path) -> None:
    call = {"out_dir": tmp_path / "out", "num_images": 2, "seed": 0, "split": "train", "show_progress": False}
    call.update(arguments)
    with pytest.raises(ValueError, match=named):
        synthesize(**call)
    assert list(tmp_path.iterdir()) == []


def test_out_dir_checks_and_overwrite(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match="out_dir"):
        synthesize(blocker / "split", 1, seed=0, show_progress=False)
    with pytest.raises(ValueError, match="out_dir"):
        synthesize(blocker, 1, seed=0, show_progress=False)
    out = tmp_path / "split"
    synthesize(out, 1, seed=0, show_progress=False)
    with pytest.raises(ValueError, match="out_dir"):
        synthesize(out, 2, seed=1, show_progress=False)
    synthesize(out, 2, seed=1, show_progress=False, overwrite=True)
    assert _load(out / "info.json")["num_images"] == 2 and len(list((out / "images").iterdir())) == 2
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file", "split"]


def test_interrupted_run_leaves_no_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def failing_render(scene: shapes_world.Scene) -> np.ndarray:
        calls.append(scene.index)
        if len(calls) == 3:
            raise RuntimeError("interrupted")
        return render_scene(scene)

    monkeypatch.setattr(shapes_world, "render_scene", failing_render)
    with pytest.raises(RuntimeError, match="interrupted"):
        synthesize(tmp_path / "split", 5, seed=0, show_progress=False)
    assert list(tmp_path.iterdir()) == []


def test_colours_name_every_object_by_its_colour_alone(train_split: dict[str, Path]) -> None:
    colours, detection = _load(train_split["colours"]), _load(train_split["detection"])
    assert [c["name"] for c in colours["categories"]] == list(COLOURS)  # no shape word: never a pair name
    # Every object, held-out pairs included, with the box of detection.json and its drawn colour.
    assert [(a["image_id"], a["bbox"]) for a in colours["annotations"]] == \
        [(a["image_id"], a["bbox"]) for a in detection["annotations"]]
    scenes = [sample_scene(7, "train", index) for index in range(30)]
    expected = [list(COLOURS).index(item.colour) + 1 for scene in scenes for item in scene.objects]
    assert [a["category_id"] for a in colours["annotations"]] == expected
