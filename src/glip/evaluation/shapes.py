"""The three evaluations of the Shapes world (``docs/shapes_world.md``).

1. shape detection: the 6 shape names as the prompt, COCO AP@[.5:.95] on ``detection.json``;
2. pair detection: the 36 pair names as one prompt, AP on ``pairs.json`` over all 36 classes and
   over the 3 held-out pairs alone (zero-shot composition);
3. phrase grounding: Recall@1 over the phrases of ``grounding.json`` (any-box protocol).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from glip.data.shapes_world import HELD_OUT_PAIRS
from glip.evaluation.coco import coco_metrics, predict_coco_images, read_coco
from glip.evaluation.grounding import evaluate_grounding
from glip.evaluation.runner import write_json


def evaluate_shapes_world(model, split_dir: str | Path, batch_size: int = 16) -> dict[str, Any]:
    """All three Shapes-world evaluations of ``model`` on a generated split (e.g. the test split)."""
    split_dir = Path(split_dir)
    images = split_dir / "images"
    report: dict[str, Any] = {}
    for name in ("detection", "pairs"):
        annotation_file = split_dir / f"{name}.json"
        data = read_coco(annotation_file)
        categories = sorted(data["categories"], key=lambda category: category["id"])
        label_to_category = {index + 1: category["id"] for index, category in enumerate(categories)}
        results = predict_coco_images(model, data["images"], images, [c["name"] for c in categories],
                                      label_to_category, batch_size, desc=name)
        evaluation = coco_metrics(annotation_file, results)
        report[f"{name}_AP"] = evaluation.metrics["AP"]
        report[f"{name}_AP50"] = evaluation.metrics["AP50"]
        if name == "pairs":
            held_out = [c["id"] for c in categories if c["name"] in HELD_OUT_PAIRS]
            if held_out:
                report["held_out_pairs_AP"] = coco_metrics(annotation_file, results, held_out).metrics["AP"]
            report["per_pair_AP"] = evaluation.per_category_ap
    grounding = evaluate_grounding(model, split_dir / "grounding.json", images, ks=(1, 5))
    report["grounding_R@1"] = grounding["R@1"]
    report["grounding_R@5"] = grounding["R@5"]
    report["grounding_phrases"] = grounding["phrases"]
    return report


def write_report(report: dict[str, Any], path: str | Path) -> None:
    """Write the report as JSON, atomically."""
    write_json(Path(path), report, indent=2)
