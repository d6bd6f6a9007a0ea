"""CPU inference time per image: full-size GLIP-T (random weights) and the tiny reference model.

The measurement mirrors the official one in ``tests/reference/glip_checkpoint_layout/README.md``:
one 800x1333 image, the 80 COCO class names as the prompt, ``torch.set_num_threads(2)``, fp32,
one warm-up then the median of 3 runs of ``predict`` (preprocessing, network, post-processing).

    python benchmarks/bench_inference.py [--runs 3] [--threads 2] [--skip-full] [--write | --out DIR]

Prints a table; writes inference_cpu.{json,md} into benchmarks/results/ with --write (or DIR).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from results_io import add_output_arguments, write_results

from glip import GLIP
from glip.hub.presets import PRESETS
from glip.processing import default_offline_vocab_dir

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "reference"
COCO_CLASSES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
]


def time_predict(model: GLIP, image: Image.Image, min_size: int, runs: int) -> dict[str, float]:
    times = []
    for run in range(runs + 1):
        start = time.perf_counter()
        model.predict(image, classes=COCO_CLASSES, min_size=min_size, threshold=0.0)
        elapsed = time.perf_counter() - start
        if run > 0:  # the first run is the warm-up
            times.append(elapsed)
    return {"median_s": statistics.median(times), "runs_s": times}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs after one warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--skip-full", action="store_true", help="only the tiny model")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    image = Image.open(REFERENCE / "glip_tiny_parity" / "case_a_astronaut.png").convert("RGB").resize((1333, 800))
    rows = []
    if not args.skip_full:
        model = GLIP(PRESETS["glip_t"].config).eval()
        rows.append({"model": "GLIP-T (random weights)", "image": "800x1333", "prompt": "80 COCO classes",
                     **time_predict(model, image, 800, args.runs), "official_median_s": 30.06})
        del model
    folder = REFERENCE / "glip_tiny_parity"
    tiny = GLIP.from_official(folder / "checkpoint.pth", folder / "config.yaml", folder / "text_config.json",
                              default_offline_vocab_dir())
    rows.append({"model": "tiny reference (glip_tiny_parity)", "image": "800x1333", "prompt": "80 COCO classes",
                 **time_predict(tiny, image, 800, args.runs)})
    meta = {"torch": torch.__version__, "threads": args.threads, "machine": platform.machine(),
            "processor": platform.processor(), "cpu_count": __import__("os").cpu_count()}
    lines = ["| model | image | prompt | median s/image | runs (s) | official median s |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['image']} | {row['prompt']} | {row['median_s']:.2f} | "
                     f"{', '.join(f'{t:.2f}' for t in row['runs_s'])} | {row.get('official_median_s', '-')} |")
    table = "\n".join(lines)
    print(table)
    write_results(args, {
        "inference_cpu.json": json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n",
        "inference_cpu.md": f"# CPU inference time per image\n\n{table}\n\n{json.dumps(meta)}\n\n"
                            "Official GLIP-T figure: tests/reference/glip_checkpoint_layout/README.md (same machine "
                            "type, 2 threads, model forward).\n",
    })


if __name__ == "__main__":
    main()
