"""Command line: ``glip detect``, ``demo``, ``eval``, ``train``, ``finetune``, ``convert``, ...

Each subcommand checks its flags and output folder, then calls one public function. Heavy modules
(torch, transformers) are imported inside the handlers, so ``glip --help``, ``glip models`` and
argument errors start instantly.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from glip.cli_support import (
    UsageError,
    character_span,
    cli_message,
    ensure_writable_dir,
    non_negative_int,
    output_lock,
    overlap,
    positive_int,
    probability,
)

logger = logging.getLogger("glip")

# Exit statuses (``glip detect --help`` tells them).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


@lru_cache(maxsize=1)
def _model_defaults() -> dict[str, str]:
    """Help text of the options that default to the model's own config, with the real values of
    the official presets and GLIP-Nano (the presets are plain data: no torch import)."""
    from glip.hub.presets import PRESETS

    nano = PRESETS["glip_nano"]
    official = next(preset for preset in PRESETS.values() if not preset.bundled)

    def values(pick) -> str:
        if pick(official) == pick(nano):
            return f"default: the model's, {pick(nano)} for official presets and glip_nano"
        return f"default: the model's, {pick(official)} for official presets, {pick(nano)} for glip_nano"

    def cap(preset) -> str:
        return str(preset.config.input.max_size_test or "1333/800 of --min-size")

    return {
        "threshold": values(lambda p: p.default_threshold),
        "nms": values(lambda p: p.config.postprocess.nms_threshold),
        "max_detections": values(lambda p: p.config.postprocess.detections_per_image),
        "class_agnostic": values(lambda p: "on" if p.config.postprocess.class_agnostic_nms else "off"),
        "min_size": values(lambda p: p.config.input.min_size_test).replace("the model's", "the model's test size"),
        "max_size": values(cap),
    }


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model (a preset or directory, or an official checkpoint + config)")
    group.add_argument("--model", default=None, help="preset name (see `glip models`) or converted model directory")
    group.add_argument("--checkpoint", type=Path, help="official GLIP .pth checkpoint")
    group.add_argument("--config", type=Path, help="official yacs YAML config of --checkpoint")
    group.add_argument("--text-config", type=Path, help="BERT config JSON/YAML (default: bert-base-uncased)")
    group.add_argument("--tokenizer", type=Path, help="directory with vocab.txt (default: bert-base-uncased)")
    group.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1, mps (default: cpu)")
    group.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32",
                       help="compute dtype: fp32 (exact, default) or bf16/fp16 under autocast (fast on GPUs and "
                            "on CPUs with bf16 units, slower than fp32 on others)")


def _add_resize_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = _model_defaults()
    parser.add_argument("--min-size", type=positive_int, default=None,
                        help=f"shorter image side after resize; {defaults['min_size']}")
    parser.add_argument("--max-size", type=non_negative_int, default=None,
                        help=f"cap on the longer side after resize, 0 = none; {defaults['max_size']}")


def _add_detection_arguments(parser: argparse.ArgumentParser) -> None:
    """Score threshold, NMS, detections kept and resize: each defaults to the model's config."""
    defaults = _model_defaults()
    parser.add_argument("--threshold", type=probability, default=None,
                        help=f"keep detections scoring above this, in [0, 1]; {defaults['threshold']}")
    parser.add_argument("--nms-threshold", type=overlap, default=None,
                        help=f"IoU above which NMS drops the weaker box, in (0, 1]; {defaults['nms']}")
    parser.add_argument("--max-detections", type=positive_int, default=None,
                        help=f"detections kept per image before --threshold; {defaults['max_detections']}")
    parser.add_argument("--class-agnostic-nms", action=argparse.BooleanOptionalAction, default=None,
                        help="NMS across labels too, so that an object keeps one label (not the official "
                             f"per-label NMS); {defaults['class_agnostic']}")
    _add_resize_arguments(parser)


def _detect_options(args: argparse.Namespace):
    from glip.cli_detect import DetectOptions

    return DetectOptions(threshold=args.threshold, nms_threshold=args.nms_threshold,
                         max_detections=args.max_detections, min_size=args.min_size, max_size=args.max_size,
                         class_agnostic_nms=args.class_agnostic_nms)


