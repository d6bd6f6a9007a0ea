"""Which colour-shape pair wins on the objects of each held-out pair: the composition failure, named.

    python benchmarks/pair_confusion.py --model glip_nano --split-dir data/shapes_test_1001 [--write | --out DIR]

For every object of a held-out pair (green triangle, orange circle, blue star) in a Shapes-world test
split, the 36 pair names are the prompt; the best-scoring detection with IoU >= 0.5 names the pair the
model sees there. Prints, per held-out pair, how often each pair wins and the mean score the true pair
gets on its own objects; writes ``pair_confusion.{md,json}`` with ``--write``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from results_io import add_output_arguments, write_results

MATCH_IOU = 0.5


def confusion(model: Any, split_dir: Path, pair: str, limit: int) -> dict[str, Any]:
    """Winning pair names and true-pair scores on up to ``limit`` images holding ``pair``."""
    import torch

    from glip.modeling.postprocess import box_iou_legacy

    data = json.loads((split_dir / "pairs.json").read_text())
    names = {category["id"]: category["name"] for category in data["categories"]}
    prompt = [names[key] for key in sorted(names)]
    pair_id = next(key for key, name in names.items() if name == pair)
    files = {image["id"]: image["file_name"] for image in data["images"]}
    boxes_by_image: dict[int, list[list[float]]] = defaultdict(list)
    for annotation in data["annotations"]:
        if annotation["category_id"] == pair_id:
            x, y, w, h = annotation["bbox"]
            boxes_by_image[annotation["image_id"]].append([x, y, x + w - 1, y + h - 1])
    winners: Counter[str] = Counter()
    true_scores = []
    for image_id in sorted(boxes_by_image)[:limit]:
        detections = model.predict(split_dir / "images" / files[image_id], classes=prompt, threshold=0.01,
                                   class_agnostic_nms=False)
        iou = box_iou_legacy(detections.boxes, torch.tensor(boxes_by_image[image_id]))  # [N, G]
        for column in range(iou.shape[1]):
            matched = iou[:, column] >= MATCH_IOU
            if not matched.any():
                winners["(no box)"] += 1
                true_scores.append(0.0)
                continue
            scores = torch.where(matched, detections.scores, torch.full_like(detections.scores, -1.0))
            winners[detections.phrases[int(scores.argmax())]] += 1
            own = [float(detections.scores[k]) for k in torch.nonzero(matched).flatten().tolist()
                   if detections.phrases[k] == pair]
            true_scores.append(max(own, default=0.0))
    total = sum(winners.values())
    return {"objects": total, "winners": dict(winners.most_common()),
            "correct": winners[pair] / total if total else 0.0,
            "mean_true_pair_score": statistics.fmean(true_scores) if true_scores else 0.0}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="glip_nano", help="preset or model folder")
    parser.add_argument("--split-dir", type=Path, required=True, help="a Shapes-world test split (glip synth)")
    parser.add_argument("--images", type=int, default=40, help="images per held-out pair (default 40)")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    import torch

    from glip import GLIP
    from glip.data.shapes_world import HELD_OUT_PAIRS

    torch.set_num_threads(2)
    model = GLIP.from_pretrained(args.model)
    report = {"model": args.model, "split": str(args.split_dir),
              "pairs": {pair: confusion(model, args.split_dir, pair, args.images) for pair in HELD_OUT_PAIRS}}
    lines = [f"# Held-out pairs: which pair name wins on their objects ({args.model}, {args.split_dir})", "",
             "| held-out pair | objects | named right | mean score of the true pair | most frequent winners |",
             "|---|---|---|---|---|"]
    for pair, row in report["pairs"].items():
        top = ", ".join(f"{name} {count}" for name, count in list(row["winners"].items())[:3])
        lines.append(f"| {pair} | {row['objects']} | {row['correct']:.2f} | {row['mean_true_pair_score']:.3f} | {top} |")
    text = "\n".join(lines) + "\n"
    print(text)
    write_results(args, {"pair_confusion.md": text, "pair_confusion.json": json.dumps(report, indent=2) + "\n"})


if __name__ == "__main__":
    main()
