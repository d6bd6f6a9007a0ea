"""GPU check: parity on CUDA, mixed precision, and GPU time per image of full-size GLIP-T.

Run on a machine with a CUDA GPU (not part of CI):

    python benchmarks/gpu_check.py --reference tests/reference --vocab DIR_WITH_VOCAB_TXT

1. The tiny reference models on CUDA (fp32, TF32 off) reproduce the official detections
   (same labels, scores within 1e-4, boxes within 0.01 px).
2. bf16 autocast runs, gives finite outputs, and its top detections agree with fp32.
3. Full-size GLIP-T (random weights), 800x1333, 80 COCO classes: CUDA fp32 and bf16 ms/image,
   and the fp32 CUDA outputs against the same model on the CPU.

Prints the report; writes gpu_check.json into benchmarks/results/ with --write (or --out DIR).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import COCO_CLASSES  # noqa: E402
from results_io import add_output_arguments, write_results  # noqa: E402

from glip import GLIP  # noqa: E402
from glip.hub.presets import PRESETS  # noqa: E402
from glip.processing import load_tokenizer, preprocess_images, tokenize_captions  # noqa: E402


def compare_detections(detections, reference: dict[str, torch.Tensor]) -> dict[str, float | bool]:
    order = torch.argsort(reference["det.scores"], descending=True)
    scores, labels, boxes = (reference[f"det.{name}"][order] for name in ("scores", "labels", "boxes"))
    detections = detections.to("cpu")
    same = len(detections) == len(scores)
    return {
        "same_count": same,
        "same_labels": bool(same and torch.equal(detections.labels, labels)),
        "max_score_diff": float((detections.scores - scores).abs().max()) if same else float("nan"),
        "max_box_diff_px": float((detections.boxes - boxes).abs().max()) if same else float("nan"),
    }


def timed(function, runs: int) -> list[float]:
    times = []
    for run in range(runs + 1):
        torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        torch.cuda.synchronize()
        if run:
            times.append(time.perf_counter() - start)
    return times


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="the tests/reference folder")
    parser.add_argument("--vocab", type=Path, required=True, help="a folder with BERT's vocab.txt")
    parser.add_argument("--runs", type=int, default=5, help="timed runs after one warm-up")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device("cuda")
    report: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "parity": [], "bf16": []}

    for folder_name, cases in (("glip_tiny_parity", "abc"), ("glip_tiny_a_parity", "ac")):
        folder = args.reference / folder_name
        model = GLIP.from_official(folder / "checkpoint.pth", folder / "config.yaml", folder / "text_config.json",
                                   args.vocab, device=device)
        for case in cases:
            meta = json.loads((folder / f"case_{case}.json").read_text())
            reference = load_file(folder / f"case_{case}.safetensors")
            prompt = ({"classes": meta["prompt"]} if meta["prompt_kind"] == "class_list"
                      else {"caption": meta["prompt"], "spans": meta["tokens_positive"]})
            image = folder / meta["image_file"]
            fp32 = model.predict(image, threshold=0.0, min_size=meta["demo_min_image_size"], **prompt)
            report["parity"].append({"case": f"{folder_name}/{case}", **compare_detections(fp32, reference)})
            with torch.autocast("cuda", dtype=torch.bfloat16):
                bf16 = model.predict(image, threshold=0.0, min_size=meta["demo_min_image_size"], **prompt)
            top = min(10, len(bf16), len(fp32))
            report["bf16"].append({
                "case": f"{folder_name}/{case}",
                "finite": bool(torch.isfinite(bf16.scores).all() and torch.isfinite(bf16.boxes).all()),
                "top10_label_agreement": float((bf16.labels[:top] == fp32.labels[:top]).float().mean()),
                "max_top10_score_diff": float((bf16.scores[:top] - fp32.scores[:top]).abs().max()),
            })

    torch.manual_seed(0)
    image = Image.open(args.reference / "glip_tiny_parity" / "case_a_astronaut.png").convert("RGB").resize((1333, 800))
    full = GLIP(PRESETS["glip_t"].config).eval()  # random weights
    full._tokenizer = load_tokenizer(args.vocab)
    batch = preprocess_images([image], 800)
    prompt = full.build_prompts(classes=COCO_CLASSES)[0]
    tokens = tokenize_captions([prompt.caption], full.tokenizer)
    with torch.no_grad():
        cpu_outputs = full(batch.pixels, tokens.input_ids, tokens.attention_mask)
    full = full.to(device)
    pixels, ids, mask = batch.pixels.to(device), tokens.input_ids.to(device), tokens.attention_mask.to(device)
    with torch.no_grad():
        gpu_outputs = full(pixels, ids, mask)
        difference = max(
            float((g.cpu() - c).abs().max() / max(1.0, float(c.abs().max())))
            for g, c in zip(gpu_outputs.dot_product_logits + gpu_outputs.box_regression,
                            cpu_outputs.dot_product_logits + cpu_outputs.box_regression)
        )
        fp32_times = timed(lambda: full.predict(image, classes=COCO_CLASSES, threshold=0.0), args.runs)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16_times = timed(lambda: full.predict(image, classes=COCO_CLASSES, threshold=0.0), args.runs)
    report["glip_t_full"] = {
        "cpu_vs_cuda_fp32_max_relative_diff": difference,
        "cuda_fp32_s_per_image": statistics.median(fp32_times),
        "cuda_bf16_s_per_image": statistics.median(bf16_times),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
    }
    print(json.dumps(report, indent=2))
    write_results(args, {"gpu_check.json": json.dumps(report, indent=2) + "\n"})


if __name__ == "__main__":
    main()
