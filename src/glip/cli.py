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
    """``glip eval <protocol>``: one evaluation function per protocol; under ``torchrun`` every
    process evaluates its share and process 0 writes ``--out``."""
    import torch.distributed
    from tqdm import tqdm

    from glip.evaluation.runner import init_distributed

    args.device, owns_group = init_distributed(args.device)
    try:
        model = load_model_from_args(args)
        metrics, failed = _evaluate(model, args)
    finally:
        if owns_group:
            torch.distributed.destroy_process_group()
    if metrics is None:  # a process other than 0 of a torchrun group
        return 0
    # The per-data-set table of a suite, the per-category table of COCO (not LVIS's 1203 rows).
    table = {"odinw": args.out / "summary.md", "coco": args.out / "per_category.md"}.get(args.protocol)
    if table is not None and table.is_file():
        tqdm.write(table.read_text())
    for key, value in metrics.items():
        if isinstance(value, float):
            tqdm.write(f"{key:>20s} {value:.4f}")
    for name, error in (failed or {}).items():
        tqdm.write(f"FAILED {name}: {error}")
    tqdm.write(f"wrote {args.out / 'metrics.json'}")
    return 1 if failed else 0


def _evaluate(model, args: argparse.Namespace) -> tuple[dict | None, dict[str, str] | None]:
    """Run the chosen protocol; ``(metrics of process 0 or None, failed data sets)``."""
    from glip.evaluation.prompts import read_prompts_file
    from glip.evaluation.runner import RunOptions, process_group

    if args.protocol == "shapes":
        from glip.evaluation.shapes import evaluate_shapes_world, write_report

        if process_group()[1] > 1:
            raise ValueError("glip eval shapes runs in one process (not under torchrun)")
        metrics = evaluate_shapes_world(model, args.split_dir, batch_size=args.batch_size)
        args.out.mkdir(parents=True, exist_ok=True)
        write_report(metrics, args.out / "metrics.json")
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
    from glip.training.loop import train_command

    return train_command(args.config, args.set or [], args.resume)


def command_pseudo_label(args: argparse.Namespace) -> int:
    from glip.data.pseudo_label import pseudo_label, shapes_world_phrases

    model = load_model_from_args(args)
    extractor = shapes_world_phrases if args.phrases == "shapes" else None
    stats = pseudo_label(model, args.captions, args.images, args.out, args.threshold, extractor)
    print(f"wrote {args.out}: " + ", ".join(f"{key} {value}" for key, value in stats.items()))
    return 0


def command_finetune(args: argparse.Namespace) -> int:
    from glip.transfer.finetune import CocoSplit

    train = CocoSplit(args.train, args.train_images)
    if args.action == "study":
        from glip.transfer.study import study_command

        report = study_command(args.config, args.set or [], model=args.model, train=train,
                               test=CocoSplit(args.test, args.test_images), shots=args.shots, seeds=args.seeds,
                               modes=args.modes, out=args.out, prompts=args.prompts, keep_models=args.keep_models,
                               resume=args.resume)
        print(f"wrote {args.out / 'study.md'} and {args.out / 'study.json'} ({len(report['runs'])} runs)")
        return 0
    from glip.transfer.finetune import finetune_command

    if (args.test is None) != (args.test_images is None):
        raise SystemExit("error: --test and --test-images go together")
    test = CocoSplit(args.test, args.test_images) if args.test is not None else None
    result = finetune_command(args.config, args.set or [], model=args.model, mode=args.mode, train=train,
                              out=args.out, shots=args.shots, seed=args.seed, prompts=args.prompts, test=test)
    scores = f", test AP {result.metrics['AP']:.4f}" if result.metrics is not None else ""
    print(f"wrote {result.model_dir} ({result.steps} steps on {result.train_images} images{scores})")
    return 0


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

    synth = commands.add_parser("synth", help="generate a Shapes-world split (docs/shapes_world.md)")
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

    evaluate = commands.add_parser(
        "eval", help="evaluate a model (COCO, LVIS, Flickr30K, ODinW, Shapes world); runs under torchrun too")
    protocols = evaluate.add_subparsers(dest="protocol", required=True)
    coco = protocols.add_parser("coco", help="COCO AP on any COCO JSON (prompt = its cleaned category names)")
    lvis = protocols.add_parser(
        "lvis", help="LVIS fixed AP with APr/APc/APf (minival or val JSON; images are found as "
                     "--images/<split>/<file> from their coco_url, as officially, else by file_name)")
    flickr = protocols.add_parser("flickr", help="Flickr30K Entities Recall@1/5/10 on an MDETR grounding JSON")
    odinw = protocols.add_parser("odinw", help="the ODinW-13 or -35 suite: AP per data set and the average")
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
    for sub in (coco, lvis, flickr, odinw):
        sub.add_argument("--min-size", type=int, default=800, help="test resize, shorter side (official 800)")
        sub.add_argument("--max-size", type=int, default=1333, help="test resize, longer-side cap (official 1333)")
        sub.add_argument("--resume", action="store_true",
                         help="continue an interrupted run from OUT/partial (same model, data and options)")
        sub.add_argument("--save-every", type=int, default=25, help="batches between partial saves (default 25)")
    coco.add_argument("--chunk-size", type=int, default=None,
                      help="categories per prompt (default: as many as fit the token limit and 80 score columns)")
    coco.add_argument("--max-detections", type=int, default=None, help="detections kept per image (default 100)")
    lvis.add_argument("--chunk-size", type=int, default=40, help="categories per prompt (official 40)")
    lvis.add_argument("--max-detections", type=int, default=300,
                      help="detections kept per image and prompt chunk (official 300)")
    lvis.add_argument("--top-k", type=int, default=10000, help="detections kept per category (fixed AP, 10000)")
    shapes = protocols.add_parser("shapes", help="the three Shapes-world evaluations on a generated split")
    shapes.add_argument("--split-dir", type=Path, required=True, help="folder written by `glip synth`")
    for sub in (coco, lvis, flickr, odinw, shapes):
        sub.add_argument("--out", type=Path, required=True,
                         help="output folder (results.json, metrics.json; per data set for odinw)")
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

    tune = commands.add_parser("finetune", help="adapt a model to a detection task: full, prompt or linear tuning")
    actions = tune.add_subparsers(dest="action", required=True)
    single = actions.add_parser("run", help="one fine-tuning run on all or k-shot data (model in OUT/model)")
    single.add_argument("--mode", required=True, choices=["full", "prompt", "linear"],
                        help="full-model tuning, prompt tuning (offsets on the prompt's text features) or "
                        "linear probing (last head layers)")
    single.add_argument("--shots", type=int, default=None,
                        help="train on k boxes per class drawn with --seed (default: all the training data)")
    single.add_argument("--seed", type=int, default=0, help="seed of the k-shot draw and of training (default 0)")
    _add_finetune_arguments(single, test_required=False)
    study = actions.add_parser("study", help="zero/few/full-shot AP table over seeds and modes (OUT/study.md)")
    study.add_argument("--shots", default="0,1,3,5,10,full",
                       help="comma-separated k values; 0 = zero-shot, full = all data (default 0,1,3,5,10,full)")
    study.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    study.add_argument("--modes", default="full,prompt", help="comma-separated modes: full, prompt, linear "
                       "(default full,prompt)")
    study.add_argument("--keep-models", action="store_true", help="keep every run's fine-tuned model")
    study.add_argument("--resume", action="store_true", help="go on with the study in --out")
    _add_finetune_arguments(study, test_required=True)

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

