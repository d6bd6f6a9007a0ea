"""CPU time of a 3x3 modulated deformable conv: torchvision's kernel vs glip's sampling + matmul.

    python benchmarks/bench_deform_conv.py [--write | --out DIR]

Prints a table; writes deform_conv_cpu.{json,md} into benchmarks/results/ with --write (or DIR).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

import torch
from results_io import add_output_arguments, write_results
from torchvision.ops import deform_conv2d

from glip.modeling.deform_conv import modulated_deform_conv2d

# (name, batch, channels, height, width): GLIP-Nano training (P3 of 224 px, batch 8) and GLIP-T
# inference (P3 and P4 of an 800x1333 image).
CASES = [("nano train P3", 8, 64, 28, 28, True), ("GLIP-T P3", 1, 256, 100, 167, False),
         ("GLIP-T P4", 1, 256, 50, 84, False)]


def measure(function, backward: bool, repeats: int = 3) -> float:
    def once() -> None:
        out = function()
        if backward:
            out.sum().backward()

    once()
    start = time.perf_counter()
    for _ in range(repeats):
        once()
    return (time.perf_counter() - start) / repeats


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    rows = []
    for name, batch, channels, height, width, backward in CASES:
        x = torch.randn(batch, channels, height, width, requires_grad=backward)
        offset = torch.randn(batch, 18, height, width, requires_grad=backward)
        mask = torch.rand(batch, 9, height, width, requires_grad=backward)
        weight = torch.randn(channels, channels, 3, 3, requires_grad=backward)
        bias = torch.zeros(channels, requires_grad=backward)
        with torch.set_grad_enabled(backward):
            official = measure(lambda: deform_conv2d(x, offset, weight, bias, padding=1, mask=mask), backward)
            ours = measure(lambda: modulated_deform_conv2d(x, offset, mask, weight, bias), backward)
        rows.append({"case": name, "backward": backward, "torchvision_s": official, "glip_s": ours,
                     "speedup": official / ours})
    lines = ["| case | fwd+bwd | torchvision s | glip s | speed-up |", "|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['backward']} | {r['torchvision_s']:.3f} | {r['glip_s']:.3f} | {r['speedup']:.1f}x |"
              for r in rows]
    print("\n".join(lines))
    write_results(args, {
        "deform_conv_cpu.json": json.dumps(rows, indent=2) + "\n",
        "deform_conv_cpu.md": "# Deformable conv on 2 CPU threads\n\n" + "\n".join(lines) + "\n",
    })


if __name__ == "__main__":
    main()