def load_model_from_args(args: argparse.Namespace):
    """The model that ``--model`` or ``--checkpoint/--config`` names."""
    _check_model_arguments(args)
    from glip.pipeline import GLIP, parse_dtype

    if args.checkpoint is not None:
        model = GLIP.from_official(args.checkpoint, args.config, args.text_config, args.tokenizer, device=args.device)
    else:
        model = GLIP.from_pretrained(args.model, device=args.device)
    model.inference_dtype = parse_dtype(getattr(args, "dtype", "fp32"))
    return model


def _check_model_arguments(args: argparse.Namespace) -> None:
    """Flag combinations of :func:`_add_model_arguments`, checked before any work."""
    if args.checkpoint is not None or args.config is not None:
        if args.checkpoint is None or args.config is None:
            raise UsageError("--checkpoint and --config go together")
        if args.model is not None:
            raise UsageError("give --model or --checkpoint/--config, not both")
    elif args.model is None:
        raise UsageError("give --model NAME_OR_DIR or --checkpoint PTH --config YAML")


def _parse_classes(text: str) -> list[str]:
    classes = [name.strip() for name in text.split(",") if name.strip()]
    if not classes:
        raise UsageError("--classes is empty")
    return classes


def command_detect(args: argparse.Namespace) -> int:
    from glip.cli_detect import detect_images, expand_image_inputs

    if (args.classes is None) == (args.caption is None):
        raise UsageError("give exactly one of --classes or --caption")
    if args.span and args.caption is None:
        raise UsageError("--span needs --caption")
    classes = _parse_classes(args.classes) if args.classes is not None else None
    images = expand_image_inputs(args.images)
    _check_model_arguments(args)
    out = ensure_writable_dir(args.out, "--out")
    with output_lock(out):
        model = load_model_from_args(args)
        args.partial_results = out / "detections.json"
        report = detect_images(model, images, out, classes=classes, caption=args.caption, spans=args.span or None,
                               options=_detect_options(args))
    failed = sum("error" in entry for entry in report)
    print(f"wrote {out / 'detections.json'} ({len(report) - failed} images, {failed} failed)")
    return EXIT_FAILED if failed else EXIT_OK


def command_convert(args: argparse.Namespace) -> int:
    out = ensure_writable_dir(args.out, "--out")
    from glip.pipeline import GLIP

    model = GLIP.from_official(args.checkpoint, args.config, args.text_config, args.tokenizer)
    model.save_pretrained(out)
    print(f"wrote {out} (use it with --model {out})")
    return EXIT_OK


def command_models(args: argparse.Namespace) -> int:
    from glip.hub.presets import PRESETS

    width = max(len(name) for name in PRESETS)
    for name, preset in PRESETS.items():
        where = "bundled" if preset.bundled else f"hf://{preset.hub_repo}/{preset.checkpoint}"
        print(f"{name:<{width}}  {preset.description}  [{where}]")
    return EXIT_OK


def command_synth(args: argparse.Namespace) -> int:
    out = ensure_writable_dir(args.out, "--out")
    from glip.data.shapes_world import synthesize

    paths = synthesize(out, args.images, args.seed, args.split, overwrite=args.overwrite)
    print(f"wrote {args.images} {args.split} images to {out}: " + ", ".join(p.name for p in paths.values()))
    return EXIT_OK


def command_demo(args: argparse.Namespace) -> int:
    out = ensure_writable_dir(args.out, "--out")
    from glip.cli_detect import detect_images
    from glip.data.shapes_world import SHAPES, synthesize
    from glip.pipeline import GLIP

    classes = _parse_classes(args.classes) if args.classes else list(SHAPES)
    with output_lock(out):
        paths = synthesize(out / "scene", 1, args.seed, "test", show_progress=False, overwrite=True)
        image = sorted(paths["images"].iterdir())[0]
        model = GLIP.from_pretrained(args.model, device=args.device)
        report = detect_images(model, [str(image)], out, classes=classes, options=_detect_options(args))
    if "error" in report[0]:  # the drawn scene could not be read back: a run-time failure
        raise RuntimeError(report[0]["error"])
    for phrase, score, box in zip(report[0]["phrases"], report[0]["scores"], report[0]["boxes"]):
        print(f"{phrase:>16s} {score:.2f} [{', '.join(f'{v:.0f}' for v in box)}]")
    print(f"wrote {report[0]['picture']} and {out / 'detections.json'}")
    return EXIT_OK


