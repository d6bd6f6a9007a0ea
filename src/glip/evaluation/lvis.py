"""LVIS zero-shot detection with the fixed-AP protocol (``glip eval lvis``).

As the official evaluation (README "LVIS Evaluation", ``engine/inference.py``,
``data/datasets/evaluation/lvis/lvis_eval.py:LvisEvaluatorFixedAP``):

* the 1203 categories are prompted in chunks of 40 (TEST.CHUNKED_EVALUATION 40) with cleaned names;
  the image backbone runs once per batch for all chunks;
* each chunk query keeps its best 300 detections per image (DETECTIONS_PER_IMG 300) and the
  queries' detections are pooled without a per-image cap;
* fixed AP (Dave et al., "Evaluating Large-Vocabulary Object Detectors: The Devil is in the
  Details", 2021; MDETR's evaluation): the best 10000 detections of each category over the whole
  dataset are kept and evaluated with no per-image limit, with the federated LVIS rules: a
  detection counts only on images where its category is verified present or absent
  (``neg_category_ids``), and an unmatched detection of a category that is not exhaustively
  annotated on an image (``not_exhaustive_category_ids``) is ignored; ``APr``/``APc``/``APf``
  average the AP of the rare/common/frequent categories.

The ``lvis`` package (0.5.3, the latest) cannot run with numpy 2 (``np.float`` was removed) and
pulls in OpenCV and matplotlib, so the protocol is implemented on pycocotools here: the federated
filter is applied to the detections beforehand, and a not-exhaustive (image, category) pair gets a
crowd region covering the image, which makes pycocotools ignore that pair's unmatched detections
exactly as the LVIS evaluator does (``tests/evaluation/test_lvis.py`` pins numbers computed with
the ``lvis`` package).

Outputs (``out=``): ``results.json`` (COCO results entering the fixed-AP evaluation: the best
``top_k`` per category), ``metrics.json`` (``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``,
``APr``, ``APc``, ``APf`` as fractions, -1 where no category qualifies; ``per_category_AP``,
``images``, ``top_k``, ``min_size``, ``max_size``, ``fingerprint``) and ``per_category.md``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import numpy as np

from glip.evaluation.annotations import check_annotations, check_image_files, read_json_file, require_fields
from glip.evaluation.coco import ground_truth, write_evaluation
from glip.evaluation.inference import detect_per_prompt
from glip.evaluation.prompts import CategoryText, build_category_prompts, category_texts
from glip.evaluation.protocol import check_output_folder, evaluate, resolve_test_size
from glip.evaluation.runner import RunOptions, file_digest, model_digest
from glip.modeling.postprocess import GroundingPostProcessor

logger = logging.getLogger(__name__)

LVIS_CHUNK_SIZE = 40  # official TEST.CHUNKED_EVALUATION of the LVIS evaluation
LVIS_MAX_DETECTIONS = 300  # official DETECTIONS_PER_IMG of the LVIS evaluation, per image and chunk query
FIXED_AP_TOP_K = 10000  # detections kept per category over the dataset (fixed AP)
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
FREQUENCIES = ("r", "c", "f")  # rare (< 10 training images), common (10-99), frequent (>= 100)
# A region covering any image: pycocotools' crowd IoU is intersection / detection area, so every
# detection inside it matches it (and is then ignored).
_EVERYWHERE = [-1e5, -1e5, 1e6, 1e6]


@dataclass
class LvisEvaluation:
    """Fixed-AP metrics (fractions), per-category AP (NaN without ground truth) and the evaluated
    detections (COCO result records)."""

    metrics: dict[str, float]
    per_category_ap: dict[str, float] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)


def read_lvis(annotation_file: str | Path) -> dict[str, Any]:
    """An LVIS v1 file (or GLIP's minival with inserted ``file_name``), checked for what the
    evaluation reads."""
    data = read_json_file(annotation_file, "LVIS annotations")
    require_fields(annotation_file, data, "images", ("id", "neg_category_ids", "not_exhaustive_category_ids"))
    require_fields(annotation_file, data, "categories", ("id", "name", "frequency"))
    require_fields(annotation_file, data, "annotations", ("image_id", "category_id", "bbox", "area"))
    for index, image in enumerate(data["images"]):
        if "file_name" not in image and "coco_url" not in image:
            raise ValueError(f"{annotation_file}: images[{index}] has neither 'file_name' nor 'coco_url'")
    for index, category in enumerate(data["categories"]):
        if category["frequency"] not in FREQUENCIES:
            raise ValueError(f"{annotation_file}: categories[{index}] has frequency {category['frequency']!r}, "
                             f"expected one of {FREQUENCIES}")
    if not data["categories"]:
        raise ValueError(f"{annotation_file}: 'categories' is empty")
    check_annotations(annotation_file, data)
    return data


def lvis_image_path(image: dict[str, Any], image_dir: Path) -> Path:
    """Where an LVIS image is: the COCO split folder and file of its ``coco_url``
    (``http://images.cocodataset.org/val2017/x.jpg`` -> ``image_dir/val2017/x.jpg``), as the official
    loader finds it (``data/datasets/lvis.py``), else ``image_dir / file_name``."""
    if "coco_url" in image:
        parts = PurePosixPath(urlparse(image["coco_url"]).path).parts
        return image_dir.joinpath(*parts[-2:])
    return image_dir / image["file_name"]


def top_k_per_category(results: Sequence[dict[str, Any]], top_k: int) -> list[dict[str, Any]]:
    """The ``top_k`` best-scored records of each category over all images (stable for ties)."""
    by_category: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in results:
        by_category[record["category_id"]].append(record)
    pooled = []
    for category in sorted(by_category):
        pooled.extend(sorted(by_category[category], key=lambda record: record["score"], reverse=True)[:top_k])
    return pooled


class CategoryFloor:
    """A running lower bound of each category's ``top_k``-th best score, to drop detections early.

    A detection scoring strictly below the ``top_k``-th best of its category among those seen so far
    cannot be among the ``top_k`` best over the dataset, so dropping it leaves the fixed-AP pool
    unchanged; it keeps the detections of LVIS (up to 300 per image and 40-class chunk) from piling
    up in memory and in the partial files.
    """

    def __init__(self, top_k: int) -> None:
        self.top_k = top_k
        self.scores: dict[int, list[float]] = defaultdict(list)
        self.floor: dict[int, float] = {}

    def keep(self, category: int, score: float) -> bool:
        """Whether a detection may still be in its category's top k (it is then counted)."""
        if score < self.floor.get(category, -math.inf):
            return False
        scores = self.scores[category]
        scores.append(score)
        if len(scores) >= 2 * self.top_k:  # amortised: raise the floor, keep the top k (and ties)
            kth = float(np.partition(np.asarray(scores), len(scores) - self.top_k)[len(scores) - self.top_k])
            self.floor[category] = kth
            self.scores[category] = [value for value in scores if value >= kth]
        return True


def _mean_ap(values: np.ndarray) -> float:
    """Mean of the defined precision values (> -1); -1 when none is defined (LVIS convention)."""
    defined = values[values > -1]
    return float(defined.mean()) if defined.size else -1.0


def _federated_truth(data: dict[str, Any]):
    """A pycocotools ``COCO`` of the LVIS ground truth in which every not-exhaustive (image,
    category) pair has a crowd region covering the image (its unmatched detections are ignored)."""
    annotations = [dict(annotation, iscrowd=0) for annotation in data["annotations"]]
    next_id = max([annotation.get("id", 0) for annotation in annotations] + [0]) + 1
    for image in data["images"]:
        for category in image["not_exhaustive_category_ids"]:
            annotations.append({"id": next_id, "image_id": image["id"], "category_id": category, "iscrowd": 1,
                                "bbox": list(_EVERYWHERE), "area": _EVERYWHERE[2] * _EVERYWHERE[3]})
            next_id += 1
    return ground_truth({"images": data["images"], "categories": data["categories"], "annotations": annotations})


def lvis_metrics(
    data: dict[str, Any], results: Sequence[dict[str, Any]], top_k: int = FIXED_AP_TOP_K
) -> LvisEvaluation:
    """Fixed AP of COCO-style result records against an LVIS annotation dict.

    Args:
        data: LVIS annotations (:func:`read_lvis`).
        results: detections of any number per image (not modified).
        top_k: records kept per category over the dataset.
    """
    from pycocotools.cocoeval import COCOeval

    if not data["images"] or not data["annotations"]:
        logger.warning("the LVIS annotations have no %s: every AP is -1 (undefined)",
                       "images" if not data["images"] else "annotations")
        return LvisEvaluation({name: -1.0 for name in METRIC_NAMES}, {}, [])
    pooled = top_k_per_category(results, top_k)
    present: dict[int, set[int]] = defaultdict(set)
    for annotation in data["annotations"]:
        present[annotation["image_id"]].add(annotation["category_id"])
    absent = {image["id"]: set(image["neg_category_ids"]) for image in data["images"]}
    unknown = {record["image_id"] for record in pooled} - set(absent)
    if unknown:
        raise ValueError(f"results name {len(unknown)} images that the annotations lack, e.g. {min(unknown)}")
    # Federated: a category is judged only on images where it is verified present or absent.
    judged = [record for record in pooled
              if record["category_id"] in present[record["image_id"]]
              or record["category_id"] in absent[record["image_id"]]]
    if not judged:
        return LvisEvaluation({name: 0.0 for name in METRIC_NAMES}, {}, pooled)

    truth = _federated_truth(data)
    categories = {category["id"]: category for category in data["categories"]}

    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(truth, truth.loadRes([dict(record) for record in judged]), "bbox")
        # No per-image limit (fixed AP); pycocotools caps per (image, category) at maxDets[-1].
        evaluator.params.maxDets = [len(judged)]
        evaluator.evaluate()
        evaluator.accumulate()
    params = evaluator.params
    precision = evaluator.eval["precision"][..., -1]  # [T, R, K, A, M] -> [T, R, K, A]
    iou_50 = int(np.argmin(np.abs(params.iouThrs - 0.5)))
    iou_75 = int(np.argmin(np.abs(params.iouThrs - 0.75)))
    metrics = {
        "AP": _mean_ap(precision[:, :, :, 0]),
        "AP50": _mean_ap(precision[iou_50, :, :, 0]),
        "AP75": _mean_ap(precision[iou_75, :, :, 0]),
        "APs": _mean_ap(precision[:, :, :, 1]),
        "APm": _mean_ap(precision[:, :, :, 2]),
        "APl": _mean_ap(precision[:, :, :, 3]),
    }
    for frequency in FREQUENCIES:
        group = [k for k, category_id in enumerate(params.catIds) if categories[category_id]["frequency"] == frequency]
        metrics[f"AP{frequency}"] = _mean_ap(precision[:, :, group, 0])
    per_category = {}
    for k, category_id in enumerate(params.catIds):
        value = _mean_ap(precision[:, :, k, 0])
        per_category[categories[category_id]["name"]] = value if value > -1 else float("nan")
    return LvisEvaluation(metrics, per_category, pooled)


@dataclass
class LvisProtocol:
    """Fixed-AP LVIS evaluation (:func:`evaluate`): every 40-class chunk keeps its own best
    detections per image; only detections that may still be in their category's top k are kept."""

    model: Any  # a glip.GLIP
    data: dict[str, Any]
    paths: list[Path]
    prompts: list[Any]  # EncodedPrompt chunks
    label_to_category: dict[int, int]
    postprocessor: GroundingPostProcessor
    test_size: tuple[int, int]
    fingerprint: dict[str, Any]
    top_k: int
    name: str = "lvis"
    floor: CategoryFloor = field(init=False)

    def __post_init__(self) -> None:
        self.floor = CategoryFloor(self.top_k)

    @property
    def keys(self) -> list[Any]:
        return [image["id"] for image in self.data["images"]]

    def predict(self, indices: list[int]) -> list[list[list[float]]]:
        """Per image, rows ``[category_id, score, x, y, w, h]`` that may still be in a top k."""
        batch = self.model.preprocess([self.paths[index] for index in indices], *self.test_size)
        per_image = detect_per_prompt(self.model, batch, self.prompts, self.postprocessor)
        rows = []
        for index, chunks in zip(indices, per_image):
            image_id = self.data["images"][index]["id"]
            records = [record for chunk in chunks for record in chunk.to_coco(image_id, self.label_to_category)]
            rows.append([[record["category_id"], record["score"], *record["bbox"]] for record in records
                         if self.floor.keep(record["category_id"], record["score"])])
        return rows

    def score(self, results: list[list[list[float]]]) -> LvisEvaluation:
        records = [{"image_id": image["id"], "category_id": int(row[0]), "bbox": row[2:], "score": row[1]}
                   for image, rows in zip(self.data["images"], results) for row in rows]
        return lvis_metrics(self.data, records, self.top_k)

    def write(self, out: Path, evaluation: LvisEvaluation, fingerprint: str) -> None:
        metrics = {**evaluation.metrics, "per_category_AP": evaluation.per_category_ap,
                   "images": len(self.data["images"]), "top_k": self.top_k, "min_size": self.test_size[0],
                   "max_size": self.test_size[1], "fingerprint": fingerprint}
        write_evaluation(out, evaluation.results, metrics, evaluation.per_category_ap, "LVIS fixed AP per category")

    def restore(self, metrics: dict[str, Any]) -> LvisEvaluation:
        return LvisEvaluation({name: metrics[name] for name in METRIC_NAMES},
                              {name: (math.nan if value is None else value)
                               for name, value in metrics.get("per_category_AP", {}).items()})


def evaluate_lvis(
    model,
    annotation_file: str | Path,
    image_dir: str | Path,
    batch_size: int = 8,
    min_size: int | None = None,
    max_size: int | None = None,
    *,
    chunk_size: int = LVIS_CHUNK_SIZE,
    max_detections: int = LVIS_MAX_DETECTIONS,
    top_k: int = FIXED_AP_TOP_K,
    prompts: Mapping[str, CategoryText] | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    run: RunOptions | None = None,
) -> LvisEvaluation | None:
    """Fixed-AP LVIS evaluation of ``model`` (minival or val: any LVIS JSON); writes ``out/`` if given.

    Args:
        model: a :class:`glip.GLIP`.
        annotation_file: LVIS JSON.
        image_dir: the COCO folder holding the split folders of the images' ``coco_url`` (else of their
            ``file_name``).
        batch_size: images per forward pass.
        min_size / max_size: test resize (default: the model config's, :func:`resolve_test_size`).
        chunk_size: categories per prompt (official 40).
        max_detections: detections kept per image and chunk query (official 300).
        top_k: detections kept per category over the dataset (official 10000).
        prompts: descriptive prompts per category name.
        out / resume / progress: output folder, resumption, progress bar (or ``run`` for all).

    Returns:
        The evaluation on process 0; None on the other processes of a distributed run.
    """
    run = run or RunOptions(batch_size, Path(out) if out is not None else None, resume, progress=progress)
    data = read_lvis(annotation_file)
    image_dir = Path(image_dir)
    paths = [lvis_image_path(image, image_dir) for image in data["images"]]
    check_image_files(paths, annotation_file)
    check_output_folder(run.out)
    categories = sorted(data["categories"], key=lambda category: category["id"])
    names = [str(category["name"]) for category in categories]
    class_prompts = build_category_prompts(category_texts(names, prompts, "--prompts"), model.tokenizer,
                                           model.config.language.max_query_len, chunk_size, names=names)
    logger.info("%d LVIS categories in %d prompts", len(names), len(class_prompts))
    # The official LVIS run scores up to 3000 label columns (TEST.MDETR_STYLE_AGGREGATE_CLASS_NUM),
    # so the head's num_classes does not bound a chunk here.
    # Per-label NMS as the official evaluation, whatever the model's display default (see coco.py).
    settings = dataclasses.replace(model.config.postprocess, detections_per_image=max_detections,
                                   class_agnostic_nms=False)
    test_size = resolve_test_size(model, min_size, max_size)
    fingerprint = {
        "protocol": "lvis", "annotations": file_digest(annotation_file), "images": str(image_dir.resolve()),
        "model": model_digest(model), "prompts": [prompt.caption for prompt in class_prompts],
        "min_size": test_size[0], "max_size": test_size[1], "max_detections": max_detections, "top_k": top_k,
    }
    protocol = LvisProtocol(model, data, paths, [model.encode_prompt(prompt) for prompt in class_prompts],
                            {index + 1: category["id"] for index, category in enumerate(categories)},
                            GroundingPostProcessor.from_config(settings, num_label_columns=None), test_size,
                            fingerprint, top_k)
    return evaluate(protocol, run)
