"""ONNX Runtime vs PyTorch on this CPU: seconds per image of GLIP-Nano and GLIP-T (random weights).

Each model is exported with free sizes (``glip.export.export_onnx(..., dynamic=True)``, the prompt's
text features baked in) and timed three ways on the same image, each one warm-up then the median of
``--runs``, ``--threads`` threads for torch and ONNX Runtime alike, fp32:

* ``GLIP.predict``: the whole call, the prompt's BERT pass included (what a user calls first);
* ``GLIP.predict_encoded``: the prompt encoded once beforehand, i.e. the same work as the graph;
* ``OnnxDetector.predict``: preprocessing and post-processing in Python, the network in ONNX Runtime.

GLIP-Nano runs on a Shapes-world scene (224x224) with its 6 shape names, GLIP-T on the reference
astronaut resized to 800x1333 with the 80 COCO class names (as benchmarks/bench_inference.py). The
largest difference between the two detection lists (threshold 0) is printed as a check.

    python benchmarks/bench_onnx.py [--runs 3] [--threads 2] [--skip-full] [--write | --out DIR]

Prints a table; writes onnx_cpu.{json,md} into benchmarks/results/ with --write (or DIR).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from bench_inference import COCO_CLASSES, REFERENCE
from PIL import Image
from results_io import add_output_arguments, write_results

from glip import GLIP
from glip.data.shapes_world import SHAPES, render_scene, sample_scene
from glip.export import OnnxDetector, export_onnx
from glip.hub.presets import PRESETS


def median_seconds(call: Callable[[], object], runs: int) -> tuple[float, list[float], object]:
    """One warm-up call, then ``runs`` timed ones: ``(median, times, the last call's result)``."""
    result = call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


def model_row(name: str, model: GLIP, image: Image.Image, classes: list[str], runs: int, threads: int,
              folder: Path) -> dict:
    start = time.perf_counter()
    path = export_onnx(model, folder / f"{name}.onnx", classes=classes, dynamic=True, source=name)
    export_s = time.perf_counter() - start
    detector = OnnxDetector(path, threads=threads)
    prompt = model.encode_prompts(classes)
    timings = {
        "pytorch_predict": median_seconds(lambda: model.predict(image, classes=classes, threshold=0.0), runs),
        "pytorch_predict_encoded": median_seconds(lambda: model.predict_encoded(image, prompt, threshold=0.0), runs),
        "onnxruntime": median_seconds(lambda: detector.predict(image, threshold=0.0), runs),
    }
    expected, ours = timings["pytorch_predict"][2], timings["onnxruntime"][2]
    same = len(expected) == len(ours) and torch.equal(expected.labels, ours.labels)
    compared = same and len(ours) > 0
    return {
        "model": name, "image": f"{image.height}x{image.width}", "prompt": f"{len(classes)} classes",
        "export_s": export_s, "onnx_mib": path.stat().st_size / 2**20,
        **{f"{key}_s": median for key, (median, _, _) in timings.items()},
        **{f"{key}_runs_s": times for key, (_, times, _) in timings.items()},
        "detections": len(expected), "same_labels": same,
        "max_score_diff": float((expected.scores - ours.scores).abs().max()) if compared else None,
        "max_box_diff_px": float((expected.boxes - ours.boxes).abs().max()) if compared else None,
    }


def table(rows: list[dict]) -> str:
    lines = ["| model | image | prompt | PyTorch predict s | PyTorch predict_encoded s | ONNX Runtime s | "
             "speed-up vs predict_encoded | export s | .onnx MiB | max score / box diff |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if not row["same_labels"]:
            check = "labels differ"
        elif row["detections"] == 0:
            check = "no detections to compare"
        else:
            check = f"{row['max_score_diff']:.1e} / {row['max_box_diff_px']:.1e} px"
        lines.append(f"| {row['model']} | {row['image']} | {row['prompt']} | {row['pytorch_predict_s']:.3f} | "
                     f"{row['pytorch_predict_encoded_s']:.3f} | {row['onnxruntime_s']:.3f} | "
                     f"{row['pytorch_predict_encoded_s'] / row['onnxruntime_s']:.2f}x | {row['export_s']:.0f} | "
                     f"{row['onnx_mib']:.0f} | {check} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs after one warm-up")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime CPU threads")
    parser.add_argument("--skip-full", action="store_true", help="only GLIP-Nano (no GLIP-T)")
    parser.add_argument("--note", default="", help="a line on the conditions, added to the .md")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        nano = GLIP.from_pretrained("glip_nano")
        scene = Image.fromarray(render_scene(sample_scene(7, "test", 0)))
        rows.append(model_row("GLIP-Nano", nano, scene, list(SHAPES), args.runs, args.threads, Path(scratch)))
        print(table(rows), flush=True)
        if not args.skip_full:
            del nano
            model = GLIP(PRESETS["glip_t"].config).eval()
            image = Image.open(REFERENCE / "glip_tiny_parity" / "case_a_astronaut.png").convert("RGB")
            rows.append(model_row("GLIP-T (random weights)", model, image.resize((1333, 800)), COCO_CLASSES,
                                  args.runs, args.threads, Path(scratch)))
    meta = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
            "threads": args.threads, "runs": args.runs, "machine": platform.machine(),
            "cpu_count": __import__("os").cpu_count()}
    text = table(rows)
    print(text)
    write_results(args, {
        "onnx_cpu.json": json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n",
        "onnx_cpu.md": f"# ONNX Runtime vs PyTorch, CPU seconds per image\n\n{text}\n\n{json.dumps(meta)}\n\n"
                       "Each time: median of the runs after one warm-up, threshold 0 (every detection kept). "
                       "predict includes the prompt's BERT pass; predict_encoded and ONNX Runtime do not (the "
                       "graph holds the prompt's text features). Made by benchmarks/bench_onnx.py.\n"
                       + (f"\n{args.note}\n" if args.note else ""),
    })


if __name__ == "__main__":
    main()
