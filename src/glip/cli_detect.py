"""``glip detect``'s inputs and run: files, folders and glob patterns in, ``detections.json`` and a
picture per image out, one bad image never ending the run."""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glip.cli_support import UsageError, ensure_writable_dir

if TYPE_CHECKING:
    from glip.pipeline import EncodedPrompt, GLIP

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
URL_SCHEMES: tuple[str, ...] = ("http://", "https://")
# Pictures ``glip detect`` writes: never taken as inputs when a folder or pattern is expanded.
PICTURE_SUFFIX = ".detections.jpg"
_GLOB_CHARACTERS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class DetectOptions:
    """Keyword options of ``GLIP.predict_encoded``; ``None`` = the model config's value."""

    threshold: float | None = None
    nms_threshold: float | None = None
    max_detections: int | None = None
    min_size: int | None = None
    max_size: int | None = None
    class_agnostic_nms: bool | None = None


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.endswith(PICTURE_SUFFIX)


def expand_image_inputs(inputs: Sequence[str]) -> list[str]:
    """The image files named by ``inputs``, in order, each once.

    A folder gives its image files (extensions :data:`IMAGE_EXTENSIONS`, any case), recursively and
    sorted; a glob pattern (``*``, ``?``, ``[``; ``**`` recurses) that names no existing file gives
    the image files it matches, sorted. Files and URLs are kept as given (a missing file or a URL is
    reported per image by :func:`detect_images`).

    Raises:
        UsageError: a folder or pattern that yields no image file.
    """
    files: list[str] = []
    for item in inputs:
        path = Path(item).expanduser()
        if item.lower().startswith(URL_SCHEMES) or path.is_file():
            files.append(item)
        elif path.is_dir():
            found = sorted(str(file) for file in path.rglob("*") if _is_image_file(file))
            if not found:
                raise UsageError(f"folder {item} holds no images ({' '.join(IMAGE_EXTENSIONS)}, any case)")
            files.extend(found)
        elif _GLOB_CHARACTERS.search(item):
            found = _expand_pattern(str(path))
            if not found:
                raise UsageError(f"pattern {item!r} matches no image file ({' '.join(IMAGE_EXTENSIONS)})")
            files.extend(found)
        else:
            files.append(item)
    return list(dict.fromkeys(files))


def _expand_pattern(pattern: str) -> list[str]:
    found: list[str] = []
    for match in sorted(glob.glob(pattern, recursive=True)):
        if os.path.isdir(match):
            found.extend(sorted(str(file) for file in Path(match).rglob("*") if _is_image_file(file)))
        elif _is_image_file(Path(match)):
            found.append(match)
    return found


def detect_images(
    model: GLIP,
    images: Sequence[str],
    out: Path,
    classes: Sequence[str] | None = None,
    caption: str | None = None,
    spans: Sequence[tuple[int, int]] | None = None,
    options: DetectOptions = DetectOptions(),
) -> list[dict[str, Any]]:
    """Detect in each image; write ``out/detections.json`` and ``out/<name>.detections.jpg`` each.

    An image that cannot be used (missing, corrupt, too large, a URL) gets an ``error`` entry and
    the others go on. ``detections.json`` is written however the loop ends, so Ctrl-C keeps the
    images finished so far.

    Returns:
        One entry per image: ``image`` and either ``error`` or its ``width`` and ``height``, the
        detections (``boxes`` xyxy in pixels, ``scores``, ``labels``, ``phrases``) and ``picture``.
    """
    from glip.files import write_json_atomic

    out.mkdir(parents=True, exist_ok=True)
    encoded = model.encode_prompts(classes, caption, spans)
    # Checks the options once, before the loop, and says which values the model's defaults gave.
    logger.info("detecting with %s", model.inference_options(**asdict(options)))
    report: list[dict[str, Any]] = []
    used_names: set[str] = set()
    try:
        for item in _progress(images):
            report.append(_detect_one(model, item, encoded, options, out, used_names))
    finally:
        write_json_atomic(out / "detections.json", report)
    return report