def command_eval(args: argparse.Namespace) -> int:
    """``glip eval <protocol>``: one evaluation function per protocol; under ``torchrun`` every
    process evaluates its share and process 0 writes ``--out``."""
    _check_model_arguments(args)
    ensure_writable_dir(args.out, "--out")
    from tqdm import tqdm

    from glip.device import init_distributed, resolve_device, shutdown

    if args.protocol != "shapes":  # the runner saves OUT/partial every --save-every batches and on Ctrl-C
        args.partial_results = f"{args.out / 'partial'} (go on with --resume)"
    # The evaluation exchanges only Python objects, so its group uses gloo even on GPUs.
    device = resolve_device(args.device)
    context = init_distributed(device, backend="gloo")
    args.device = str(device)
    try:
        model = load_model_from_args(args)
        metrics, failed = _evaluate(model, args)
    finally:
        shutdown(context)
    if metrics is None:  # a process other than 0 of a torchrun group
        return EXIT_OK
    # The per-data-set table of a suite, the per-category table of COCO (not LVIS's 1203 rows).
    table = {"odinw": args.out / "summary.md", "coco": args.out / "per_category.md"}.get(args.protocol)
    if table is not None and table.is_file():
        tqdm.write(table.read_text())
    for key, value in metrics.items():
        if isinstance(value, float):
            tqdm.write(f"{key:>20s} {value:.4f}")
    for name, error in (failed or {}).items():
        tqdm.write(f"FAILED {name}: {cli_message(error) if isinstance(error, BaseException) else error}")
    tqdm.write(f"wrote {args.out / 'metrics.json'}")
    return EXIT_FAILED if failed else EXIT_OK


def _evaluate(model, args: argparse.Namespace) -> tuple[dict | None, dict[str, str] | None]:
    """Run the chosen protocol; ``(metrics of process 0 or None, failed data sets)``."""
    from glip.evaluation.prompts import read_prompts_file
    from glip.evaluation.runner import RunOptions, process_group

    if args.protocol == "shapes":
        from glip.evaluation.shapes import evaluate_shapes_world

        if process_group()[1] > 1:
            raise UsageError("glip eval shapes runs in one process (not under torchrun)")
        metrics = evaluate_shapes_world(model, args.split_dir, batch_size=args.batch_size, min_size=args.min_size,
                                        max_size=args.max_size, out=args.out)
        return metrics, None
    prompts = read_prompts_file(args.prompts) if getattr(args, "prompts", None) else None
    if args.protocol == "odinw":
        from glip.evaluation.odinw import evaluate_odinw

        names = [name.strip() for name in args.datasets.split(",") if name.strip()] if args.datasets else None
        evaluation = evaluate_odinw(model, args.root, args.out, suite=args.suite, datasets=names, split=args.split,
                                    prompts=prompts, batch_size=args.batch_size, min_size=args.min_size,
                                    max_size=args.max_size, resume=args.resume, save_every=args.save_every)
        return (None, None) if evaluation is None else (evaluation.metrics, evaluation.failed)
    run = RunOptions(args.batch_size, args.out, args.resume, args.save_every)
    if args.protocol == "lvis":
        from glip.evaluation.lvis import evaluate_lvis

        evaluation = evaluate_lvis(model, args.annotations, args.images, min_size=args.min_size,
                                   max_size=args.max_size, chunk_size=args.chunk_size,
                                   max_detections=args.max_detections, top_k=args.top_k, prompts=prompts, run=run)
    elif args.protocol == "flickr":
        from glip.evaluation.flickr import evaluate_flickr

        evaluation = evaluate_flickr(model, args.annotations, args.images, min_size=args.min_size,
                                     max_size=args.max_size, run=run)
    else:
        from glip.evaluation.coco import evaluate_detection

        evaluation = evaluate_detection(model, args.annotations, args.images, prompts=prompts,
                                        chunk_size=args.chunk_size, min_size=args.min_size, max_size=args.max_size,
                                        max_detections=args.max_detections, run=run)
    return (None, None) if evaluation is None else (evaluation.metrics, None)


