"""CPU inference time per image: full-size GLIP-T (random weights), the tiny reference model, and
the peer most users would pick instead, Hugging Face transformers' Grounding DINO (Swin-T default
config, random weights), all in one run.

The measurement mirrors the official one in ``tests/reference/glip_checkpoint_layout/README.md``:
one 800x1333 image, the 80 COCO class names as the prompt, ``torch.set_num_threads(2)``, fp32,
one warm-up then the median of 3 runs of ``predict`` (preprocessing, network, post-processing).
Grounding DINO gets the same pixels and a 256-token prompt (its maximum) and is timed on its
forward pass.

Machine noise cancels in ratios: the same process measures this machine's fp32 and bf16 matmul
throughput (2048 x 2048 x 2048, median of 5) and counts each model's FLOPs
(``torch.utils.flop_counter``: matmuls, convolutions, attention; 2 per multiply-add), so each row
also gives ``seconds / (FLOPs / fp32 throughput)``: how many times the matmul limit of this CPU.

    python benchmarks/bench_inference.py [--runs 3] [--threads 2] [--skip-full] [--skip-peer] [--write | --out DIR]

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


def matmul_throughput(dtype: torch.dtype, size: int = 2048, runs: int = 5) -> tuple[float, int]:
    """``(FLOP/s, size)`` of a ``size``-cubed matmul in ``dtype`` on the CPU (median of ``runs``
    after a warm-up).

    A CPU without bf16 units (no AVX512-BF16 / AMX) multiplies bf16 at ~1 GFLOP/s, where one 2048^3
    product takes 15 s: a 512^3 probe decides, and such a CPU is measured at 512.
    """
    if size > 512 and matmul_throughput(dtype, 512, runs=1)[0] < 20e9:
        size = 512
    first, second = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    times = []
    for run in range(runs + 1):
        start = time.perf_counter()
        torch.mm(first, second)
        if run > 0:
            times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times), size


def count_flops(call) -> float:
    """FLOPs of ``call()`` as PyTorch's flop counter sees them (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        call()
    return float(counter.get_total_flops())


def grounding_dino_row(pixels: torch.Tensor, runs: int) -> dict:
    """The peer: transformers' GroundingDinoForObjectDetection, default (Swin-T) config, random
    weights, one image and a 256-token prompt, timed on its forward pass."""
    from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection

    config = GroundingDinoConfig()
    model = GroundingDinoForObjectDetection(config).eval()
    tokens = config.max_text_len
    input_ids = torch.randint(1000, 2000, (1, tokens))
    input_ids[0, 0], input_ids[0, -1] = 101, 102  # [CLS] ... [SEP]
    inputs = {"pixel_values": pixels, "input_ids": input_ids, "attention_mask": torch.ones(1, tokens, dtype=torch.long),
              "pixel_mask": torch.ones(1, *pixels.shape[-2:], dtype=torch.long)}

    def forward() -> None:
        with torch.no_grad():
            model(**inputs)

    times = []
    for run in range(runs + 1):
        start = time.perf_counter()
        forward()
        if run > 0:
            times.append(time.perf_counter() - start)
    return {"model": "Grounding DINO, transformers (Swin-T default config, random weights)", "image": "800x1333",
            "prompt": f"{tokens} tokens", "median_s": statistics.median(times), "runs_s": times,
            "flops": count_flops(forward)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs after one warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--skip-full", action="store_true", help="only the tiny model")
    parser.add_argument("--skip-peer", action="store_true", help="without Grounding DINO")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    image = Image.open(REFERENCE / "glip_tiny_parity" / "case_a_astronaut.png").convert("RGB").resize((1333, 800))
    measured = {"fp32": matmul_throughput(torch.float32), "bf16": matmul_throughput(torch.bfloat16)}
    throughput = {name: flops for name, (flops, _) in measured.items()}
    rows = []
    if not args.skip_full:
        model = GLIP(PRESETS["glip_t"].config).eval()
        rows.append({"model": "GLIP-T (random weights)", "image": "800x1333", "prompt": "80 COCO classes",
                     **time_predict(model, image, 800, args.runs), "official_median_s": 30.06,
                     "flops": count_flops(lambda: model.predict(image, classes=COCO_CLASSES, min_size=800))})
        pixels = model.preprocess([image], 800, 1333).pixels
        del model
        if not args.skip_peer:
            rows.append(grounding_dino_row(pixels, args.runs))
    folder = REFERENCE / "glip_tiny_parity"
    tiny = GLIP.from_official(folder / "checkpoint.pth", folder / "config.yaml", folder / "text_config.json",
                              default_offline_vocab_dir())
    rows.append({"model": "tiny reference (glip_tiny_parity)", "image": "800x1333", "prompt": "80 COCO classes",
                 **time_predict(tiny, image, 800, args.runs),
                 "flops": count_flops(lambda: tiny.predict(image, classes=COCO_CLASSES, min_size=800))})
    for row in rows:
        row["fp32_limit_s"] = row["flops"] / throughput["fp32"]
        row["times_fp32_limit"] = row["median_s"] / row["fp32_limit_s"]
    meta = {"torch": torch.__version__, "threads": args.threads, "machine": platform.machine(),
            "processor": platform.processor(), "cpu_count": __import__("os").cpu_count(),
            "matmul_gflops": {name: value / 1e9 for name, value in throughput.items()}}
    lines = ["| model | image | prompt | median s/image | runs (s) | GFLOP | fp32 limit s | x limit | official median s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['model']} | {row['image']} | {row['prompt']} | {row['median_s']:.2f} | "
                     f"{', '.join(f'{t:.2f}' for t in row['runs_s'])} | {row['flops'] / 1e9:.0f} | "
                     f"{row['fp32_limit_s']:.2f} | {row['times_fp32_limit']:.2f} | {row.get('official_median_s', '-')} |")
    lines.append("")
    lines.append("This machine's matmul throughput, same process, " + ", ".join(
        f"{name} {flops / 1e9:.0f} GFLOP/s ({size}^3)" for name, (flops, size) in measured.items())
        + f", {args.threads} threads. GFLOP: torch.utils.flop_counter (matmuls, convolutions, attention).")
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
