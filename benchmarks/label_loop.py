"""The auto-labelling loop closed: GLIP-Nano labels a Shapes-world folder, a fresh student trains on
those labels alone, and both are scored on the same test split.

    python benchmarks/label_loop.py [--train-images 300] [--steps 120] [--write | --out DIR]

1. ``glip synth``: a train split (``--train-images``, seed 5; only its images are used, never its
   annotations) and the first ``--test-images`` of the canonical test split (seed 1000);
2. ``glip label``: GLIP-Nano (the teacher, bundled) labels the train images with the six shape names
   at its default threshold (:func:`glip.labeling.label_folder`);
3. ``glip train``: a student with GLIP-Nano's architecture, started like GLIP-Nano itself from the
   ImageNet EfficientNet-Lite0 and MiniLM weights (``pretrained: false``, ``init_pretrained_parts:
   true``), trains ``--steps`` steps of 8 images at ``--lr`` on the label dataset only;
4. ``glip eval shapes``' shape detection AP@[.5:.95] of teacher and student on the test split, and
   their ratio. The labels' own AP against the train split's gold boxes is reported too (how good
   the teacher's labels are).

Prints the table; writes ``label_loop.{md,json}`` into benchmarks/results/ with ``--write`` (or
``--out DIR``). 14 to 17 minutes at the defaults on 2 CPU cores shared with a training job and
tests (the training's 120 steps take 11 to 12 of them).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from results_io import add_output_arguments, write_results

from glip.data.shapes_world import SHAPES, synthesize
from glip.device import torch_threads
from glip.evaluation.coco import coco_metrics
from glip.evaluation.runner import RunOptions
from glip.evaluation.shapes import class_list_ap
from glip.labeling import ANNOTATIONS_FILE, label_folder
from glip.pipeline import GLIP
from glip.training.loop import train
from glip.training.recipe import TrainRecipe

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SEED = 5
TEST_SEED = 1000  # the canonical test split (its first images: image i does not depend on the count)


def student_recipe(labels: Path, images: Path, output_dir: Path, steps: int, threads: int,
                   lr: float = 1.0e-3) -> TrainRecipe:
    """``configs/glip_nano_shapes.yaml``'s recipe, shortened, with the label dataset as its only source."""
    return TrainRecipe.from_dict({
        "model": "glip_nano", "pretrained": False, "init_pretrained_parts": True,
        "output_dir": str(output_dir), "batch_size": 8, "max_steps": steps, "precision": "fp32",
        "num_threads": threads, "seed": 0, "checkpoint_every": steps, "log_every": 20, "progress_bar": False,
        "device": "cpu",
        # A short run: the test scale only, and every prompt names all six shapes as the evaluation's
        # does (rather than sampled negatives), so that no step is spent on other prompt forms.
        "data": {"sources": [{"kind": "coco", "annotations": str(labels), "images": str(images)}],
                 "min_sizes": [224], "max_size": 1333, "flip_prob": 0.5, "num_workers": 1,
                 "full_category_prompts": True},
        "optimizer": {"lr": lr, "weight_decay": 1.0e-4, "clip_grad_norm": 1.0},
        "schedule": {"kind": "cosine", "warmup_steps": max(1, steps // 10), "warmup_factor": 0.001, "min_lr": 1.0e-6},
    })


def _split(folder: Path, images: int, seed: int, name: str) -> Path:
    if not (folder / "detection.json").is_file():
        synthesize(folder, images, seed, name, show_progress=False, overwrite=True)
    return folder


def detection_ap(model: GLIP, split: Path) -> dict[str, float]:
    """``glip eval shapes``' shape detection AP and AP50 (the six shape names as the prompt)."""
    evaluation, _ = class_list_ap(model, split, "detection", RunOptions(16, progress=False), None, None)
    return {"AP": evaluation.metrics["AP"], "AP50": evaluation.metrics["AP50"]}


def label_loop(work: Path, train_images: int = 300, test_images: int = 150, steps: int = 120,
               threads: int = 1, lr: float = 1.0e-3) -> dict[str, Any]:
    """Label, train, evaluate (see the module docstring); the figures and timings."""
    train_split = _split(work / "train", train_images, TRAIN_SEED, "train")
    test_split = _split(work / "test", test_images, TEST_SEED, "test")
    seconds: dict[str, float] = {}
    with torch_threads(threads):
        teacher = GLIP.from_pretrained("glip_nano")
        start = time.perf_counter()
        summary = label_folder(teacher, train_split / "images", work / "labels", list(SHAPES),
                               run=RunOptions(batch_size=8, resume=True, progress=False))
        seconds["label"] = time.perf_counter() - start
        labels = work / "labels" / ANNOTATIONS_FILE
        # The labels scored as detections against the train split's gold boxes.
        records = [{key: annotation[key] for key in ("image_id", "category_id", "bbox", "score")}
                   for annotation in json.loads(labels.read_text())["annotations"]]
        gold = json.loads((train_split / "detection.json").read_text())
        label_quality = coco_metrics(_renumbered(gold, work / "labels"), records).metrics
        shutil.rmtree(work / "student", ignore_errors=True)  # a fresh student every run
        start = time.perf_counter()
        trained = train(student_recipe(labels, train_split / "images", work / "student", steps, threads, lr))
        seconds["train"] = time.perf_counter() - start
        start = time.perf_counter()
        teacher_ap = detection_ap(teacher, test_split)
        student_ap = detection_ap(GLIP.from_pretrained(trained["model_dir"]), test_split)
        seconds["evaluate"] = time.perf_counter() - start
    return {
        "train_images": train_images, "test_images": test_images, "labelled_images": summary.labelled,
        "label_boxes": summary.boxes, "gold_boxes": len(gold["annotations"]),
        "labels_AP_vs_gold": label_quality["AP"], "labels_AP50_vs_gold": label_quality["AP50"],
        "steps": trained["steps"], "batch_size": 8, "lr": lr, "teacher": teacher_ap, "student": student_ap,
        "student_over_teacher_AP": student_ap["AP"] / teacher_ap["AP"],
        "student_over_teacher_AP50": student_ap["AP50"] / teacher_ap["AP50"],
        "seconds": seconds, "threads": threads,
    }


def _renumbered(gold: dict[str, Any], dataset: Path) -> dict[str, Any]:
    """The gold train annotations with the label dataset's image ids and category ids (both list the
    same files; categories by name), so that the labels score against them."""
    labelled = json.loads((dataset / ANNOTATIONS_FILE).read_text())
    image_ids = {image["file_name"]: image["id"] for image in labelled["images"]}
    category_ids = {category["name"]: category["id"] for category in labelled["categories"]}
    gold_files = {image["id"]: image["file_name"] for image in gold["images"]}
    gold_names = {category["id"]: category["name"] for category in gold["categories"]}
    annotations = [{**annotation, "image_id": image_ids[gold_files[annotation["image_id"]]],
                    "category_id": category_ids[gold_names[annotation["category_id"]]]}
                   for annotation in gold["annotations"]]
    return {"images": labelled["images"], "categories": labelled["categories"], "annotations": annotations}


def report_markdown(figures: dict[str, Any]) -> str:
    seconds = figures["seconds"]
    return "\n".join([
        f"# Auto-label loop: GLIP-Nano labels {figures['train_images']} Shapes-world images, a fresh student "
        "trains on them", "",
        "| model | shape detection AP@[.5:.95] | AP50 |", "|---|---|---|",
        f"| teacher: GLIP-Nano (bundled) | {figures['teacher']['AP']:.3f} | {figures['teacher']['AP50']:.3f} |",
        f"| student: {figures['steps']} steps of {figures['batch_size']} at lr {figures['lr']:g} on the labels only | "
        f"{figures['student']['AP']:.3f} | {figures['student']['AP50']:.3f} |",
        f"| student / teacher | {figures['student_over_teacher_AP']:.2f} | {figures['student_over_teacher_AP50']:.2f} |",
        "",
        f"Test split: the first {figures['test_images']} images of the canonical test split (seed {TEST_SEED}). "
        f"Labels: {figures['label_boxes']} boxes on {figures['labelled_images']} images (gold: "
        f"{figures['gold_boxes']}), AP {figures['labels_AP_vs_gold']:.3f} / AP50 "
        f"{figures['labels_AP50_vs_gold']:.3f} against the gold boxes; the student never sees gold boxes. "
        "The student starts from ImageNet EfficientNet-Lite0 + MiniLM, as GLIP-Nano did (1500 steps on gold "
        "detection, pair and grounding data).",
        "",
        f"Time on 2 CPU cores ({figures['threads']} torch thread{'s' if figures['threads'] != 1 else ''}, the cores "
        f"shared with other jobs): labelling "
        f"{seconds['label']:.0f} s, training {seconds['train']:.0f} s, evaluating both {seconds['evaluate']:.0f} s "
        "(`python benchmarks/label_loop.py`).", "",
    ])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "label_loop",
                        help="folder of the splits, the label dataset and the student (default runs/label_loop)")
    parser.add_argument("--train-images", type=int, default=300, help="images to label (default 300)")
    parser.add_argument("--test-images", type=int, default=150, help="test images (default 150)")
    parser.add_argument("--steps", type=int, default=120, help="student training steps of 8 images (default 120)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: quicker than 2 beside a training job on 2 cores)")
    parser.add_argument("--lr", type=float, default=1.0e-3,
                        help="student learning rate (default 1e-3: twice GLIP-Nano's, for a run 12x shorter; "
                             "5e-4 gave a student of 0.48 of the teacher's AP, 1e-3 0.62)")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    figures = label_loop(args.work, args.train_images, args.test_images, args.steps, args.threads, args.lr)
    text = report_markdown(figures)
    print(text)
    write_results(args, {"label_loop.json": json.dumps(figures, indent=2) + "\n", "label_loop.md": text})
    return figures


if __name__ == "__main__":
    main()
