"""Calibrate GLIP-Nano's default score threshold on the Shapes-world TRAIN split (never the test split).

Draws ``--images`` train scenes (seed 4242 by default, the scenes ``glip synth --split train --seed
4242`` writes), detects the six shape names in each with the bundled model (class-agnostic NMS as in
its config, and per-label NMS for comparison), and sweeps the score threshold. At each threshold,
detections are matched one to one to the ground truth (same shape, IoU >= 0.5, best scores first):
precision, recall, F1 and detections per object are reported. The threshold of the highest F1 under
the model's own NMS is the one to put in ``src/glip/weights/glip_nano/config.json``
(``metadata.default_threshold``).

    python benchmarks/calibrate_nano.py [--images 200] [--seed 4242] [--model glip_nano] [--write]

Prints the table; writes nano_threshold.{json,md} into benchmarks/results/ with --write (or --out DIR).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from results_io import add_output_arguments, write_results
from tqdm import tqdm

from glip import GLIP
from glip.data.shapes_world import SHAPES, render_scene, sample_scene
from glip.modeling.postprocess import Detections, box_iou_legacy

IOU_THRESHOLD = 0.5
THRESHOLDS = [round(0.025 * step, 3) for step in range(2, 39)]


@dataclass
class Truth:
    """Ground truth of one scene: ``boxes`` ``[G, 4]`` inclusive xyxy (legacy, as detections), ``labels`` ``[G]``."""

    boxes: torch.Tensor
    labels: torch.Tensor


def draw_split(seed: int, count: int) -> tuple[list[np.ndarray], list[Truth]]:
    """The first ``count`` train scenes of ``seed``: ``[224, 224, 3]`` images and their ground truth."""
    images, truths = [], []
    for index in range(count):
        scene = sample_scene(seed, "train", index)
        images.append(render_scene(scene))
        # (x, y, w, h) of the drawn pixels -> inclusive xyxy (x2 = x + w - 1, the COCO loaders' rule).
        boxes = [(x, y, x + w - 1, y + h - 1) for x, y, w, h in (item.box for item in scene.objects)]
        labels = [SHAPES.index(item.shape) + 1 for item in scene.objects]
        truths.append(Truth(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.tensor(labels)))
    return images, truths


@torch.no_grad()
def detect(model: GLIP, images: Sequence[np.ndarray], class_agnostic: bool, batch_size: int) -> list[Detections]:
    """All detections (no score threshold) of the six shape names in each image."""
    prompts = model.encode_prompts(classes=list(SHAPES))
    postprocessor = model.postprocessor(class_agnostic_nms=class_agnostic)
    results: list[Detections] = []
    for start in tqdm(range(0, len(images), batch_size), desc=f"detect (class-agnostic NMS {class_agnostic})"):
        batch = model.preprocess(images[start : start + batch_size])
        results.extend(model.detect_batch(batch.pixels.to(model.device), batch.image_sizes, prompts, postprocessor,
                                          batch.original_sizes))
    return results


def count_matches(detections: Detections, truth: Truth) -> int:
    """True positives of a one-to-one greedy matching (best scores first, same label, IoU >= 0.5)."""
    if len(detections) == 0 or truth.labels.numel() == 0:
        return 0
    iou = box_iou_legacy(detections.boxes, truth.boxes)  # [N, G]
    iou[detections.labels[:, None] != truth.labels[None, :]] = 0.0
    taken = torch.zeros(truth.labels.numel(), dtype=torch.bool)
    matched = 0
    for row in torch.argsort(detections.scores, descending=True).tolist():
        candidates = iou[row].masked_fill(taken, 0.0)
        best = int(candidates.argmax())
        if candidates[best] >= IOU_THRESHOLD:
            taken[best] = True
            matched += 1
    return matched


def sweep(results: Sequence[Detections], truths: Sequence[Truth]) -> list[dict[str, float]]:
    """Precision, recall, F1 and detections per object at each of :data:`THRESHOLDS`."""
    objects = sum(int(truth.labels.numel()) for truth in truths)
    rows = []
    for threshold in THRESHOLDS:
        kept = [result.above(threshold) for result in results]
        found = sum(len(detections) for detections in kept)
        matched = sum(count_matches(detections, truth) for detections, truth in zip(kept, truths))
        precision = matched / found if found else 1.0
        recall = matched / objects
        f1 = 2 * matched / (found + objects)
        rows.append({"threshold": threshold, "precision": precision, "recall": recall, "f1": f1,
                     "detections_per_object": found / objects})
    return rows


def best_threshold(rows: Sequence[dict[str, float]]) -> float:
    """The threshold of the highest F1 (the lowest such threshold on a tie)."""
    return max(rows, key=lambda row: (row["f1"], -row["threshold"]))["threshold"]


def markdown(report: dict) -> str:
    lines = [
        "# GLIP-Nano score threshold, calibrated on the Shapes-world train split",
        "",
        f"{report['images']} train scenes (seed {report['seed']}, {report['objects']} objects), prompt: the six "
        f"shape names. A detection counts when it matches a ground-truth object one to one (same shape, IoU >= "
        f"{IOU_THRESHOLD}). Made by `python benchmarks/calibrate_nano.py --write`.",
        "",
        f"Chosen threshold (highest F1 with the model's NMS, class-agnostic = {report['class_agnostic_nms']}): "
        f"**{report['chosen_threshold']}**.",
        "",
    ]
    for mode, rows in report["sweeps"].items():
        lines += [f"## NMS: {mode}", "", "| threshold | precision | recall | F1 | detections per object |",
                  "|---|---|---|---|---|"]
        lines += [f"| {row['threshold']:.3f} | {row['precision']:.3f} | {row['recall']:.3f} | {row['f1']:.3f} | "
                  f"{row['detections_per_object']:.2f} |" for row in rows]
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200, help="train scenes to draw (default: 200)")
    parser.add_argument("--seed", type=int, default=4242, help="train split seed (default: 4242)")
    parser.add_argument("--model", default="glip_nano", help="model preset or directory (default: glip_nano)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: 16)")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    add_output_arguments(parser)
    args = parser.parse_args(argv)

    model = GLIP.from_pretrained(args.model, device=args.device)
    images, truths = draw_split(args.seed, args.images)
    own_mode = model.inference_defaults.class_agnostic_nms
    sweeps = {}
    for class_agnostic in (own_mode, not own_mode):
        name = "class-agnostic" if class_agnostic else "per label (official)"
        sweeps[name] = sweep(detect(model, images, class_agnostic, args.batch_size), truths)
    own_rows = sweeps["class-agnostic" if own_mode else "per label (official)"]
    report = {
        "model": args.model, "split": "train", "seed": args.seed, "images": args.images,
        "objects": sum(int(truth.labels.numel()) for truth in truths), "iou_threshold": IOU_THRESHOLD,
        "class_agnostic_nms": own_mode, "chosen_threshold": best_threshold(own_rows), "sweeps": sweeps,
    }
    text = markdown(report)
    print(text)
    write_results(args, {"nano_threshold.json": json.dumps(report, indent=2) + "\n", "nano_threshold.md": text})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