def _detect_one(model: GLIP, item: str, encoded: list[EncodedPrompt], options: DetectOptions, out: Path,
                used_names: set[str]) -> dict[str, Any]:
    """The report entry of one image, its picture written; ``used_names`` gets the picture's name."""
    from PIL import Image

    from glip.processing import load_image

    if item.lower().startswith(URL_SCHEMES):
        return _failed(item, f"{item}: URLs are not supported: download the image first")
    try:
        image = load_image(Path(item))
        detections = model.predict_encoded(image, encoded, **asdict(options))
    except (OSError, ValueError, TypeError, Image.DecompressionBombError) as error:
        return _failed(item, str(error) if item in str(error) else f"{item}: {error}")
    name = Path(item).stem
    while name in used_names:  # the same file name in two folders: keep both pictures
        name += "_"
    used_names.add(name)
    picture = out / f"{name}{PICTURE_SUFFIX}"
    detections.save(picture, image, quality=92)
    # The size the boxes refer to (after the EXIF rotation): COCO files need it.
    return {"image": item, "width": image.width, "height": image.height, **detections.to_dict(),
            "picture": str(picture)}


def _failed(item: str, message: str) -> dict[str, Any]:
    logger.error(message)
    return {"image": item, "error": message}


def _progress(images: Sequence[str]):
    from tqdm import tqdm

    return tqdm(list(images), desc="detect", unit="image", disable=len(images) < 2)


# --------------------------------------------------------------------------------------------------
# --coco-json: the report as COCO results
# --------------------------------------------------------------------------------------------------


def coco_images_path(results_path: Path) -> Path:
    """Where ``--coco-json FILE`` puts the images and categories: ``FILE`` with ``.images.json``."""
    return results_path.with_suffix(".images.json")


def with_coco_results(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``glip detect``'s handler ``command``, then, with ``--coco-json FILE``, its report as COCO
    results in ``FILE`` and their images and categories beside it (:func:`coco_images_path`)."""

    def detect_then_write_coco(args: argparse.Namespace) -> int:
        results_path = getattr(args, "coco_json", None)
        if results_path is None:
            return command(args)
        # Checked before the run, which may be long: a folder in the way, an unwritable place.
        if Path(results_path).is_dir():
            raise UsageError(f"--coco-json {results_path}: is a folder, give a file name")
        results_path = ensure_writable_dir(Path(results_path).parent, "--coco-json") / Path(results_path).name
        status = command(args)
        report = json.loads((Path(args.out).expanduser().absolute() / "detections.json").read_text())
        count = write_coco_results(results_path, report, _categories(args, report))
        # pycocotools' loadRes fails on an empty list (IndexError): say so rather than let it surprise.
        empty = ": an empty list, which pycocotools' loadRes cannot read" if count == 0 else ""
        print(f"wrote {results_path} ({count} detections{empty}) and {coco_images_path(results_path)}")
        return status

    return detect_then_write_coco


def write_coco_results(results_path: Path, report: Sequence[dict[str, Any]], categories: dict[int, str]) -> int:
    """Write the COCO results of ``report`` and their images file atomically; the detection count."""
    from glip.files import write_json_atomic
    from glip.interop import coco_files_from_report

    results, images = coco_files_from_report(report, categories)
    write_json_atomic(coco_images_path(results_path), images)
    write_json_atomic(results_path, results)
    return len(results)


def _categories(args: argparse.Namespace, report: Sequence[dict[str, Any]]) -> dict[int, str]:
    """Label id -> name: the prompt's classes or phrases in order (label ids are 1-based in it), and
    the phrase a detection was given where there is one (a prompt-tuned model's class names)."""
    from glip.cli import _parse_classes

    if args.classes is not None:
        names = _parse_classes(args.classes)
    else:
        from glip.processing import noun_phrase_spans

        spans = args.span or noun_phrase_spans(args.caption)
        names = [args.caption[begin:end] for begin, end in spans]
    categories = dict(enumerate(names, start=1))
    for entry in report:
        categories.update(zip(entry.get("labels", []), entry.get("phrases", [])))
    return categories
