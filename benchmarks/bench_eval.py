"""Evaluation throughput (images/s) of a model on a generated Shapes-world split, batch 1 vs 8.

Each run is ``glip eval coco`` on the split's ``detection.json`` (official evaluation prompt of the
6 shape names, the model's test resize, pycocotools at the end), timed end to end after one
warm-up batch; the AP of every batch size is reported too, as a check that batching changes
nothing but the speed.

    python benchmarks/bench_eval.py [--models glip_nano,DIR] [--images 64] [--batch-sizes 1,8] [--threads 2]

The tiny reference model of ``tests/reference/glip_tiny_parity`` is measured after converting it:
``glip convert CHECKPOINT CONFIG --text-config TEXT_CONFIG --out runs/tiny_ref``.

Prints a table; writes eval_throughput.{json,md} into benchmarks/results/ with --write (or --out DIR).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from results_io import add_output_arguments, write_results

from glip import GLIP
from glip.data.shapes_world import synthesize
from glip.evaluation.coco import evaluate_detection, read_coco
from glip.evaluation.runner import RunOptions, model_digest

ROOT = Path(__file__).resolve().parents[1]


def time_evaluation(model: GLIP, annotations: Path, images: Path, batch_size: int) -> dict[str, float]:
    """Wall time and throughput of one evaluation after a warm-up batch (the weights' hash of the
    resumption fingerprint is computed beforehand, outside the timing)."""
    digest = model_digest(model)
    first = read_coco(annotations)["images"][:batch_size]
    with tempfile.TemporaryDirectory() as scratch:
        warm_up = Path(scratch) / "warm_up.json"
        warm_up.write_text(json.dumps({**read_coco(annotations), "images": first}))
        evaluate_detection(model, warm_up, images, run=RunOptions(batch_size, progress=False), model_fingerprint=digest)
    start = time.perf_counter()
    evaluation = evaluate_detection(model, annotations, images, run=RunOptions(batch_size, progress=False),
                                    model_fingerprint=digest)
    seconds = time.perf_counter() - start
    count = len(read_coco(annotations)["images"])
    return {"batch_size": batch_size, "images": count, "seconds": seconds, "images_per_s": count / seconds,
            "AP": evaluation.metrics["AP"]}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="glip_nano",
                        help="comma-separated preset names or model directories (default glip_nano)")
    parser.add_argument("--images", type=int, default=64, help="images of the generated test split (default 64)")
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes (default 1,8)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--split-dir", type=Path, default=None,
                        help="an existing `glip synth` split to use instead of generating one")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    batch_sizes = [int(size) for size in args.batch_sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        if args.split_dir is None:
            split = synthesize(Path(scratch) / "split", args.images, seed=1000, split="test", show_progress=False)
            annotations, images = split["detection"], split["images"]
        else:
            annotations, images = args.split_dir / "detection.json", args.split_dir / "images"
        for name in args.models.split(","):
            model = GLIP.from_pretrained(name, device=args.device)
            test_size = f"{model.config.input.min_size_test}/{model.config.input.max_size_test}"
            for size in batch_sizes:
                rows.append({"model": name, "test_size": test_size, **time_evaluation(model, annotations, images, size)})
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu"
    meta = {"models": args.models, "device": args.device, "device_name": device, "torch": torch.__version__,
            "threads": args.threads, "machine": platform.machine(), "cpu_count": os.cpu_count()}
    lines = ["| model | test resize | batch size | images | seconds | images/s | AP |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['test_size']} | {row['batch_size']} | {row['images']} | "
                     f"{row['seconds']:.2f} | {row['images_per_s']:.2f} | {row['AP']:.4f} |")
    table = "\n".join(lines)
    print(table)
    write_results(args, {
        "eval_throughput.json": json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n",
        "eval_throughput.md": "# Evaluation throughput: `glip eval coco` on a Shapes-world test split\n\n"
                              f"{table}\n\n{json.dumps(meta)}\n",
    })


if __name__ == "__main__":
    main()
