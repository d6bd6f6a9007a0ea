"""Where GLIP-T's CPU time goes: seconds, GFLOP and GFLOP/s of each stage of one ``predict``.

Full-size GLIP-T (random weights), one 800x1333 image, the 80 COCO class names, 2 threads, fp32 (as
``bench_inference.py``). Each stage (Swin, FPN, BERT, and per tower layer its fusion, text layer and
DyConv, then the head) is timed by forward hooks on one run after a warm-up, and its FLOPs are
counted by ``torch.utils.flop_counter`` (matmuls, convolutions, attention; 2 per multiply-add).
The same process measures the CPU's fp32 matmul throughput, so "% of peak" says which stages are
furthest from what the hardware can do: those are the ones to speed up first.

    python benchmarks/profile_stages.py [--threads 2] [--write | --out DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from bench_inference import COCO_CLASSES, REFERENCE, matmul_throughput
from PIL import Image
from results_io import add_output_arguments, write_results
from torch import nn

from glip import GLIP
from glip.hub.presets import PRESETS


def stage_modules(model: GLIP) -> dict[str, nn.Module]:
    """The stages in forward order, none nested in another."""
    stages = {"swin": model.backbone, "fpn": model.fpn, "bert": model.language}
    for index, layer in enumerate(model.tower.layers):
        stages[f"tower.{index}.fusion"] = layer.fusion
        stages[f"tower.{index}.text_layer"] = layer.text_layer
        stages[f"tower.{index}.dyconv"] = layer.dyconv
    stages["head"] = model.head
    return stages


@contextmanager
def stage_timer(groups: Mapping[str, Sequence[nn.Module]]) -> Iterator[dict[str, float]]:
    """While the block runs, add each forward's seconds of the modules in ``groups[name]`` to the
    yielded ``{name: seconds}`` (forward hooks, removed on exit). Modules must not nest."""
    seconds: dict[str, float] = defaultdict(float)
    handles = []
    for name, modules in groups.items():
        for module in modules:
            started: list[float] = []
            handles.append(module.register_forward_pre_hook(lambda *_, s=started: s.append(time.perf_counter())))
            handles.append(module.register_forward_hook(
                lambda *_, s=started, n=name: seconds.__setitem__(n, seconds[n] + time.perf_counter() - s.pop())))
    try:
        yield seconds
    finally:
        for handle in handles:
            handle.remove()


def time_stages(model: GLIP, image: Image.Image) -> tuple[dict[str, float], float]:
    """Seconds per stage of one ``predict`` (after a warm-up) and the whole call's seconds."""
    with stage_timer({name: [module] for name, module in stage_modules(model).items()}) as seconds:
        model.predict(image, classes=COCO_CLASSES, min_size=800, threshold=0.0)  # warm-up
        seconds.clear()
        start = time.perf_counter()
        model.predict(image, classes=COCO_CLASSES, min_size=800, threshold=0.0)
        total = time.perf_counter() - start
        return dict(seconds), total


def count_stage_flops(model: GLIP, image: Image.Image) -> dict[str, float]:
    """FLOPs per stage of one ``predict`` (the counter's module paths matched to the stages)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model.predict(image, classes=COCO_CLASSES, min_size=800, threshold=0.0)
    per_module = counter.get_flop_counts()
    paths = {id(module): path for path, module in model.named_modules()}
    flops = {}
    for name, module in stage_modules(model).items():
        # The counter names a module by its path under the outermost module that was called, spelt
        # with that module's class name: predict calls the parts, so "DyHeadTower.layers.0.fusion".
        top, _, rest = paths[id(module)].partition(".")
        key = type(getattr(model, top)).__name__ + (f".{rest}" if rest else "")
        matches = [counts for path, counts in per_module.items() if path == key or path.endswith(f".{key}")]
        flops[name] = float(sum(matches[0].values())) if matches else 0.0
    flops["total"] = float(counter.get_total_flops())
    return flops


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    image = Image.open(REFERENCE / "glip_tiny_parity" / "case_a_astronaut.png").convert("RGB").resize((1333, 800))
    peak, size = matmul_throughput(torch.float32)
    model = GLIP(PRESETS["glip_t"].config).eval()
    seconds, total = time_stages(model, image)
    flops = count_stage_flops(model, image)
    rows = [{"stage": name, "seconds": seconds.get(name, 0.0), "gflop": flops[name] / 1e9} for name in stage_modules(model)]
    rest = total - sum(row["seconds"] for row in rows)
    rows.append({"stage": "other (pre/post-processing, anchors, glue)", "seconds": rest,
                 "gflop": (flops["total"] - sum(flops[name] for name in stage_modules(model))) / 1e9})
    lines = ["| stage | s | % of time | GFLOP | GFLOP/s | % of fp32 matmul peak |", "|---|---|---|---|---|---|"]
    for row in rows:
        rate = row["gflop"] / row["seconds"] if row["seconds"] > 0 else 0.0
        row["gflops_per_s"] = rate
        lines.append(f"| {row['stage']} | {row['seconds']:.2f} | {100 * row['seconds'] / total:.1f} | "
                     f"{row['gflop']:.1f} | {rate:.0f} | {100 * rate * 1e9 / peak:.0f} |")
    lines.append(f"| **predict** | {total:.2f} | 100 | {flops['total'] / 1e9:.1f} | "
                 f"{flops['total'] / 1e9 / total:.0f} | {100 * flops['total'] / total / peak:.0f} |")
    table = "\n".join(lines)
    summary = (f"fp32 matmul peak of this CPU, same process: {peak / 1e9:.0f} GFLOP/s ({size}^3, "
               f"{args.threads} threads); GLIP-T random weights, 800x1333, 80 COCO classes.")
    print(table)
    print(summary)
    write_results(args, {
        "profile_cpu.json": json.dumps({"peak_gflops": peak / 1e9, "threads": args.threads, "total_s": total,
                                        "rows": rows}, indent=2) + "\n",
        "profile_cpu.md": f"# GLIP-T on the CPU, stage by stage\n\n{table}\n\n{summary}\n",
    })


if __name__ == "__main__":
    main()
