"""Auto-labelling an image folder into a detection dataset (``glip label``).

A model detects the given classes in every image of a folder (searched recursively, as ``glip
detect`` expands folders) and the detections above the threshold become the dataset's boxes:

* ``annotations.json``: COCO detection JSON. ``images`` (``file_name`` relative to the image folder,
  ``width``, ``height``), ``categories`` (the classes, ids 1..K in the given order), ``annotations``
  (``bbox`` xywh with the legacy ``+1`` width that the official COCO evaluation and
  :mod:`glip.data.datasets` read back, ``area``, ``iscrowd`` 0, and the model's ``score`` as an
  extra field);
* ``labels/<file_name>.txt`` and ``data.yaml``: YOLO labels (``class cx cy w h``, normalised by the
  image size, class ids 0..K-1) and the data set file naming the classes and the image folder;
* ``skipped.json``: the images that could not be read, with the reason (the run goes on without them);
* ``contact_sheet.jpg``: the first few labelled images with their boxes drawn, for a quick look;
* ``summary.json``: counts and the run's fingerprint; written last, it marks the dataset finished.

The batches run through the evaluation runner (:func:`glip.evaluation.runner.run_batches`): under
``torchrun`` process ``r`` of ``W`` labels batches ``r, r + W, ...``, every batch identical to a
one-process run, so the dataset is too; results are committed to ``OUT/partial/`` every
``save_every`` batches and on an interruption, and ``resume`` continues from them (a changed model,
folder, prompt or option is refused by the fingerprint), so no image is labelled twice and none is
lost. Process 0 writes the outputs at the end, each atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from PIL import Image, ImageDraw, ImageOps

from glip import quirks
from glip.cli_detect import DetectOptions, expand_image_inputs
from glip.evaluation.prompts import CategoryText, build_category_prompts, category_texts
from glip.evaluation.runner import RunOptions, clear_partials, fingerprint_digest, model_digest, run_batches
from glip.files import write_atomic, write_json_atomic, write_text_atomic
from glip.modeling.postprocess import Detections
from glip.processing import InferenceOptions, Prompt, load_image

logger = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("coco", "yolo")
ANNOTATIONS_FILE = "annotations.json"
YOLO_LABELS_DIR = "labels"
YOLO_DATA_FILE = "data.yaml"
SKIPPED_FILE = "skipped.json"
CONTACT_SHEET_FILE = "contact_sheet.jpg"
SUMMARY_FILE = "summary.json"
# Files of our own that may lie in an output folder before any result: the lock of the CLI and
# the write probe of check_output_folder (a torchrun peer may be checking the folder meanwhile).
_BOOKKEEPING_PREFIX = ".glip"
# The contact sheet: this many images, each fitted into a square tile, in rows of this many.
CONTACT_SHEET_IMAGES = 12
CONTACT_SHEET_TILE = 320
CONTACT_SHEET_COLUMNS = 4


@dataclass(frozen=True)
class LabelSummary:
    """What a labelling run wrote.

    Attributes:
        out: the dataset folder.
        images: image files found in the folder.
        labelled: images that got labels (possibly none for an image without detections).
        skipped: images that could not be read (listed in ``skipped.json``).
        boxes: annotations written.
        formats: the formats written (``coco``, ``yolo``).
        fingerprint: the run's digest (:func:`fingerprint_digest`), stored in ``summary.json``.
    """

    out: Path
    images: int
    labelled: int
    skipped: int
    boxes: int
    formats: tuple[str, ...]
    fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "out": str(self.out), "formats": list(self.formats)}


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


def folder_images(images_dir: Path, out: Path | None = None) -> list[Path]:
    """The image files of ``images_dir`` (recursive, sorted; :func:`expand_image_inputs` rules),
    leaving out those inside ``out`` (a dataset written into the image folder must not label its
    own contact sheet on a rerun)."""
    if not images_dir.is_dir():
        raise NotADirectoryError(f"image folder {images_dir} is not a folder")
    paths = [Path(path) for path in expand_image_inputs([str(images_dir)])]
    if out is not None:
        out = out.resolve()
        paths = [path for path in paths if not path.resolve().is_relative_to(out)]
    if not paths:
        raise ValueError(f"image folder {images_dir} holds no images outside the output folder {out}")
    return paths


def dataset_started(out: Path) -> bool:
    """Whether ``out`` holds anything besides our lock and write probes (results, partial results
    or foreign files), which a run without ``resume`` must not overwrite."""
    return out.is_dir() and any(not entry.name.startswith(_BOOKKEEPING_PREFIX) for entry in out.iterdir())


def label_prompts(model, classes: Sequence[str], prompts: Mapping[str, CategoryText] | None = None) -> list[Prompt]:
    """The prompts of the classes, labels 1..K in ``classes`` order.

    Without descriptive prompts: :meth:`GLIP.build_prompts` of the class names, the prompt
    :meth:`GLIP.predict` uses, so labels are what ``predict(image, classes=...)`` returns. With
    ``prompts`` (:func:`glip.evaluation.prompts.read_prompts_file`): the class list as ``glip eval
    --prompts`` writes it, each class scored by its descriptive text; detections still name the
    class.
    """
    if not prompts:
        return model.build_prompts(classes=list(classes))
    columns = model.config.head.num_classes
    built = build_category_prompts(category_texts(list(classes), prompts, "--prompts"), model.tokenizer,
                                   model.config.language.max_query_len, columns, names=list(classes))
    for prompt in built:
        prompt.phrases = [classes[label - 1] for label in prompt.label_ids]
    return built


# --------------------------------------------------------------------------------------------------
# Labelling one batch
# --------------------------------------------------------------------------------------------------


@dataclass
class _Labeller:
    """Labels batches of a folder's images (the ``predict`` of :func:`run_batches`).

    A result is JSON: ``{"width", "height", "boxes" (COCO xywh, legacy +1), "scores", "labels"
    (1-based class index)}``, or ``{"error"}`` for an image that cannot be read.
    """

    model: Any  # a glip.GLIP
    paths: list[Path]
    prompts: list[Any]  # EncodedPrompt chunks sharing one label space
    options: InferenceOptions

    def predict(self, indices: list[int]) -> list[dict[str, Any]]:
        """One result per index; the readable images of the batch run as one batch."""
        results: dict[int, dict[str, Any]] = {}
        loaded: list[tuple[int, Image.Image]] = []
        for index in indices:
            try:
                loaded.append((index, load_image(self.paths[index])))
            except (OSError, ValueError, Image.DecompressionBombError) as error:
                message = str(error) if str(self.paths[index]) in str(error) else f"{self.paths[index]}: {error}"
                logger.error("skipped: %s", message)
                results[index] = {"error": message}
        if loaded:
            for (index, image), found in zip(loaded, self._detect([image for _, image in loaded])):
                records = found.to_coco(0)
                results[index] = {"width": image.width, "height": image.height,
                                  "boxes": [record["bbox"] for record in records],
                                  "scores": [record["score"] for record in records],
                                  "labels": [record["category_id"] for record in records]}
        return [results[index] for index in indices]

    @torch.no_grad()
    def _detect(self, images: list[Image.Image]) -> list[Detections]:
        """What :meth:`GLIP.predict` returns for each image, the images run as one padded batch."""
        options = self.options
        batch = self.model.preprocess(images, options.min_size, options.max_size)
        postprocessor = self.model.postprocessor(options.nms_threshold, options.max_detections,
                                                 options.class_agnostic_nms)
        detections = self.model.detect_batch(batch.pixels.to(self.model.device), batch.image_sizes, self.prompts,
                                             postprocessor, batch.original_sizes)
        return [found.to("cpu").above(options.threshold) for found in detections]


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


def label_folder(
    model,
    images_dir: str | Path,
    out: str | Path,
    classes: Sequence[str],
    *,
    prompts: Mapping[str, CategoryText] | None = None,
    options: DetectOptions = DetectOptions(),
    formats: Sequence[str] = ("coco",),
    run: RunOptions = RunOptions(),
) -> LabelSummary | None:
    """Label every image of ``images_dir`` with ``model`` and write the dataset to ``out``.

    Args:
        model: a :class:`glip.GLIP` (the teacher).
        images_dir: the folder to label (recursively).
        out: the dataset folder; it must be empty or absent unless ``run.resume``.
        classes: class names, in category order.
        prompts: descriptive prompt per class name (see :func:`label_prompts`).
        options: threshold, NMS, resize; None fields take the model's (as :meth:`GLIP.predict`).
        formats: ``coco`` and/or ``yolo``.
        run: batch size, partial saves, ``resume`` (its ``out`` is replaced by ``out``).

    Returns:
        The summary on process 0; None on the other processes of a ``torchrun`` group, except
        when ``resume`` finds the dataset finished already (then every process gets its summary).

    Raises:
        FileExistsError: ``out`` holds files and ``run.resume`` is False.
        ValueError: an unknown format, an empty class list, a prompt for an unknown class, or
            partial results of another run (naming what changed).
    """
    images_dir, out = Path(images_dir), Path(out)
    formats = _checked_formats(formats)
    classes = [str(name) for name in classes]
    if not classes:
        raise ValueError("classes is empty")
    run = dataclasses.replace(run, out=out)
    if not run.resume and dataset_started(out):
        raise FileExistsError(f"output folder {out} is not empty: continue its run with resume=True, or choose "
                              "another folder")
    paths = folder_images(images_dir, out)
    names = [path.relative_to(images_dir).as_posix() for path in paths]
    if "yolo" in formats:
        _check_yolo_names(names)
    built = label_prompts(model, classes, prompts)
    labeller = _Labeller(model, paths, [model.encode_prompt(prompt) for prompt in built],
                         model.inference_options(**dataclasses.asdict(options)))
    logger.info("labelling %d images with %s", len(paths), labeller.options)
    fingerprint = {
        "task": "label", "images": str(images_dir.resolve()),
        "files": hashlib.sha256("\n".join(names).encode()).hexdigest(), "model": model_digest(model),
        "classes": classes, "prompts": [prompt.caption for prompt in built],
        "options": dataclasses.asdict(labeller.options),
    }
    digest = fingerprint_digest(fingerprint, run)
    finished = _finished_summary(out, digest, formats) if run.resume else None
    if finished is not None:
        logger.info("%s is finished already", out)
        return finished
    results = run_batches(names, labeller.predict, fingerprint, run, desc="label")
    if results is None:
        return None
    info = {"description": "labelled by glip label", "classes": classes, "prompts": fingerprint["prompts"],
            **fingerprint["options"]}
    summary = write_dataset(out, images_dir, names, results, classes, formats, info, digest)
    clear_partials(out)
    return summary


def _checked_formats(formats: Sequence[str]) -> tuple[str, ...]:
    formats = tuple(dict.fromkeys(formats))
    unknown = [name for name in formats if name not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"formats must be some of {', '.join(FORMATS)}; got {list(formats)}")
    return formats


def _check_yolo_names(names: Sequence[str]) -> None:
    """Two images whose names differ only by extension (``a.png``, ``a.jpg``) would share one YOLO
    label file: refused before any labelling rather than one label file silently lost."""
    seen: dict[str, str] = {}
    for name in names:
        label = Path(name).with_suffix(".txt").as_posix()
        if label in seen:
            raise ValueError(f"images {seen[label]} and {name} would share the YOLO label file {label}: rename one, "
                             "or write only the COCO format")
        seen[label] = name


def _finished_summary(out: Path, digest: str, formats: tuple[str, ...]) -> LabelSummary | None:
    """The summary of a finished run of the same fingerprint and formats in ``out``, else None."""
    try:
        data = json.loads((out / SUMMARY_FILE).read_text())
        summary = LabelSummary(**{**data, "out": out, "formats": tuple(data["formats"])})
    except (OSError, json.JSONDecodeError, TypeError, KeyError):
        return None
    return summary if summary.fingerprint == digest and summary.formats == formats else None


# --------------------------------------------------------------------------------------------------
# Writing the dataset
# --------------------------------------------------------------------------------------------------


def write_dataset(
    out: Path,
    images_dir: Path,
    names: Sequence[str],
    results: Sequence[dict[str, Any]],
    classes: Sequence[str],
    formats: Sequence[str],
    info: dict[str, Any],
    fingerprint: str,
) -> LabelSummary:
    """Write the chosen formats, ``skipped.json``, the contact sheet and, last, ``summary.json``.

    Args:
        names: per image, its path relative to ``images_dir``.
        results: per image, the result of :class:`_Labeller`.
    """
    coco = coco_dataset(names, results, classes, info)
    if "coco" in formats:
        write_json_atomic(out / ANNOTATIONS_FILE, coco)
    if "yolo" in formats:
        write_yolo(out, images_dir, names, results, classes)
    skipped = [{"file_name": name, "error": result["error"]} for name, result in zip(names, results)
               if "error" in result]
    write_json_atomic(out / SKIPPED_FILE, skipped)
    write_contact_sheet(out / CONTACT_SHEET_FILE, images_dir, names, results, classes)
    summary = LabelSummary(out, len(names), len(names) - len(skipped), len(skipped), len(coco["annotations"]),
                           tuple(formats), fingerprint)
    write_json_atomic(out / SUMMARY_FILE, {key: value for key, value in summary.to_dict().items() if key != "out"})
    return summary


def coco_dataset(names: Sequence[str], results: Sequence[dict[str, Any]], classes: Sequence[str],
                 info: dict[str, Any] | None = None) -> dict[str, Any]:
    """The COCO detection dict of the labelled images (image ``i`` of the folder has id ``i + 1``,
    so ids stay those of the folder's order whatever is skipped)."""
    images, annotations = [], []
    for image_id, (name, result) in enumerate(zip(names, results), start=1):
        if "error" in result:
            continue
        images.append({"id": image_id, "file_name": name, "width": result["width"], "height": result["height"]})
        for box, score, label in zip(result["boxes"], result["scores"], result["labels"]):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label,
                                "bbox": box, "area": box[2] * box[3], "iscrowd": 0, "score": score})
    categories = [{"id": index, "name": name} for index, name in enumerate(classes, start=1)]
    return {"info": dict(info or {}), "images": images, "annotations": annotations, "categories": categories}


