"""``glip label``: a folder labelled by GLIP-Nano into COCO and YOLO, as ``GLIP.predict`` sees it;
bad images skipped, resumption after an interruption, the output-folder rules, torchrun."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from glip import labeling
from glip.cli import main
from glip.data.shapes_world import SHAPES, synthesize
from glip.evaluation.prompts import CategoryText
from glip.evaluation.runner import RunOptions
from glip.labeling import coco_dataset, label_folder, label_prompts, yolo_lines
from glip.pipeline import GLIP

BIN = Path(sys.executable).parent
CLASSES = list(SHAPES)
MIN_SIZE = 160  # smaller than the 224-pixel scenes: quicker, and still boxes on every scene


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def nano() -> GLIP:
    return GLIP.from_pretrained("glip_nano")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """5 files: 2 scenes at the top, one in a subfolder, one scene resized to 300 x 200 (sizes must be
    the file's, boxes in its pixels) and a corrupt PNG (skipped)."""
    root = tmp_path_factory.mktemp("label")
    scenes = sorted(synthesize(root / "split", 3, seed=11, split="test", show_progress=False)["images"].iterdir())
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    shutil.copy(scenes[0], images / "a.png")
    Image.open(scenes[1]).resize((300, 200)).save(images / "b_wide.png")
    shutil.copy(scenes[2], images / "sub" / "c.png")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return images


def _label_args(folder: Path, out: Path, *extra: str) -> list[str]:
    return ["label", str(folder), "--classes", ",".join(CLASSES), "--model", "glip_nano", "--out", str(out),
            "--min-size", str(MIN_SIZE), "--batch-size", "1", "--threads", "1", *extra]


@pytest.fixture(scope="module")
def cli_dataset(folder: Path, tmp_path_factory) -> Path:
    """The folder labelled by the command line in both formats (exit 1: one image skipped)."""
    out = tmp_path_factory.mktemp("cli") / "dataset"
    assert main(_label_args(folder, out, "--format", "both")) == 1
    return out


def _dataset_files(out: Path) -> dict[str, bytes]:
    return {path.relative_to(out).as_posix(): path.read_bytes() for path in sorted(out.rglob("*"))
            if path.is_file() and path.name != ".glip.lock"}


def test_coco_matches_predict_with_the_images_sizes(cli_dataset: Path, folder: Path, nano: GLIP) -> None:
    data = json.loads((cli_dataset / "annotations.json").read_text())
    assert [category["name"] for category in data["categories"]] == CLASSES
    assert [category["id"] for category in data["categories"]] == [1, 2, 3, 4, 5, 6]
    assert [image["file_name"] for image in data["images"]] == ["a.png", "b_wide.png", "sub/c.png"]
    total = 0
    for image in data["images"]:
        with Image.open(folder / image["file_name"]) as opened:
            assert (image["width"], image["height"]) == opened.size
        expected = nano.predict(folder / image["file_name"], classes=CLASSES, min_size=MIN_SIZE)
        found = [annotation for annotation in data["annotations"] if annotation["image_id"] == image["id"]]
        assert len(found) == len(expected)
        for annotation, record in zip(found, expected.to_coco(image["id"])):
            assert annotation["category_id"] == record["category_id"]
            assert annotation["bbox"] == pytest.approx(record["bbox"], abs=1e-4)
            assert annotation["score"] == pytest.approx(record["score"], abs=1e-6)
            assert annotation["area"] == pytest.approx(record["bbox"][2] * record["bbox"][3])
            assert annotation["iscrowd"] == 0
            x, y, width, height = annotation["bbox"]
            assert 0 <= x and 0 <= y and x + width <= image["width"] + 1e-3 and y + height <= image["height"] + 1e-3
        total += len(found)
    assert total > 0  # the comparison compared boxes
    assert [annotation["id"] for annotation in data["annotations"]] == list(range(1, total + 1))
    assert data["info"]["threshold"] == nano.default_threshold  # the model's default


def test_yolo_labels_are_the_coco_boxes_normalised(cli_dataset: Path, folder: Path) -> None:
    import yaml

    data = json.loads((cli_dataset / "annotations.json").read_text())
    for image in data["images"]:
        rows = [[float(value) for value in line.split()] for line in
                (cli_dataset / "labels" / Path(image["file_name"]).with_suffix(".txt")).read_text().splitlines()]
        found = [annotation for annotation in data["annotations"] if annotation["image_id"] == image["id"]]
        assert len(rows) == len(found)
        for row, annotation in zip(rows, found):
            x, y, width, height = annotation["bbox"]
            assert row[0] == annotation["category_id"] - 1
            assert row[1] * image["width"] == pytest.approx(x + width / 2, abs=1e-3)
            assert row[2] * image["height"] == pytest.approx(y + height / 2, abs=1e-3)
            assert row[3] * image["width"] == pytest.approx(width, abs=1e-3)
            assert row[4] * image["height"] == pytest.approx(height, abs=1e-3)
    assert not (cli_dataset / "labels" / "broken.txt").exists()
    config = yaml.safe_load((cli_dataset / "data.yaml").read_text())
    assert config["names"] == dict(enumerate(CLASSES)) and config["nc"] == len(CLASSES)
    assert Path(config["train"]) == folder.resolve()


def test_the_bad_image_is_skipped_and_reported(cli_dataset: Path) -> None:
    skipped = json.loads((cli_dataset / "skipped.json").read_text())
    assert [entry["file_name"] for entry in skipped] == ["broken.png"]
    assert "broken.png" in skipped[0]["error"]
    summary = json.loads((cli_dataset / "summary.json").read_text())
    assert (summary["images"], summary["labelled"], summary["skipped"]) == (4, 3, 1)
    with Image.open(cli_dataset / "contact_sheet.jpg") as sheet:
        # 3 labelled images: one row of 3 tiles.
        assert sheet.size == (3 * labeling.CONTACT_SHEET_TILE, labeling.CONTACT_SHEET_TILE)
    assert not (cli_dataset / "partial").exists()


def test_resume_after_an_interruption_labels_each_image_once(cli_dataset: Path, folder: Path, nano: GLIP,
                                                             tmp_path: Path, monkeypatch) -> None:
    """Stopped by Ctrl-C after 2 of 4 batches, then resumed: every image is predicted exactly once and
    the dataset is the uninterrupted run's."""
    seen: list[str] = []
    predict = labeling._Labeller.predict

    def counting(self, indices):
        if len(seen) == 2:
            raise KeyboardInterrupt
        seen.extend(self.paths[index].name for index in indices)
        return predict(self, indices)

    monkeypatch.setattr(labeling._Labeller, "predict", counting)
    out = tmp_path / "dataset"
    run = RunOptions(batch_size=1, save_every=1, progress=False)
    options = labeling.DetectOptions(min_size=MIN_SIZE)
    with pytest.raises(KeyboardInterrupt):
        label_folder(nano, folder, out, CLASSES, options=options, formats=("coco", "yolo"), run=run)
    assert len(seen) == 2 and (out / "partial").is_dir() and not (out / "annotations.json").exists()
    with pytest.raises(FileExistsError, match="resume=True"):  # never overwritten without resume
        label_folder(nano, folder, out, CLASSES, options=options, run=run)
    seen.append("resumed")
    summary = label_folder(nano, folder, out, CLASSES, options=options, formats=("coco", "yolo"),
                           run=RunOptions(batch_size=1, resume=True, progress=False))
    assert sorted(seen) == sorted(["a.png", "b_wide.png", "broken.png", "c.png", "resumed"])
    assert summary.labelled == 3 and summary.skipped == 1
    assert _dataset_files(out) == _dataset_files(cli_dataset)
    # Resuming a finished dataset labels nothing again.
    seen.clear()
    again = label_folder(nano, folder, out, CLASSES, options=options, formats=("coco", "yolo"),
                         run=RunOptions(batch_size=1, resume=True, progress=False))
    assert seen == [] and again == summary


def test_resume_refuses_partial_results_of_other_options(folder: Path, nano: GLIP, tmp_path: Path,
                                                         monkeypatch) -> None:
    def interrupted(self, indices):
        raise KeyboardInterrupt

    out = tmp_path / "dataset"
    monkeypatch.setattr(labeling._Labeller, "predict", interrupted)
    with pytest.raises(KeyboardInterrupt):
        label_folder(nano, folder, out, CLASSES, options=labeling.DetectOptions(min_size=MIN_SIZE),
                     run=RunOptions(batch_size=1, resume=True, progress=False))
    with pytest.raises(ValueError, match="options"):
        label_folder(nano, folder, out, CLASSES, options=labeling.DetectOptions(min_size=MIN_SIZE, threshold=0.2),
                     run=RunOptions(batch_size=1, resume=True, progress=False))


def test_cli_refuses_a_non_empty_out_without_resume(folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "dataset"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(_label_args(folder, out)) == 2
    assert "--resume" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine" and len(list(out.iterdir())) == 1
    assert main(_label_args(tmp_path / "missing", tmp_path / "other")) == 2


def test_a_dataset_inside_the_image_folder_is_not_labelled(tmp_path: Path) -> None:
    images = tmp_path / "images"
    (images / "dataset").mkdir(parents=True)
    for name in ("a.png", "dataset/contact_sheet.jpg"):
        Image.new("RGB", (8, 8)).save(images / name)
    assert labeling.folder_images(images, images / "dataset") == [images / "a.png"]
    assert len(labeling.folder_images(images)) == 2
    with pytest.raises(ValueError, match="no images outside"):
        labeling.folder_images(images / "dataset", images / "dataset")


def test_yolo_refuses_two_images_that_would_share_a_label_file(nano: GLIP, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "a.jpg"):
        Image.new("RGB", (8, 8)).save(images / name)
    with pytest.raises(ValueError, match="a.jpg and a.png would share the YOLO label file a.txt"):
        label_folder(nano, images, tmp_path / "out", CLASSES, formats=("yolo",))
    assert not (tmp_path / "out").exists()


def test_descriptive_prompts_score_the_text_and_name_the_class(nano: GLIP) -> None:
    prompts = {"star": CategoryText("a shape with five points")}
    built = label_prompts(nano, ["circle", "star"], prompts)
    assert "a shape with five points" in built[0].caption and "star" not in built[0].caption
    assert built[0].phrases == ["circle", "star"] and built[0].label_ids == [1, 2]
    with pytest.raises(ValueError, match="'moon'"):
        label_prompts(nano, ["circle"], {"moon": CategoryText("a crescent")})
    # Without prompts: the prompt of GLIP.predict(classes=...).
    assert label_prompts(nano, ["circle", "star"])[0].caption == nano.build_prompts(classes=["circle", "star"])[0].caption


def test_coco_and_yolo_of_hand_made_results() -> None:
    results = [{"width": 200, "height": 100, "boxes": [[10.0, 20.0, 50.0, 40.0]], "scores": [0.9], "labels": [2]},
               {"error": "x.png: broken"},
               {"width": 50, "height": 50, "boxes": [], "scores": [], "labels": []}]
    data = coco_dataset(["a.png", "x.png", "d/e.png"], results, ["cat", "dog"])
    assert [(image["id"], image["file_name"]) for image in data["images"]] == [(1, "a.png"), (3, "d/e.png")]
    assert data["annotations"] == [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [10.0, 20.0, 50.0, 40.0],
                                    "area": 2000.0, "iscrowd": 0, "score": 0.9}]
    assert yolo_lines(results[0]) == ["1 0.175000 0.400000 0.250000 0.400000"]
    assert yolo_lines(results[2]) == []


@pytest.mark.slow  # two torchrun processes each load GLIP-Nano (about 40 s on a busy 2-core machine)
@pytest.mark.skipif(shutil.which("torchrun", path=str(BIN)) is None or not (BIN / "glip").is_file(),
                    reason="needs torchrun and the glip script")
def test_two_processes_write_the_dataset_of_one(cli_dataset: Path, folder: Path, tmp_path: Path) -> None:
    """Batches of 1 over 2 processes: process 0 labels images 0, 2, 4, process 1 images 1, 3."""
    out = tmp_path / "dataset"
    command = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "--no-python", str(BIN / "glip"),
               *_label_args(folder, out, "--format", "both")]
    result = subprocess.run(command, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, timeout=600)
    assert result.returncode == 1, result.stderr.decode()[-4000:]  # 1: the broken image
    assert _dataset_files(out) == _dataset_files(cli_dataset)


