"""Command line: ``glip detect``, ``glip convert``, ``glip models``.

Each subcommand parses its flags and calls one public function.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger("glip")


def _parse_span(text: str) -> tuple[int, int]:
    try:
        begin, end = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--span {text!r}: expected START:END character offsets") from None
    return begin, end


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model (a preset or directory, or an official checkpoint + config)")
    group.add_argument("--model", default=None, help="preset name (see `glip models`) or converted model directory")
    group.add_argument("--checkpoint", type=Path, help="official GLIP .pth checkpoint")
    group.add_argument("--config", type=Path, help="official yacs YAML config of --checkpoint")
    group.add_argument("--text-config", type=Path, help="BERT config JSON/YAML (default: bert-base-uncased)")
    group.add_argument("--tokenizer", type=Path, help="directory with vocab.txt (default: bert-base-uncased)")
    group.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1, mps (default: cpu)")


def load_model_from_args(args: argparse.Namespace):
    """The model that ``--model`` or ``--checkpoint/--config`` names."""
    from glip.pipeline import GLIP

    if args.checkpoint is not None or args.config is not None:
        if args.checkpoint is None or args.config is None:
            raise SystemExit("error: --checkpoint and --config go together")
        if args.model is not None:
            raise SystemExit("error: give --model or --checkpoint/--config, not both")
        return GLIP.from_official(args.checkpoint, args.config, args.text_config, args.tokenizer, device=args.device)
    if args.model is None:
        raise SystemExit("error: give --model NAME_OR_DIR or --checkpoint PTH --config YAML")
    return GLIP.from_pretrained(args.model, device=args.device)


def command_detect(args: argparse.Namespace) -> int:
    from glip.visualize import detect_and_save

    if (args.classes is None) == (args.caption is None):
        raise SystemExit("error: give exactly one of --classes or --caption")
    if args.span and args.caption is None:
        raise SystemExit("error: --span needs --caption")
    classes = None
    if args.classes is not None:
        classes = [name.strip() for name in args.classes.split(",") if name.strip()]
        if not classes:
            raise SystemExit("error: --classes is empty")
    model = load_model_from_args(args)
    report = detect_and_save(
        model,
        args.images,
        args.out,
        classes=classes,
        caption=args.caption,
        spans=args.span or None,
        threshold=args.threshold,
        min_size=args.min_size,
        max_size=args.max_size,
    )
    failed = [item for item in report if "error" in item]
    print(f"wrote {args.out / 'detections.json'} ({len(report) - len(failed)} images, {len(failed)} failed)")
    return 1 if failed and len(failed) == len(report) else 0


def command_convert(args: argparse.Namespace) -> int:
    from glip.pipeline import GLIP

    model = GLIP.from_official(args.checkpoint, args.config, args.text_config, args.tokenizer)
    model.save_pretrained(args.out)
    print(f"wrote {args.out} (load with GLIP.from_pretrained({str(args.out)!r}))")
    return 0


def command_models(args: argparse.Namespace) -> int:
    from glip.hub.presets import PRESETS

    width = max(len(name) for name in PRESETS)
    for name, preset in PRESETS.items():
        where = "bundled" if preset.bundled else f"hf://{preset.hub_repo}/{preset.checkpoint}"
        print(f"{name:<{width}}  {preset.description}  [{where}]")
    return 0


def command_synth(args: argparse.Namespace) -> int:
    from glip.data.shapes_world import synthesize

    paths = synthesize(args.out, args.images, args.seed, args.split, overwrite=args.overwrite)
    print(f"wrote {args.images} {args.split} images to {args.out}: " + ", ".join(p.name for p in paths.values()))
    return 0


def command_demo(args: argparse.Namespace) -> int:
    from glip.data.shapes_world import SHAPES, synthesize
    from glip.pipeline import GLIP
    from glip.visualize import detect_and_save

    scene = args.out / "scene"
    paths = synthesize(scene, 1, args.seed, "test", show_progress=False, overwrite=True)
    image = sorted(paths["images"].iterdir())[0]
    classes = [name.strip() for name in args.classes.split(",")] if args.classes else list(SHAPES)
    model = GLIP.from_pretrained(args.model, device=args.device)
    report = detect_and_save(model, [image], args.out, classes=classes, threshold=args.threshold)
    for phrase, score, box in zip(report[0]["phrases"], report[0]["scores"], report[0]["boxes"]):
        print(f"{phrase:>16s} {score:.2f} [{', '.join(f'{v:.0f}' for v in box)}]")
    print(f"wrote {report[0]['picture']} and {args.out / 'detections.json'}")
    return 0


def command_eval(args: argparse.Namespace) -> int:
    from glip.visualize import write_json_atomic

    model = load_model_from_args(args)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.protocol == "shapes":
        from glip.evaluation.shapes import evaluate_shapes_world

        metrics = evaluate_shapes_world(model, args.split_dir, batch_size=args.batch_size)
    else:
        from glip.evaluation.coco import evaluate_coco

        evaluation = evaluate_coco(model, args.annotations, args.images, batch_size=args.batch_size,
                                   min_size=args.min_size, max_size=args.max_size)
        write_json_atomic(args.out / "results.json", evaluation.results)
        metrics = {**evaluation.metrics, "per_category_AP": evaluation.per_category_ap}
    write_json_atomic(args.out / "metrics.json", metrics)
    for key, value in metrics.items():
        if isinstance(value, float):
            print(f"{key:>20s} {value:.4f}")
    print(f"wrote {args.out / 'metrics.json'}")
    return 0


def command_train(args: argparse.Namespace) -> int:
    from glip.training.loop import train_command

    return train_command(args.config, args.set or [], args.resume)


def command_pseudo_label(args: argparse.Namespace) -> int:
    from glip.data.pseudo_label import pseudo_label, shapes_world_phrases

    model = load_model_from_args(args)
    extractor = shapes_world_phrases if args.phrases == "shapes" else None
    stats = pseudo_label(model, args.captions, args.images, args.out, args.threshold, extractor)
    print(f"wrote {args.out}: " + ", ".join(f"{key} {value}" for key, value in stats.items()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="glip", description="GLIP: detect anything a text prompt names.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    commands = parser.add_subparsers(dest="command", required=True)

    detect = commands.add_parser("detect", help="detect classes or ground a caption in images")
    detect.add_argument("images", nargs="+", type=Path, help="image files")
    detect.add_argument("--classes", help='comma-separated class names, e.g. "person,dog"')
    detect.add_argument("--caption", help="caption whose phrases to ground")
    detect.add_argument("--span", action="append", type=_parse_span, metavar="START:END",
                        help="character range of a phrase in --caption (repeatable; default: noun phrases)")
    detect.add_argument("--threshold", type=float, default=None,
                        help="score threshold (default: the model's, 0.7 for official models)")
    detect.add_argument("--min-size", type=int, default=None, help="shorter image side after resize (default 800)")
    detect.add_argument("--max-size", type=int, default=None, help="cap on the longer side (default: none)")
    detect.add_argument("--out", type=Path, default=Path("outputs/detect"),
                        help="output folder for detections.json and pictures (default: outputs/detect)")
    _add_model_arguments(detect)
    detect.set_defaults(handler=command_detect)

    convert = commands.add_parser("convert", help="convert an official checkpoint to safetensors + config.json")
    convert.add_argument("checkpoint", type=Path, help="official GLIP .pth checkpoint")
    convert.add_argument("config", type=Path, help="official yacs YAML config")
    convert.add_argument("--text-config", type=Path, help="BERT config JSON/YAML (default: bert-base-uncased)")
    convert.add_argument("--tokenizer", type=Path, help="directory with vocab.txt (default: bert-base-uncased)")
    convert.add_argument("--out", type=Path, required=True, help="output model directory")
    convert.set_defaults(handler=command_convert)

    synth = commands.add_parser("synth", help="generate a Shapes-world split (../shared/SHAPES_WORLD.md)")
    synth.add_argument("--out", type=Path, required=True, help="output folder (images/ and the annotation files)")
    synth.add_argument("--images", type=int, required=True, help="number of images")
    synth.add_argument("--seed", type=int, required=True, help="random seed (canonical test split: 1000)")
    synth.add_argument("--split", default="train", choices=["train", "test", "transfer-train", "transfer-test"],
                       help="which split (default: train; held-out pairs are never named in train text)")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    synth.set_defaults(handler=command_synth)

    demo = commands.add_parser("demo", help="draw a Shapes-world scene and detect in it with GLIP-Nano (offline)")
    demo.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder (default: outputs/demo)")
    demo.add_argument("--seed", type=int, default=7, help="scene seed (default: 7)")
    demo.add_argument("--classes", help="comma-separated prompt (default: the six shape names)")
    demo.add_argument("--model", default="glip_nano", help="model preset or directory (default: glip_nano)")
    demo.add_argument("--threshold", type=float, default=None, help="score threshold (default: the model's)")
    demo.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    demo.set_defaults(handler=command_demo)

    evaluate = commands.add_parser("eval", help="evaluate a model (COCO-style detection, Shapes world)")
    protocols = evaluate.add_subparsers(dest="protocol", required=True)
    coco = protocols.add_parser("coco", help="COCO AP on any COCO JSON (prompt = its category names)")
    coco.add_argument("--annotations", type=Path, required=True, help="COCO detection JSON")
    coco.add_argument("--images", type=Path, required=True, help="image folder of the JSON's file names")
    coco.add_argument("--min-size", type=int, default=800, help="test resize, shorter side (official 800)")
    coco.add_argument("--max-size", type=int, default=1333, help="test resize, longer-side cap (official 1333)")
    shapes = protocols.add_parser("shapes", help="the three Shapes-world evaluations on a generated split")
    shapes.add_argument("--split-dir", type=Path, required=True, help="folder written by `glip synth`")
    for sub in (coco, shapes):
        sub.add_argument("--out", type=Path, required=True, help="output folder (metrics.json, results.json)")
        sub.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
        _add_model_arguments(sub)
        sub.set_defaults(handler=command_eval)

    train = commands.add_parser("train", help="train or fine-tune from a recipe YAML (see configs/)")
    train.add_argument("config", type=Path, help="training recipe YAML")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a recipe value, e.g. --set optimizer.lr=1e-5 (repeatable)")
    train.add_argument("--resume", action="store_true", help="continue from the output folder's latest checkpoint")
    train.set_defaults(handler=command_train)

    pseudo = commands.add_parser("pseudo-label", help="ground the noun phrases of image-caption pairs with a teacher")
    pseudo.add_argument("--captions", type=Path, required=True, help="JSON list of {file_name, caption}")
    pseudo.add_argument("--images", type=Path, required=True, help="image folder of the file names")
    pseudo.add_argument("--out", type=Path, required=True, help="grounding JSON to write (MDETR style)")
    pseudo.add_argument("--threshold", type=float, default=0.5, help="keep boxes scoring at least this (default 0.5)")
    pseudo.add_argument("--phrases", choices=["nltk", "shapes"], default="nltk",
                        help="noun-phrase extractor: NLTK (needs nltk + tagger data) or the Shapes-world vocabulary")
    _add_model_arguments(pseudo)
    pseudo.set_defaults(handler=command_pseudo_label)

    models = commands.add_parser("models", help="list model presets")
    models.set_defaults(handler=command_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.handler(args)
    except (FileNotFoundError, ValueError, KeyError, TypeError, ImportError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return 2

