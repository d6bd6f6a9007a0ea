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
from glip.evaluation.annotations import read_coco
from glip.evaluation.coco import CocoEvaluation, coco_metrics, detection_protocol
from glip.evaluation.grounding import evaluate_grounding
from glip.evaluation.protocol import check_output_folder, evaluate
from glip.evaluation.runner import RunOptions
from glip.files import write_json_atomic


def evaluate_shapes_world(
    model,
    split_dir: str | Path,
    batch_size: int = 16,
    min_size: int | None = None,
    max_size: int | None = None,
    *,
    out: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """All three Shapes-world evaluations of ``model`` on a generated split (e.g. the test split).

    Args:
        model: a :class:`glip.GLIP`.
        split_dir: a folder written by ``glip synth``.
        batch_size: images (detection) or captions (grounding) per forward pass.
        min_size / max_size: test resize (default: the model config's, :func:`resolve_test_size`).
        out: folder for ``metrics.json`` (checked writable before any inference).
        progress: show progress bars.

    Returns:
        ``detection_AP``, ``pairs_AP``, ``held_out_pairs_AP``, ``per_pair_AP``, ``grounding_R@1``, ...
    """
    split_dir = Path(split_dir)
    check_output_folder(Path(out) if out is not None else None)
    run = RunOptions(batch_size, progress=progress)
    report: dict[str, Any] = {}
    for name in ("detection", "pairs"):
        evaluation, categories = class_list_ap(model, split_dir, name, run, min_size, max_size)
        report[f"{name}_AP"] = evaluation.metrics["AP"]
        report[f"{name}_AP50"] = evaluation.metrics["AP50"]
        if name == "pairs":
            held_out = [c["id"] for c in categories if c["name"] in HELD_OUT_PAIRS]
            if held_out:
                report["held_out_pairs_AP"] = coco_metrics(split_dir / "pairs.json", evaluation.results,
                                                           held_out).metrics["AP"]
            report["per_pair_AP"] = evaluation.per_category_ap
    grounding = evaluate_grounding(model, split_dir / "grounding.json", split_dir / "images", ks=(1, 5),
                                   min_size=min_size, max_size=max_size, batch_size=batch_size, progress=progress)
    report["grounding_R@1"] = grounding["R@1"]
    report["grounding_R@5"] = grounding["R@5"]
    report["grounding_phrases"] = grounding["phrases"]
    if out is not None:
        write_report(report, Path(out) / "metrics.json")
    return report


def class_list_ap(model, split_dir: Path, name: str, run: RunOptions, min_size: int | None,
                   max_size: int | None) -> tuple[CocoEvaluation, list[dict[str, Any]]]:
    """COCO AP on ``<name>.json`` with the demo class-list prompt of its categories (in id order)."""
    annotation_file = split_dir / f"{name}.json"
    data = read_coco(annotation_file)
    categories = sorted(data["categories"], key=lambda category: category["id"])
    label_to_category = {index + 1: category["id"] for index, category in enumerate(categories)}
    prompts = model.build_prompts(classes=[category["name"] for category in categories])
    protocol = detection_protocol(model, annotation_file, data, split_dir / "images", prompts, label_to_category,
                                  min_size=min_size, max_size=max_size, name=name)
    return evaluate(protocol, run), categories


def write_report(report: dict[str, Any], path: str | Path) -> None:
    """Write the report as JSON, atomically."""
    write_json_atomic(Path(path), report)