def command_train(args: argparse.Namespace) -> int:
    from glip.training.recipe import TrainRecipe

    recipe = TrainRecipe.from_yaml(args.config, args.set or [])
    output_dir = ensure_writable_dir(Path(recipe.output_dir), "output_dir (of the recipe)")
    from glip.training.loop import train_command

    # Checkpoints are saved every checkpoint_every steps; --resume goes on from the latest. A
    # diverged run raises NonFiniteLossError (a RuntimeError: exit status 1, the last good
    # checkpoint kept).
    args.partial_results = f"{output_dir} (go on with --resume)"
    model_dir = train_command(args.config, args.set or [], args.resume)
    if int(os.environ.get("RANK", "0")) == 0:  # one line per torchrun group, not one per process
        print(f"final model: {model_dir} (use it with --model {model_dir})")
    return EXIT_OK


def command_pseudo_label(args: argparse.Namespace) -> int:
    from glip.data.pseudo_label import pseudo_label, shapes_world_phrases

    if args.out.is_dir():
        raise UsageError(f"--out {args.out}: is a folder; give the grounding JSON file to write")
    ensure_writable_dir(args.out.parent, "--out")
    model = load_model_from_args(args)
    extractor = shapes_world_phrases if args.phrases == "shapes" else None
    stats = pseudo_label(model, args.captions, args.images, args.out, args.threshold, extractor)
    print(f"wrote {args.out}: " + ", ".join(f"{key} {value}" for key, value in stats.items()))
    return EXIT_OK


def command_finetune(args: argparse.Namespace) -> int:
    from glip.transfer.finetune import CocoSplit

    ensure_writable_dir(args.out, "--out")
    train = CocoSplit(args.train, args.train_images)
    if args.action == "study":
        from glip.transfer.study import study_command

        report = study_command(args.config, args.set or [], model=args.model, train=train,
                               test=CocoSplit(args.test, args.test_images), shots=args.shots, seeds=args.seeds,
                               modes=args.modes, out=args.out, prompts=args.prompts, keep_models=args.keep_models,
                               resume=args.resume)
        print(f"wrote {args.out / 'study.md'} and {args.out / 'study.json'} ({len(report['runs'])} runs)")
        return EXIT_OK
    from glip.transfer.finetune import finetune_command

    if (args.test is None) != (args.test_images is None):
        raise UsageError("--test and --test-images go together")
    test = CocoSplit(args.test, args.test_images) if args.test is not None else None
    result = finetune_command(args.config, args.set or [], model=args.model, mode=args.mode, train=train,
                              out=args.out, shots=args.shots, seed=args.seed, prompts=args.prompts, test=test)
    scores = f", test AP {result.metrics['AP']:.4f}" if result.metrics is not None else ""
    print(f"wrote {result.model_dir} ({result.steps} steps on {result.train_images} images{scores})")
    return EXIT_OK


def _add_finetune_arguments(parser: argparse.ArgumentParser, test_required: bool) -> None:
    parser.add_argument("--model", default=None, help="preset or model directory to start from (default: the "
                        "recipe's model, else glip_t)")
    parser.add_argument("--train", type=Path, required=True, help="COCO detection JSON of the training data")
    parser.add_argument("--train-images", type=Path, required=True, help="image folder of --train")
    parser.add_argument("--test", type=Path, required=test_required, help="COCO detection JSON to evaluate on")
    parser.add_argument("--test-images", type=Path, required=test_required, help="image folder of --test")
    parser.add_argument("--prompts", type=Path, default=None,
                        help="JSON {class name: descriptive prompt text} used for training and evaluation")
    parser.add_argument("--config", type=Path, default=None,
                        help="fine-tuning recipe YAML (see configs/shapes_transfer.yaml; default: official settings)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set max_steps=100 --set modes.prompt.lr=0.01")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.set_defaults(handler=command_finetune)


