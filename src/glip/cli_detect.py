"""``glip detect``'s inputs and run: files, folders and glob patterns in, ``detections.json`` and a
picture per image out, one bad image never ending the run."""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glip.cli_support import UsageError

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
        One entry per image: ``image`` and either ``error`` or the detections (``boxes`` xyxy in
        pixels, ``scores``, ``labels``, ``phrases``) and ``picture``.
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
    return {"image": item, **detections.to_dict(), "picture": str(picture)}


def _failed(item: str, message: str) -> dict[str, Any]:
    logger.error(message)
    return {"image": item, "error": message}


def _progress(images: Sequence[str]):
    from tqdm import tqdm

    return tqdm(list(images), desc="detect", unit="image", disable=len(images) < 2)