# The student of this small loop reached 0.55 of the teacher's shape AP when the test was written
# (0.480 vs 0.875 on 100 test images at the loop's lr 1e-3; 0.34 at 5e-4; the full-size loop of
# benchmarks/label_loop.py: 0.62); the bound leaves room for the spread between machines and
# thread counts.
LOOP_TRAIN_IMAGES, LOOP_TEST_IMAGES, LOOP_STEPS = 200, 100, 100
STUDENT_AP_FRACTION = 0.45


@pytest.mark.slow  # labelling 200 images, 100 training steps, two evaluations: 10-12 minutes on 2 busy cores
def test_a_student_trained_on_the_labels_alone_reaches_a_fraction_of_the_teacher(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import label_loop

    figures = label_loop.label_loop(tmp_path, LOOP_TRAIN_IMAGES, LOOP_TEST_IMAGES, LOOP_STEPS)
    assert figures["labelled_images"] == LOOP_TRAIN_IMAGES and figures["steps"] == LOOP_STEPS
    assert figures["teacher"]["AP"] > 0.7  # GLIP-Nano's shape detection AP is 0.865 on 500 test images
    assert figures["student"]["AP"] >= STUDENT_AP_FRACTION * figures["teacher"]["AP"], figures


def test_the_committed_loop_table_is_the_one_of_its_figures() -> None:
    """benchmarks/results/label_loop.md is report_markdown of label_loop.json (edited together)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import label_loop

    results = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    figures = json.loads((results / "label_loop.json").read_text())
    assert label_loop.report_markdown(figures) == (results / "label_loop.md").read_text()
    assert figures["student_over_teacher_AP"] == pytest.approx(figures["student"]["AP"] / figures["teacher"]["AP"])
