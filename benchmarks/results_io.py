"""Where a benchmark's results go: the table is always printed; the results files are written into
``benchmarks/results/`` (the committed figures the README quotes) only with ``--write``, or into
another folder with ``--out DIR``. A run to try something out thus never overwrites them."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

from glip.files import write_text_atomic

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """``--write`` and ``--out DIR`` (one or the other)."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--write", action="store_true",
                       help=f"write the results files into {RESULTS_DIR.parent.name}/{RESULTS_DIR.name}/, replacing "
                            "the committed figures (default: print only)")
    where.add_argument("--out", type=Path, default=None, help="write the results files into this folder instead")


def results_dir(args: argparse.Namespace) -> Path | None:
    """The folder the results files go to, or None to print only."""
    if args.out is not None:
        return Path(args.out)
    return RESULTS_DIR if args.write else None


def write_results(args: argparse.Namespace, files: Mapping[str, str]) -> list[Path]:
    """Write ``{file name: text}`` where ``args`` say (:func:`results_dir`); returns the paths written."""
    folder = results_dir(args)
    if folder is None:
        print(f"(not written: pass --write to update {RESULTS_DIR}, or --out DIR)", file=sys.stderr)
        return []
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in files.items():
        write_text_atomic(folder / name, text)
        paths.append(folder / name)
    print(f"wrote {', '.join(str(path) for path in paths)}", file=sys.stderr)
    return paths
