"""``glip label``: auto-label an image folder into a detection dataset."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

from glip.cli_support import UsageError, ensure_writable_dir, non_negative_int, output_lock, positive_int

LABEL_EPILOG = """\
outputs (in --out): annotations.json (COCO detection: images with file_name relative to IMAGES_DIR,
width and height; the classes as categories; boxes xywh with the model's score), and/or
labels/<file>.txt + data.yaml (YOLO), skipped.json (unreadable images and why), contact_sheet.jpg
(a few labelled images drawn) and summary.json. Ctrl-C keeps the batches done in OUT/partial: go
on with --resume. Several processes or machines share the batches under torchrun (the dataset is
the one of a single process; --out must be a folder they all see):
  torchrun --nproc_per_node=4 --no-python glip label IMAGES_DIR --classes ... --out DATASET

exit status: 0 all images labelled, 1 some images skipped (the others are written) or a run-time
failure, 2 usage error (bad flag, non-empty --out without --resume, busy --out), 130 interrupted."""


def add_parsers(commands, command: Callable[..., argparse.ArgumentParser]) -> None:
    """Register the subcommand on ``commands``; ``command(commands, name, summary)`` makes a leaf parser."""
    from glip.cli import _add_detection_arguments, _add_model_arguments

    parser = command(commands, "label", "auto-label an image folder into a COCO / YOLO dataset (resumable, "
                     "runs under torchrun too)", epilog=LABEL_EPILOG)
    parser.add_argument("images_dir", type=Path, metavar="IMAGES_DIR",
                        help="folder of images to label (searched recursively, as glip detect does)")
    parser.add_argument("--classes", required=True, help='comma-separated class names, e.g. "person,dog"')
    parser.add_argument("--prompts", type=Path, default=None,
                        help='descriptive prompts JSON: {"class": "prompt text"} or {"class": {"prefix": ..., '
                             '"name": ..., "suffix": ...}} (as glip eval --prompts)')
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to write (empty or new)")
    parser.add_argument("--format", choices=["coco", "yolo", "both"], default="coco",
                        help="annotation format (default coco)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run in --out (same model, folder, classes and options)")
    parser.add_argument("--batch-size", type=positive_int, default=8,
                        help="images per forward pass (default 8). A batch pads its images to one size, which "
                             "moves scores of images of other sizes a little; 1 gives exactly glip detect's boxes")
    parser.add_argument("--save-every", type=positive_int, default=25,
                        help="batches between commits of partial results (default 25)")
    parser.add_argument("--threads", type=non_negative_int, default=0,
                        help="torch CPU threads, 0 = torch's default (default 0); on a busy machine fewer threads "
                             "than cores can be several times quicker")
    _add_detection_arguments(parser)
    _add_model_arguments(parser)
    parser.set_defaults(handler=command_label)


def command_label(args: argparse.Namespace) -> int:
    """Check the flags, then :func:`glip.labeling.label_folder`; under torchrun process 0 prints."""
    from glip.cli import EXIT_FAILED, EXIT_OK, _check_model_arguments, _detect_options, _parse_classes

    classes = _parse_classes(args.classes)
    if not args.images_dir.is_dir():
        raise UsageError(f"IMAGES_DIR {args.images_dir}: not a folder")
    _check_model_arguments(args)
    out = ensure_writable_dir(args.out, "--out")
    from glip.labeling import dataset_started

    if not args.resume and dataset_started(out):
        raise UsageError(f"--out {out} is not empty: add --resume to continue its run, or choose another --out")
    from glip.device import init_distributed, resolve_device, shutdown, torch_threads
    from glip.evaluation.prompts import read_prompts_file
    from glip.evaluation.runner import RunOptions
    from glip.labeling import label_folder

    prompts = read_prompts_file(args.prompts) if args.prompts is not None else None
    formats = ("coco", "yolo") if args.format == "both" else (args.format,)
    device = resolve_device(args.device)
    context = init_distributed(device, backend="gloo")  # the runner exchanges Python objects only
    args.device = str(device)
    args.partial_results = f"{out / 'partial'} (go on with --resume)"
    try:
        # One lock per group: the other processes write only their own partial files.
        with output_lock(out) if context.is_main else nullcontext(), torch_threads(args.threads):
            from glip.cli import load_model_from_args

            model = load_model_from_args(args)
            summary = label_folder(model, args.images_dir, out, classes, prompts=prompts,
                                   options=_detect_options(args), formats=formats,
                                   run=RunOptions(args.batch_size, out, args.resume, args.save_every))
    finally:
        shutdown(context)
    if summary is None or not context.is_main:  # a process other than 0 of a torchrun group
        return EXIT_OK
    print(f"wrote {out}: {summary.labelled} of {summary.images} images labelled, {summary.boxes} boxes, "
          f"{summary.skipped} skipped" + (f" (see {out / 'skipped.json'})" if summary.skipped else ""))
    return EXIT_FAILED if summary.skipped else EXIT_OK
