"""The transfer study of GLIP-Nano on the Shapes world: zero-, few- and full-shot AP on new shapes.

    python benchmarks/shapes_transfer_study.py [--resume] [--write | --out DIR]

Generates the transfer splits if they are missing (``--train-images`` transfer-train images with
seed 1, the canonical 300-image transfer-test with seed 2000), runs ``glip finetune study`` with
``configs/shapes_transfer.yaml`` and the descriptive prompts ``configs/shapes_transfer_prompts.json``
(modes full and prompt, shots 0, 1, 3, 5, 10 and full, seeds 0, 1, 2: 60 runs of about a minute of
training plus the test evaluation each, on 2 CPU cores) in ``--study-dir``, prints the table and,
with ``--write``, copies it to ``benchmarks/results/shapes_transfer.{md,json}`` (or to ``--out DIR``).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from results_io import add_output_arguments, write_results

from glip.data.shapes_world import synthesize
from glip.transfer.data import CocoSplit
from glip.transfer.report import STUDY_JSON, STUDY_MARKDOWN
from glip.transfer.study import study_command

ROOT = Path(__file__).resolve().parents[1]


def split(folder: Path, images: int, seed: int, name: str) -> CocoSplit:
    """The split in ``folder``, generated first if it is not there."""
    if not (folder / "detection.json").is_file():
        synthesize(folder, images, seed, name, overwrite=True)
    return CocoSplit(folder / "detection.json", folder / "images")


def _from_root(path: Path) -> Path:
    """``path`` relative to the repository root when it lies inside it, else absolute."""
    path = path.resolve()
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data", help="folder of the generated splits")
    parser.add_argument("--train-images", type=int, default=300, help="transfer-train images (default 300)")
    parser.add_argument("--test-images", type=int, default=300, help="transfer-test images (canonical 300)")
    parser.add_argument("--shots", default="0,1,3,5,10,full", help="comma-separated k values (0 = zero-shot)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--modes", default="full,prompt", help="comma-separated tuning modes")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value of configs/shapes_transfer.yaml, e.g. max_steps=40")
    parser.add_argument("--study-dir", type=Path, default=ROOT / "runs" / "shapes_transfer",
                        help="the study's folder (runs and study.json)")
    parser.add_argument("--resume", action="store_true", help="go on with the study in --study-dir")
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Paths relative to the repository root, so that the tables name them the same on any machine.
    for name in ("data", "study_dir", "out"):
        if getattr(args, name) is not None:
            setattr(args, name, _from_root(getattr(args, name)))
    os.chdir(ROOT)

    train = split(args.data / f"shapes_transfer_train_{args.train_images}", args.train_images, 1, "transfer-train")
    test = split(args.data / f"shapes_transfer_test_{args.test_images}", args.test_images, 2000, "transfer-test")
    study_command(Path("configs/shapes_transfer.yaml"), args.set, model=None, train=train, test=test,
                  shots=args.shots, seeds=args.seeds, modes=args.modes, out=args.study_dir,
                  prompts=Path("configs/shapes_transfer_prompts.json"), resume=args.resume)
    table = (args.study_dir / STUDY_MARKDOWN).read_text()
    print(table)
    write_results(args, {"shapes_transfer.md": table,
                         "shapes_transfer.json": (args.study_dir / STUDY_JSON).read_text()})


if __name__ == "__main__":
    main()
