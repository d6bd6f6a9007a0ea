"""``glip export``: a model and a prompt to an ONNX graph."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from glip.cli_support import UsageError, _number, character_span

EXPORT_EPILOG = """\
The graph takes the network input of glip.processing.preprocess_images ([B, 3, H, W] float32:
resized, BGR 0-255 minus pixel_mean over pixel_std, zero-padded to a multiple of 32) and returns,
per anchor, decoded boxes, the prompt's phrase scores and centerness (see glip/export.py); with
--text-inputs it also takes token ids, attention mask and phrase weights.
glip.export.OnnxDetector(OUT).predict(image) runs it with ONNX Runtime and returns the detections
of `glip detect`; the file holds everything it needs (model config, phrases or vocabulary, threshold).

exit status: 0 done, 1 failed at run time (e.g. an export error), 2 usage error."""

# Kept in step with glip.export.MIN_OPSET / MAX_OPSET (not imported: that module loads torch).
OPSETS = (17, 18, 19)


def add_parsers(commands, command: Callable[..., argparse.ArgumentParser]) -> None:
    """Register the subcommand on ``commands``; ``command(commands, name, summary)`` makes a leaf parser."""
    from glip.cli import _add_model_arguments

    export = command(commands, "export", "export a model and a prompt to ONNX", epilog=EXPORT_EPILOG)
    export.add_argument("--classes", help='comma-separated class names, e.g. "person,dog"')
    export.add_argument("--caption", help="caption whose phrases to ground")
    export.add_argument("--span", action="append", type=character_span, metavar="START:END",
                        help="character range of a phrase in --caption (repeatable; default: noun phrases)")
    export.add_argument("--text-inputs", action="store_true",
                        help="put the language model in the graph and take the prompt at run time "
                             "(OnnxDetector.predict(image, classes=...)) instead of --classes/--caption")
    export.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    export.add_argument("--dynamic", action="store_true",
                        help="free batch size, height and width (default: one image of --input-size)")
    export.add_argument("--input-size", type=_input_size, default=None, metavar="HxW",
                        help="height x width of a static graph, multiples of 32 (default: the square of the "
                             "model's longest resized side, padded, which every image fits)")
    export.add_argument("--opset", type=_opset, default=18, help="ONNX opset, 17 to 19 (default 18)")
    _add_model_arguments(export)
    export.set_defaults(handler=command_export)


def _opset(text: str) -> int:
    value = _number(text, int)
    if value not in OPSETS:
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(map(str, OPSETS))}, got {text}")
    return value


def _input_size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 384x384, got {text!r}")
    height, width = (_number(part, int) for part in parts)
    if height <= 0 or width <= 0 or height % 32 or width % 32:
        raise argparse.ArgumentTypeError(f"height and width must be positive multiples of 32, got {text}")
    return height, width


def command_export(args: argparse.Namespace) -> int:
    """Check the flags, load the model, write the graph."""
    from glip.cli import EXIT_OK, _check_model_arguments, _parse_classes, load_model_from_args

    if args.text_inputs:
        if args.classes is not None or args.caption is not None:
            raise UsageError("--text-inputs takes the prompt at run time: leave out --classes and --caption")
    elif (args.classes is None) == (args.caption is None):
        raise UsageError("give exactly one of --classes or --caption (or --text-inputs)")
    if args.span and args.caption is None:
        raise UsageError("--span needs --caption")
    if args.dynamic and args.input_size is not None:
        raise UsageError("--input-size is for a static graph: leave it out with --dynamic")
    if args.out.is_dir():
        raise UsageError(f"--out {args.out} is a folder: give the .onnx file to write")
    if args.device != "cpu":
        raise UsageError("glip export runs on the CPU (the deformable convs export through their CPU path): "
                         "leave out --device")
    if getattr(args, "dtype", "fp32") != "fp32":
        raise UsageError("glip export writes an fp32 graph: leave out --dtype")
    classes = _parse_classes(args.classes) if args.classes is not None else None
    _check_model_arguments(args)
    from glip.export import export_onnx  # raises ImportError with the install command without onnx

    model = load_model_from_args(args)
    name = args.model if args.model is not None else str(args.checkpoint)
    path = export_onnx(model, args.out, classes=classes, caption=args.caption, spans=args.span or None,
                       text_inputs=args.text_inputs, dynamic=args.dynamic, opset=args.opset,
                       input_size=args.input_size, source=name)
    size = path.stat().st_size / 2**20
    prompt = "prompt input" if args.text_inputs else "prompt baked in"
    print(f"wrote {path} ({name}, {prompt}, {'dynamic' if args.dynamic else 'static'} image input, {size:.1f} MiB)")
    return EXIT_OK