DETECT_EPILOG = """\
inputs: image files, folders (searched recursively for .jpg .jpeg .png .bmp .webp .tif .tiff, any
case, in sorted order) and quoted glob patterns ("photos/*.jpg", "data/**/*.png"). URLs are not
supported: download the image first.

outputs: OUT/detections.json (per image: width, height, boxes xyxy in those pixels, scores, labels,
phrases, picture; or an error), OUT/<image name>.detections.jpg, and with --coco-json FILE the COCO
results FILE plus FILE's .images.json (images, categories). One run at a time per OUT: a second run into
the same folder is refused while the first holds OUT/.glip.lock. Ctrl-C keeps the images done.

exit status: 0 all images done, 1 some images failed (the others are written), 2 usage error
(bad flag, no image in a folder, unwritable or busy --out), 130 interrupted."""

EXIT_EPILOG = "exit status: 0 done, 1 failed at run time, 2 usage error, 130 interrupted (Ctrl-C)."


def _verbose_parent() -> argparse.ArgumentParser:
    """``-v`` accepted after the subcommand as well (``glip detect ... -v``)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log more, and show the traceback of an error")
    return parent


def _command(commands, name: str, summary: str, epilog: str | None = EXIT_EPILOG) -> argparse.ArgumentParser:
    """A leaf subcommand: its one-line ``summary``, ``-v``, and the exit statuses after its flags."""
    return commands.add_parser(name, help=summary, epilog=epilog, parents=[_verbose_parent()],
                               formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glip", description="GLIP: detect anything a text prompt names.",
                                     epilog=EXIT_EPILOG)
    parser.add_argument("-v", "--verbose", action="store_true", help="log more, and show the traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_detect_parser(commands)
    _add_demo_parser(commands)
    _add_eval_parsers(commands)
    _add_train_parsers(commands)
    _add_data_parsers(commands)
    # Commands that take GLIP out of Python, each in its own module (no torch import at parse time).
    for module in ("glip.cli_export", "glip.cli_serve", "glip.cli_label"):
        importlib.import_module(module).add_parsers(commands, _command)
    _command(commands, "models", "list model presets", epilog=None).set_defaults(handler=command_models)
    return parser


def _add_detect_parser(commands) -> None:
    detect = _command(commands, "detect", "detect classes or ground a caption in images", epilog=DETECT_EPILOG)
    detect.add_argument("images", nargs="+", help="image files, folders or quoted glob patterns")
    detect.add_argument("--classes", help='comma-separated class names, e.g. "person,dog"')
    detect.add_argument("--caption", help="caption whose phrases to ground")
    detect.add_argument("--span", action="append", type=character_span, metavar="START:END",
                        help="character range of a phrase in --caption (repeatable; default: noun phrases)")
    _add_detection_arguments(detect)
    detect.add_argument("--out", type=Path, default=Path("outputs/detect"),
                        help="output folder for detections.json and pictures (default: outputs/detect)")
    detect.add_argument("--coco-json", type=Path, metavar="FILE",
                        help="also write COCO results [{image_id, category_id, bbox xywh, score}] to FILE, and "
                             "the images and categories to FILE's .images.json: COCO(images).loadRes(FILE)")
    _add_model_arguments(detect)
    from glip.cli_detect import with_coco_results  # torch-free at import

    detect.set_defaults(handler=with_coco_results(command_detect))

    convert = _command(commands, "convert", "convert an official checkpoint to safetensors + config.json")
    convert.add_argument("checkpoint", type=Path, help="official GLIP .pth checkpoint")
    convert.add_argument("config", type=Path, help="official yacs YAML config")
    convert.add_argument("--text-config", type=Path, help="BERT config JSON/YAML (default: bert-base-uncased)")
    convert.add_argument("--tokenizer", type=Path, help="directory with vocab.txt (default: bert-base-uncased)")
    convert.add_argument("--out", type=Path, required=True, help="output model directory")
    convert.set_defaults(handler=command_convert)


def _add_demo_parser(commands) -> None:
    demo = _command(commands, "demo", "draw a Shapes-world scene and detect in it with GLIP-Nano (offline)")
    demo.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder (default: outputs/demo)")
    demo.add_argument("--seed", type=non_negative_int, default=7, help="scene seed (default: 7)")
    demo.add_argument("--classes", help="comma-separated prompt (default: the six shape names)")
    demo.add_argument("--model", default="glip_nano", help="model preset or directory (default: glip_nano)")
    _add_detection_arguments(demo)
    demo.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    demo.set_defaults(handler=command_demo)


def _add_eval_parsers(commands) -> None:
    evaluate = commands.add_parser(
        "eval", help="evaluate a model (COCO, LVIS, Flickr30K, ODinW, Shapes world); runs under torchrun too")
    protocols = evaluate.add_subparsers(dest="protocol", required=True)
    coco = _command(protocols, "coco", "COCO AP on any COCO JSON (prompt = its cleaned category names)")
    lvis = _command(protocols, "lvis", "LVIS fixed AP with APr/APc/APf (minival or val JSON; images are found as "
                    "--images/<split>/<file> from their coco_url, as officially, else by file_name)")
    flickr = _command(protocols, "flickr", "Flickr30K Entities Recall@1/5/10 on an MDETR grounding JSON")
    odinw = _command(protocols, "odinw", "the ODinW-13 or -35 suite: AP per data set and the average")
    shapes = _command(protocols, "shapes", "the three Shapes-world evaluations on a generated split")
    for sub, what in ((coco, "COCO detection JSON"), (lvis, "LVIS JSON (e.g. lvis_v1_minival.json)"),
                      (flickr, "MDETR JSON, e.g. final_flickr_separateGT_val.json")):
        sub.add_argument("--annotations", type=Path, required=True, help=what)
        sub.add_argument("--images", type=Path, required=True, help="image folder of the JSON's file names")
    odinw.add_argument("--root", type=Path, required=True,
                       help="folder holding the ODinW data set folders as published (or its parent with odinw/)")
    odinw.add_argument("--suite", choices=["13", "35"], default="13", help="which suite (default 13)")
    odinw.add_argument("--datasets", help="comma-separated data set names of the suite to evaluate (default: all)")
    odinw.add_argument("--split", choices=["val", "test"], default="val",
                       help="val: the split the official configs evaluate (valid or mini_val); or test (default val)")
    for sub in (coco, lvis, odinw):
        sub.add_argument("--prompts", type=Path,
                         help='descriptive prompts JSON: {"category name": "prompt text"} or '
                              '{"category name": {"prefix": ..., "name": ..., "suffix": ...}}')
    for sub in (coco, lvis, flickr, odinw, shapes):
        _add_resize_arguments(sub)
    for sub in (coco, lvis, flickr, odinw):
        sub.add_argument("--resume", action="store_true",
                         help="continue an interrupted run from OUT/partial (same model, data and options)")
        sub.add_argument("--save-every", type=positive_int, default=25,
                         help="batches between partial saves (default 25)")
    coco.add_argument("--chunk-size", type=positive_int, default=None,
                      help="categories per prompt (default: as many as fit the token limit and 80 score columns)")
    coco.add_argument("--max-detections", type=positive_int, default=None,
                      help="detections kept per image (default 100)")
    lvis.add_argument("--chunk-size", type=positive_int, default=40, help="categories per prompt (official 40)")
    lvis.add_argument("--max-detections", type=positive_int, default=300,
                      help="detections kept per image and prompt chunk (official 300)")
    lvis.add_argument("--top-k", type=positive_int, default=10000,
                      help="detections kept per category (fixed AP, 10000)")
    shapes.add_argument("--split-dir", type=Path, required=True, help="folder written by `glip synth`")
    for sub in (coco, lvis, flickr, odinw, shapes):
        sub.add_argument("--out", type=Path, required=True,
                         help="output folder (results.json, metrics.json; per data set for odinw)")
        sub.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass (default 8)")
        _add_model_arguments(sub)
        sub.set_defaults(handler=command_eval)


def _add_train_parsers(commands) -> None:
    train = _command(commands, "train", "train or fine-tune from a recipe YAML (see configs/)")
    train.add_argument("config", type=Path, help="training recipe YAML")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a recipe value, e.g. --set optimizer.lr=1e-5 (repeatable)")
    train.add_argument("--resume", action="store_true", help="continue from the output folder's latest checkpoint")
    train.set_defaults(handler=command_train)

    tune = commands.add_parser("finetune", help="adapt a model to a detection task: full, prompt or linear tuning")
    actions = tune.add_subparsers(dest="action", required=True)
    single = _command(actions, "run", "one fine-tuning run on all or k-shot data (model in OUT/model)")
    single.add_argument("--mode", required=True, choices=["full", "prompt", "linear"],
                        help="full-model tuning, prompt tuning (offsets on the prompt's text features) or "
                        "linear probing (last head layers)")
    single.add_argument("--shots", type=positive_int, default=None,
                        help="train on k boxes per class drawn with --seed (default: all the training data)")
    single.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed of the k-shot draw and of training (default 0)")
    _add_finetune_arguments(single, test_required=False)
    study = _command(actions, "study", "zero/few/full-shot AP table over seeds and modes (OUT/study.md)")
    study.add_argument("--shots", default="0,1,3,5,10,full",
                       help="comma-separated k values; 0 = zero-shot, full = all data (default 0,1,3,5,10,full)")
    study.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    study.add_argument("--modes", default="full,prompt", help="comma-separated modes: full, prompt, linear "
                       "(default full,prompt)")
    study.add_argument("--keep-models", action="store_true", help="keep every run's fine-tuned model")
    study.add_argument("--resume", action="store_true", help="go on with the study in --out")
    _add_finetune_arguments(study, test_required=True)


def _add_data_parsers(commands) -> None:
    synth = _command(commands, "synth", "generate a Shapes-world split (docs/shapes_world.md)")
    synth.add_argument("--out", type=Path, required=True, help="output folder (images/ and the annotation files)")
    synth.add_argument("--images", type=positive_int, required=True, help="number of images")
    synth.add_argument("--seed", type=non_negative_int, required=True,
                       help="random seed (canonical test split: 1000)")
    synth.add_argument("--split", default="train", choices=["train", "test", "transfer-train", "transfer-test"],
                       help="which split (default: train; held-out pairs are never named in train text)")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    synth.set_defaults(handler=command_synth)

    pseudo = _command(commands, "pseudo-label", "ground the noun phrases of image-caption pairs with a teacher")
    pseudo.add_argument("--captions", type=Path, required=True, help="JSON list of {file_name, caption}")
    pseudo.add_argument("--images", type=Path, required=True, help="image folder of the file names")
    pseudo.add_argument("--out", type=Path, required=True, help="grounding JSON to write (MDETR style)")
    pseudo.add_argument("--threshold", type=probability, default=0.5,
                        help="keep boxes scoring at least this, in [0, 1] (default 0.5)")
    pseudo.add_argument("--phrases", choices=["nltk", "shapes"], default="nltk",
                        help="noun-phrase extractor: NLTK (needs nltk + tagger data) or the Shapes-world vocabulary")
    _add_model_arguments(pseudo)
    pseudo.set_defaults(handler=command_pseudo_label)


# Library errors about the inputs (a missing file, a bad value or key): exit 2; the others: 1.
_USAGE_ERRORS = (UsageError, FileNotFoundError, NotADirectoryError, ValueError, KeyError)
_RUNTIME_ERRORS = (OSError, ImportError, RuntimeError, TypeError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``glip ARGS``; returns the exit status (see :data:`EXIT_EPILOG`)."""
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        where = getattr(args, "partial_results", None)
        print("glip: interrupted" + (f"; partial results kept in {where}" if where else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    except (*_USAGE_ERRORS, *_RUNTIME_ERRORS) as error:
        if verbose:
            traceback.print_exc()
        print(f"glip: error: {cli_message(error)}", file=sys.stderr)
        return EXIT_USAGE if isinstance(error, _USAGE_ERRORS) else EXIT_FAILED
