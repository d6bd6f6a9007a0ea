"""COCO-style detection evaluation of a GLIP model on any COCO JSON (``glip eval coco``).

The prompt lists the categories (in id order) as the official evaluation writes them: names
cleaned by :func:`glip.evaluation.prompts.clean_name` and joined by ". ", or descriptive prompts
given per category. Long lists are split into prompt chunks; the image backbone runs once per
batch for all of them (:meth:`GLIP.detect_batch`), which keeps the best ``detections_per_image``
(official 100) of their union. Labels map back to category ids; boxes are written with the
official ``+1`` width (``Detections.to_coco``) and scored with pycocotools.

Outputs (``out=``): ``results.json`` (COCO results: ``image_id``, ``category_id``, ``bbox`` xywh,
``score``), ``metrics.json`` (``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl`` as fractions,
``per_category_AP``, ``images``, the test size ``min_size`` / ``max_size``, ``fingerprint``) and
``per_category.md``.

The test size defaults to the model config's (:func:`glip.evaluation.protocol.resolve_test_size`:
800 / 1333 for official models, 224 for GLIP-Nano). The protocol is :class:`CocoProtocol`, run by
the one evaluation skeleton :func:`glip.evaluation.protocol.evaluate`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from glip.files import write_json_atomic, write_text_atomic
from glip.evaluation.annotations import check_image_files, read_coco
from glip.evaluation.prompts import CategoryText, build_category_prompts, category_texts
from glip.evaluation.protocol import check_output_folder, evaluate, resolve_test_size
from glip.evaluation.runner import RunOptions, file_digest, model_digest
from glip.modeling.postprocess import GroundingPostProcessor
from glip.processing import Prompt

logger = logging.getLogger(__name__)

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
NO_DATA = -1.0  # what pycocotools reports for a metric without ground truth


@dataclass
class CocoEvaluation:
    """Metrics (``AP``... as fractions), per-category AP (NaN without ground truth) and the raw
    result records."""

    metrics: dict[str, float]
    per_category_ap: dict[str, float] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Annotation files
# --------------------------------------------------------------------------------------------------


def ground_truth(data: dict[str, Any]):
    """A pycocotools ``COCO`` of an annotation dict (``iscrowd``, ``area`` and ``id`` default to 0,
    ``w * h`` and a fresh id where a file leaves them out)."""
    from pycocotools.coco import COCO

    data = copy.copy(data)
    annotations = []
    next_id = max([annotation.get("id", 0) for annotation in data["annotations"]] + [0]) + 1
    for annotation in data["annotations"]:
        annotation = dict(annotation)
        annotation.setdefault("iscrowd", 0)
        annotation.setdefault("area", float(annotation["bbox"][2]) * float(annotation["bbox"][3]))
        if "id" not in annotation:  # pycocotools indexes annotations by id
            annotation["id"] = next_id
            next_id += 1
        annotations.append(annotation)
    data["annotations"] = annotations
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = data
        coco.createIndex()
    return coco


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def coco_metrics(annotation_file: str | Path | dict[str, Any], results: list[dict[str, Any]],
                 category_ids: Sequence[int] | None = None) -> CocoEvaluation:
    """pycocotools box AP of ``results`` (optionally restricted to ``category_ids``).

    Args:
        annotation_file: COCO JSON path, or its content as a dict.
        results: COCO result records (not modified).
        category_ids: evaluate these categories only.
    """
    from pycocotools.cocoeval import COCOeval

    data = read_coco(annotation_file) if not isinstance(annotation_file, dict) else annotation_file
    if not data["images"] or not data["annotations"]:
        # pycocotools' "no data" value: AP is undefined without ground truth, not 0.
        logger.warning("%s has no %s: every AP is -1 (undefined)",
                       "the annotations" if isinstance(annotation_file, dict) else annotation_file,
                       "images" if not data["images"] else "annotations")
        return CocoEvaluation({name: NO_DATA for name in METRIC_NAMES}, {}, results)
    truth = ground_truth(data)
    if not results:  # loadRes cannot take an empty list; nothing detected scores 0 wherever truth exists
        return CocoEvaluation({name: 0.0 for name in METRIC_NAMES}, {}, results)
    with contextlib.redirect_stdout(io.StringIO()):
        # loadRes adds fields to the records it is given: give it copies.
        detections = truth.loadRes([dict(record) for record in results])
        evaluator = COCOeval(truth, detections, "bbox")
        if category_ids is not None:
            evaluator.params.catIds = list(category_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    metrics = {name: float(value) for name, value in zip(METRIC_NAMES, evaluator.stats[:6])}
    per_category = {}
    precision = evaluator.eval["precision"]  # [T, R, K, A, M]
    for k, category_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        per_category[truth.cats[category_id]["name"]] = float(values.mean()) if values.size else float("nan")
    return CocoEvaluation(metrics, per_category, results)


def per_category_table(per_category_ap: Mapping[str, float], title: str = "AP per category") -> str:
    """A markdown table of per-category AP (``-`` for a category without ground truth)."""
    lines = [f"# {title}", "", "| category | AP |", "|---|---|"]
    for name, value in per_category_ap.items():
        lines.append(f"| {name} | {'-' if math.isnan(value) else f'{value:.4f}'} |")
    return "\n".join(lines) + "\n"


def write_evaluation(out: Path, results: Any, metrics: dict[str, Any], per_category_ap: Mapping[str, float] | None,
                     title: str) -> None:
    """Write ``results.json``, ``metrics.json`` (and ``per_category.md``) atomically."""
    write_json_atomic(out / "results.json", results, indent=None)  # compact: json.dumps runs in C
    if per_category_ap:
        write_text_atomic(out / "per_category.md", per_category_table(per_category_ap, title))
    write_json_atomic(out / "metrics.json", metrics)


# --------------------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------------------


@dataclass
class CocoProtocol:
    """COCO box AP of class-list prompts on the images of a COCO file (:func:`evaluate`).

    Each batch of images is detected against every prompt chunk at once (:meth:`GLIP.detect_batch`:
    the backbone runs once, the best ``detections_per_image`` of the union are kept); labels map
    back to category ids.
    """

    name: str
    model: Any  # a glip.GLIP
    data: dict[str, Any]
    paths: list[Path]
    prompts: list[Any]  # EncodedPrompt chunks sharing one label space
    label_to_category: dict[int, int]
    postprocessor: GroundingPostProcessor
    test_size: tuple[int, int]
    fingerprint: dict[str, Any]
    category_ids: Sequence[int] | None = None

    @property
    def keys(self) -> list[Any]:
        return [image["id"] for image in self.data["images"]]

    def predict(self, indices: list[int]) -> list[list[dict[str, Any]]]:
        """Per image, its COCO result records."""
        batch = self.model.preprocess([self.paths[index] for index in indices], *self.test_size)
        with torch.no_grad():
            detections = self.model.detect_batch(batch.pixels.to(self.model.device), batch.image_sizes, self.prompts,
                                                 self.postprocessor, batch.original_sizes)
        return [image_detections.to("cpu").to_coco(self.data["images"][index]["id"], self.label_to_category)
                for index, image_detections in zip(indices, detections)]

    def score(self, results: list[list[dict[str, Any]]]) -> CocoEvaluation:
        return coco_metrics(self.data, [record for records in results for record in records], self.category_ids)

    def write(self, out: Path, evaluation: CocoEvaluation, fingerprint: str) -> None:
        metrics = {**evaluation.metrics, "per_category_AP": evaluation.per_category_ap,
                   "images": len(self.data["images"]), "min_size": self.test_size[0], "max_size": self.test_size[1],
                   "fingerprint": fingerprint}
        write_evaluation(out, evaluation.results, metrics, evaluation.per_category_ap, f"{self.name}: AP per category")

    def restore(self, metrics: dict[str, Any]) -> CocoEvaluation:
        return CocoEvaluation({name: metrics[name] for name in METRIC_NAMES},
                              {name: (math.nan if value is None else value)
                               for name, value in metrics.get("per_category_AP", {}).items()})


def detection_protocol(
    model,
    annotation_file: str | Path,
    data: dict[str, Any],
    image_dir: str | Path,
    class_prompts: Sequence[Prompt],
    label_to_category: dict[int, int],
    *,
    min_size: int | None = None,
    max_size: int | None = None,
    max_detections: int | None = None,
    category_ids: Sequence[int] | None = None,
    name: str = "coco",
    model_fingerprint: str | None = None,
) -> CocoProtocol:
    """A :class:`CocoProtocol` of ``class_prompts`` (labels 1.. in ``label_to_category``) on the
    images of a COCO file (``data``: its content, :func:`read_coco`); checks that they exist."""
    image_dir = Path(image_dir)
    paths = [image_dir / entry["file_name"] for entry in data["images"]]
    check_image_files(paths, annotation_file)
    test_size = resolve_test_size(model, min_size, max_size)
    # The protocols score per-label NMS, as the official evaluation, whatever the model's display
    # default (GLIP-Nano's class-agnostic NMS would drop a box's second-best label from the ranking).
    postprocessor = model.postprocessor(max_detections=max_detections, class_agnostic_nms=False)
    fingerprint = {
        "protocol": name, "annotations": file_digest(annotation_file), "images": str(image_dir.resolve()),
        "model": model_fingerprint or model_digest(model), "prompts": [prompt.caption for prompt in class_prompts],
        "min_size": test_size[0], "max_size": test_size[1], "max_detections": postprocessor.detections_per_image,
    }
    return CocoProtocol(name, model, data, paths, [model.encode_prompt(prompt) for prompt in class_prompts],
                        label_to_category, postprocessor, test_size, fingerprint, category_ids)


def evaluate_detection(
    model,
    annotation_file: str | Path,
    image_dir: str | Path,
    *,
    prompts: Mapping[str, CategoryText] | None = None,
    categories: Sequence[Mapping[str, Any]] | None = None,
    chunk_size: int | None = None,
    min_size: int | None = None,
    max_size: int | None = None,
    max_detections: int | None = None,
    category_ids: Sequence[int] | None = None,
    allow_untokenized: bool = False,
    run: RunOptions = RunOptions(),
    protocol: str = "coco",
    model_fingerprint: str | None = None,
) -> CocoEvaluation | None:
    """Detect every category of a COCO file in its images with the official evaluation prompt and
    score with pycocotools; write the outputs to ``run.out`` if given.

    Args:
        model: a :class:`glip.GLIP`.
        annotation_file: COCO detection JSON.
        image_dir: folder of its images' ``file_name``.
        prompts: descriptive prompts per category name (:func:`read_prompts_file`).
        categories: ``{"id", "name"}`` entries that name the categories in the prompt instead of the
            file's (official OVERRIDE_CATEGORY); the metrics still cover the file's categories.
        chunk_size: categories per prompt (default: as many as fit, at most the head's
            ``num_classes`` score columns).
        min_size / max_size: test resize (default: the model config's, :func:`resolve_test_size`).
        max_detections: detections kept per image (default: the config's, official 100).
        category_ids: compute the metrics over these categories only.
        allow_untokenized: keep categories whose name has no token (see :func:`build_category_prompts`).
        run: batching, sharding, partial saves, resumption.
        protocol: name in the fingerprint, the progress bar and the tables.
        model_fingerprint: :func:`model_digest` of ``model`` if already known.

    Returns:
        The evaluation on process 0 (with no result records when ``run.resume`` found the run
        finished already); None on the other processes of a distributed run.
    """
    data = read_coco(annotation_file)
    prompt_categories = sorted(categories if categories is not None else data["categories"],
                               key=lambda category: category["id"])
    names = [str(category["name"]) for category in prompt_categories]
    columns = model.config.head.num_classes
    class_prompts = build_category_prompts(
        category_texts(names, prompts, "--prompts"), model.tokenizer, model.config.language.max_query_len,
        min(chunk_size or columns, columns), names=names, allow_untokenized=allow_untokenized,
    )
    label_to_category = {index + 1: category["id"] for index, category in enumerate(prompt_categories)}
    unprompted = sorted({category["id"] for category in data["categories"]} - set(label_to_category.values()))
    if unprompted:
        logger.warning("%s: categories %s are not in the prompt (they get AP 0)", annotation_file, unprompted)
    check_output_folder(run.out)
    return evaluate(detection_protocol(model, annotation_file, data, image_dir, class_prompts, label_to_category,
                                       min_size=min_size, max_size=max_size, max_detections=max_detections,
                                       category_ids=category_ids, name=protocol, model_fingerprint=model_fingerprint),
                    run)


def evaluate_coco(
    model,
    annotation_file: str | Path,
    image_dir: str | Path,
    batch_size: int = 8,
    min_size: int | None = None,
    max_size: int | None = None,
    category_ids: Sequence[int] | None = None,
    *,
    prompts: Mapping[str, CategoryText] | None = None,
    chunk_size: int | None = None,
    max_detections: int | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> CocoEvaluation | None:
    """COCO AP of ``model`` on a COCO file (see :func:`evaluate_detection`); writes ``out/`` if given.

    Returns None on the processes other than 0 of a distributed run.
    """
    run = RunOptions(batch_size, Path(out) if out is not None else None, resume, progress=progress)
    return evaluate_detection(model, annotation_file, image_dir, prompts=prompts, chunk_size=chunk_size,
                              min_size=min_size, max_size=max_size, max_detections=max_detections,
                              category_ids=category_ids, run=run)
