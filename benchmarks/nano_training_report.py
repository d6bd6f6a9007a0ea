"""Summarise a GLIP-Nano training run and its Shapes-world evaluation into benchmarks/results/.

    glip train configs/glip_nano_shapes.yaml
    glip eval shapes --model runs/glip_nano/model --split-dir data/shapes_test --out runs/glip_nano/eval
    python benchmarks/nano_training_report.py --run runs/glip_nano [--write | --out DIR]

Prints the summary: training wall time and throughput (from metrics.jsonl) and the Shapes-world
figures against the targets of the training issue; writes glip_nano_shapes.{json,md} into
benchmarks/results/ with --write (or DIR).
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path

from results_io import add_output_arguments, write_results

TARGETS = {"detection_AP": 0.70, "pairs_AP": 0.50, "held_out_pairs_AP": 0.30, "grounding_R@1": 0.80}
LABELS = {"detection_AP": "shape detection AP@[.5:.95]", "pairs_AP": "36-pair attribute AP",
          "held_out_pairs_AP": "held-out pairs AP (zero-shot composition)", "grounding_R@1": "phrase grounding R@1"}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/glip_nano"), help="training output folder")
    parser.add_argument("--eval", type=Path, default=None, help="folder of metrics.json (default RUN/eval)")
    parser.add_argument("--wall-seconds", type=float, default=None, help="measured wall time of `glip train`")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    records = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps = [r for r in records if "images_per_s" in r]
    metrics = json.loads(((args.eval or args.run / "eval") / "metrics.json").read_text())
    summary = {
        "steps": steps[-1]["step"],
        "median_images_per_s": statistics.median(r["images_per_s"] for r in steps),
        "wall_seconds": args.wall_seconds,
        "final_loss": steps[-1]["loss"],
        "shapes_world": {key: metrics[key] for key in TARGETS},
        "targets": TARGETS,
        "grounding_R@5": metrics.get("grounding_R@5"),
        "detection_AP50": metrics.get("detection_AP50"),
        "pairs_AP50": metrics.get("pairs_AP50"),
    }
    lines = ["| figure | GLIP-Nano | target |", "|---|---|---|"]
    for key, target in TARGETS.items():
        lines.append(f"| {LABELS[key]} | {metrics[key]:.3f} | >= {target:.2f} |")
    wall = f"{args.wall_seconds / 60:.1f} min" if args.wall_seconds else "see metrics.jsonl"
    text = (
        "# GLIP-Nano on the Shapes world (test split: 500 images, seed 1000)\n\n" + "\n".join(lines) +
        f"\n\nTraining: {summary['steps']} steps of 8 images, {wall} on 2 CPU cores, median "
        f"{summary['median_images_per_s']:.2f} images/s (recipe configs/glip_nano_shapes.yaml).\n"
    )
    print(text)
    write_results(args, {"glip_nano_shapes.json": json.dumps(summary, indent=2) + "\n", "glip_nano_shapes.md": text})


if __name__ == "__main__":
    main()