def yolo_lines(result: dict[str, Any]) -> list[str]:
    """YOLO rows ``class cx cy w h`` of one image's result (class 0-based, coordinates in [0, 1] of
    the image size; the box spans the COCO ``[x, x + w]`` of :func:`coco_dataset`)."""
    width, height = result["width"], result["height"]
    lines = []
    for (x, y, box_width, box_height), label in zip(result["boxes"], result["labels"]):
        centre_x, centre_y = (x + box_width / 2) / width, (y + box_height / 2) / height
        lines.append(f"{label - 1} {centre_x:.6f} {centre_y:.6f} {box_width / width:.6f} {box_height / height:.6f}")
    return lines


def write_yolo(out: Path, images_dir: Path, names: Sequence[str], results: Sequence[dict[str, Any]],
               classes: Sequence[str]) -> None:
    """``labels/<name>.txt`` per labelled image (empty for an image without boxes: a negative
    example) and ``data.yaml``."""
    for name, result in zip(names, results):
        if "error" not in result:
            lines = yolo_lines(result)
            write_text_atomic(out / YOLO_LABELS_DIR / Path(name).with_suffix(".txt"),
                              "".join(line + "\n" for line in lines))
    images = str(images_dir.resolve())
    data = {"train": images, "val": images, "nc": len(classes),
            "names": {index: name for index, name in enumerate(classes)}}
    header = ("# Written by glip label. The labels of IMAGES/<name> are in labels/<name>.txt beside this file;\n"
              "# Ultralytics looks for them by replacing /images/ with /labels/ in each image path, so label\n"
              "# a folder named images/ into its parent (glip label DATA/images --out DATA) or move labels/.\n")
    write_text_atomic(out / YOLO_DATA_FILE, header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def result_detections(result: dict[str, Any], classes: Sequence[str]) -> Detections:
    """One image's result as :class:`Detections` (inclusive xyxy, as the model returned them)."""
    boxes = torch.tensor(result["boxes"], dtype=torch.float32).reshape(-1, 4)
    # COCO xywh with the legacy +1 width -> inclusive corners (inverse of Detections.to_coco).
    boxes[:, 2:] = boxes[:, :2] + boxes[:, 2:] - quirks.TO_REMOVE
    labels = torch.tensor(result["labels"], dtype=torch.int64)
    return Detections(boxes, torch.tensor(result["scores"], dtype=torch.float32), labels,
                      [classes[label - 1] for label in result["labels"]])


def write_contact_sheet(path: Path, images_dir: Path, names: Sequence[str], results: Sequence[dict[str, Any]],
                        classes: Sequence[str], count: int = CONTACT_SHEET_IMAGES) -> Path | None:
    """A grid of the first ``count`` labelled images with their boxes drawn (``Detections.plot``),
    each fitted into a ``CONTACT_SHEET_TILE`` square with its file name; None if none was labelled."""
    shown = [(name, result) for name, result in zip(names, results) if "error" not in result][:count]
    if not shown:
        return None
    tile, columns = CONTACT_SHEET_TILE, min(CONTACT_SHEET_COLUMNS, len(shown))
    rows = -(-len(shown) // columns)
    sheet = Image.new("RGB", (columns * tile, rows * tile), (40, 40, 40))
    draw = ImageDraw.Draw(sheet)
    for position, (name, result) in enumerate(shown):
        picture = result_detections(result, classes).plot(images_dir / name)
        picture = ImageOps.contain(picture, (tile - 4, tile - 18))  # room for the file name below
        left, top = (position % columns) * tile, (position // columns) * tile
        sheet.paste(picture, (left + (tile - picture.width) // 2, top + 2))
        draw.text((left + 4, top + tile - 14), name[-48:], fill=(230, 230, 230))
    write_atomic(path, lambda temporary: sheet.save(temporary, format="JPEG", quality=88))
    return path
