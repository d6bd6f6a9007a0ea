"""Training datasets: detection and grounding annotations as grounding samples.

Every dataset returns a :class:`Sample`: a transformed image, its boxes, a caption and, per box, the
caption characters it is grounded to with the official row-normalised positive map. Sources:

* :class:`DetectionDataset`: COCO-format detection JSON; the caption is made of category names
  (official ``data/datasets/modulated_coco.py:CocoGrounding`` and the TSV detection datasets, see
  :mod:`glip.data.prompts`);
* :class:`GroundingDataset`: MDETR-format grounding JSON (Flickr30k entities, GoldG "mixed"): each
  image entry carries a ``caption``, each annotation its ``tokens_positive`` character spans
  (official ``ModulatedDataset``);
* :class:`ODVGDataset`: ODVG jsonl (Open-GroundingDino), one image per line with either
  ``"detection": {"instances": [{"bbox", "label", "category"}]}`` or
  ``"grounding": {"caption", "regions": [{"bbox", "phrase", "tokens_positive"?}]}``;
* :class:`MixedDataset`: several datasets drawn with per-source weights.

Boxes follow the legacy inclusive convention (``quirks.TO_REMOVE``): a COCO ``[x, y, w, h]`` becomes
``[x, y, x + w - 1, y + h - 1]`` (``BoxList.convert("xyxy")``), is clipped to ``[0, W - 1] x
[0, H - 1]`` and dropped when empty (``clip_to_image(remove_empty=True)``). ODVG ``[x1, y1, x2, y2]``
corners are exclusive (Open-GroundingDino's COCO converter writes ``x2 = x + w``), so ``x2 - 1``,
``y2 - 1`` give the same boxes as the COCO file they came from.

Bad data: malformed JSON, missing or mistyped fields, unknown image or category ids and boxes that
cannot be boxes (not 4 numbers, NaN or infinite, negative width or height;
:func:`glip.data.validation.checked_bbox`) raise ``ValueError`` naming the file, the record (its
index and ``id``) and the field; boxes that are empty or stick out of the image are dropped or
clipped as the official code does, with one warning per dataset that counts them (``dataset.box_stats``); images that fail
to decode are reported (once per file) and the dataset returns ``None`` for them, which
:func:`glip.data.collate.collate` drops.

Randomness (negative classes, shuffles, scale, flip) comes from one ``random.Random`` per sample,
derived from ``(seed, epoch, index)``: a sample is the same whichever worker loads it, and training
resumes exactly from a seed and a step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from transformers import BertTokenizerFast

from glip import quirks
from glip.data.prompts import full_category_prompt, sampled_category_prompt
from glip.data.transforms import TrainTransforms, TransformedSample
from glip.data.validation import checked_bbox, entry_name
from glip.modeling.postprocess import box_iou_legacy
from glip.processing import Span, create_positive_map, load_image

logger = logging.getLogger(__name__)

ImageId = Union[int, str]

# ``ignore_objects_from``: a box of the other file is one of this file's objects at this IoU or more.
IGNORE_MATCH_IOU: float = 0.9


@dataclass
class Sample:
    """One training sample.

    Attributes:
        image: ``[3, h, w]`` float32, BGR, 0-255 scale, normalised (not padded).
        boxes: ``[G, 4]`` float32 xyxy (inclusive convention) in ``image`` pixels.
        labels: ``[G]`` int64 category ids (detection: 1-based contiguous ids in category order;
            grounding: the annotation's ``category_id``, 1 in MDETR files).
        positive_map: ``[G, max_query_len]`` float32: row g spreads a unit mass over the tokens of
            box g's phrase (official ``create_positive_map``, rows divided by sum + 1e-6).
        caption: the text fed to the language model.
        tokens_positive: per box, its ``(begin, end)`` character spans in ``caption``.
        image_id: id of the image in its annotation file.
        original_size: ``(H0, W0)`` of the decoded image.
        ignore_boxes: ``[K, 4]`` float32 xyxy in ``image`` pixels: objects the source knows of but
            does not name (``ignore_objects_from``); anchors on them get no loss. None: none.
    """

    image: Tensor
    boxes: Tensor
    labels: Tensor
    positive_map: Tensor
    caption: str
    tokens_positive: list[list[Span]]
    image_id: ImageId
    original_size: tuple[int, int]
    ignore_boxes: Tensor | None = None

    @property
    def image_size(self) -> tuple[int, int]:
        """``(h, w)`` of the transformed image."""
        return int(self.image.shape[1]), int(self.image.shape[2])


@dataclass
class BoxStats:
    """Counts of annotation problems found in a dataset (checked against the sizes that the
    annotation file declares).

    Attributes:
        num_boxes: boxes read (crowd boxes excluded).
        num_clipped: boxes reaching outside the image, clipped to it.
        num_dropped: boxes empty after clipping (zero or negative size, non-finite), dropped.
        num_unresolved: grounding regions whose phrase does not occur in the caption, dropped.
    """

    num_boxes: int = 0
    num_clipped: int = 0
    num_dropped: int = 0
    num_unresolved: int = 0


class Transforms(Protocol):
    """What a dataset calls to transform a sample (:class:`TrainTransforms`, :class:`TestTransforms`)."""

    def __call__(
        self,
        image: Image.Image,
        boxes: Tensor,
        caption: str,
        tokens_positive: Sequence[Sequence[Span]],
        rng: random.Random,
    ) -> TransformedSample: ...


@dataclass(frozen=True)
class DatasetOptions:
    """How a dataset of any format turns its annotations into samples.

    Attributes:
        transforms: :class:`TrainTransforms` (None: its defaults, the GLIP-T pre-training
            settings) or :class:`TestTransforms`.
        deterministic: detection captions list every category in category order, no sampling or
            shuffling (official ``convert_od_to_grounding_simple(disable_shuffle=True)``); otherwise
            the image's classes plus sampled negatives, shuffled (Objects365 pre-training recipe).
            Grounding captions are always the file's.
        num_negatives: negatives sampled per image at most (official RANDOM_SAMPLE_NEG).
        full_negative_prob: probability of sampling all ``num_negatives`` (official CONTROL_PROB[2]).
        separator: text between two class names (official SEPARATION_TOKENS).
        max_query_len: token budget of the caption and width of the positive map.
        keep_empty_images: keep images without usable boxes (they train on background only).
        seed: seed of the per-sample random sources.
    """

    transforms: Transforms | None = None
    deterministic: bool = False
    num_negatives: int = 85
    full_negative_prob: float = 0.5
    separator: str = quirks.TRAIN_CLASS_SEPARATOR
    max_query_len: int = 256
    keep_empty_images: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_negatives < 0:
            raise ValueError(f"num_negatives must be >= 0, got {self.num_negatives}")
        if self.max_query_len < 3:
            raise ValueError(f"max_query_len must be at least 3, got {self.max_query_len}")
        if not 0.0 <= self.full_negative_prob <= 1.0:
            raise ValueError(f"full_negative_prob must be in [0, 1], got {self.full_negative_prob}")


def _options(options: DatasetOptions | None, settings: dict[str, Any]) -> DatasetOptions:
    """``options`` (default: all defaults) with ``settings`` (field name -> value) replaced."""
    try:
        return dataclasses.replace(options or DatasetOptions(), **settings)
    except TypeError as error:  # an unknown name: say which fields exist
        names = [field.name for field in dataclasses.fields(DatasetOptions)]
        raise TypeError(f"{error}; the dataset options are {names}") from None


@dataclass
class _Record:
    """One image's annotations as read from the file.

    ``boxes`` are xyxy in the inclusive convention, not yet clipped. A detection record has
    ``caption is None`` (its caption is made of category names when loaded).
    """

    image_file: Path
    image_id: ImageId
    declared_size: tuple[int, int] | None
    boxes: np.ndarray  # [G, 4] float32
    labels: np.ndarray  # [G] int64
    caption: str | None = None
    tokens_positive: list[list[Span]] | None = None
    ignore_boxes: np.ndarray | None = None  # [K, 4] float32 xyxy, inclusive convention


# --------------------------------------------------------------------------------------------------
# Boxes
# --------------------------------------------------------------------------------------------------


def xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """COCO ``[x, y, w, h]`` to inclusive ``[x1, y1, x2, y2]`` (``x2 = x + w - 1``).

    Args:
        boxes: ``[G, 4]``.
    """
    converted = boxes.clone()
    converted[:, 2:] = boxes[:, :2] + (boxes[:, 2:] - quirks.TO_REMOVE)
    return converted


def clip_boxes_to_image(boxes: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Clip inclusive xyxy boxes to ``[0, width - 1] x [0, height - 1]`` and flag the non-empty ones
    (``BoxList.clip_to_image(remove_empty=True)``: kept iff ``x2 > x1`` and ``y2 > y1``).

    Args:
        boxes: ``[G, 4]`` float32; rows with NaN end up dropped.

    Returns:
        ``(clipped boxes [G, 4], keep [G] bool)``.
    """
    clipped = torch.stack(
        (
            boxes[:, 0].clamp(min=0, max=width - quirks.TO_REMOVE),
            boxes[:, 1].clamp(min=0, max=height - quirks.TO_REMOVE),
            boxes[:, 2].clamp(min=0, max=width - quirks.TO_REMOVE),
            boxes[:, 3].clamp(min=0, max=height - quirks.TO_REMOVE),
        ),
        dim=-1,
    )
    keep = (clipped[:, 3] > clipped[:, 1]) & (clipped[:, 2] > clipped[:, 0])
    return clipped, keep


def _count_box_problems(boxes: np.ndarray, size: tuple[int, int]) -> tuple[int, int]:
    """``(clipped, dropped)`` counts of boxes ``[G, 4]`` in an image of ``size = (h, w)``."""
    tensor = torch.from_numpy(boxes)
    clipped, keep = clip_boxes_to_image(tensor, size[0], size[1])
    changed = (clipped != tensor).any(dim=1) & keep
    return int(changed.sum()), int((~keep).sum())


# --------------------------------------------------------------------------------------------------
# Reading and checking annotation files
# --------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        with path.open("r", encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: malformed JSON at line {error.lineno} column {error.colno}: {error.msg}") from error
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error})") from error


def _read_jsonl(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` of every non-empty line."""
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    records = []
    with path.open("r", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: line {line_number}: malformed JSON ({error.msg})") from error
            if not isinstance(record, dict):
                raise ValueError(f"{path}: line {line_number}: expected a JSON object, got {type(record).__name__}")
            records.append((line_number, record))
    return records


def _field(record: Mapping[str, Any], key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(record, Mapping):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if key not in record:
        raise ValueError(f"{where}: missing field {key!r}")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ValueError(f"{where}: field {key!r} must be {names}, got {value!r}")
    return value


def _spans(value: Any, caption: str, where: str) -> list[Span]:
    """``[[begin, end], ...]`` character spans (end exclusive) inside ``caption``."""
    if not isinstance(value, list):
        raise ValueError(f"{where}: tokens_positive must be a list of [begin, end] spans, got {value!r}")
    spans = []
    for item in value:
        if (
            not isinstance(item, (list, tuple))
            or len(item) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in item)
        ):
            raise ValueError(f"{where}: tokens_positive must be a list of [begin, end] spans, got {value!r}")
        begin, end = int(item[0]), int(item[1])
        if not 0 <= begin < end <= len(caption):
            raise ValueError(
                f"{where}: span [{begin}, {end}] is not a non-empty range of the caption ({len(caption)} chars)"
            )
        spans.append((begin, end))
    return spans


def _declared_size(record: Mapping[str, Any], where: str) -> tuple[int, int] | None:
    if "height" not in record and "width" not in record:
        return None
    height = _field(record, "height", where, int)
    width = _field(record, "width", where, int)
    if height <= 0 or width <= 0:
        raise ValueError(f"{where}: image size must be positive, got height={height} width={width}")
    return height, width


def _box_array(boxes: list[list[float]]) -> np.ndarray:
    """``[G, 4]`` float32 of boxes already checked finite (:func:`checked_bbox`)."""
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def _has_usable_box(raw_sizes: Sequence[tuple[float, float]]) -> bool:
    """Official ``has_valid_annotation``: some box (crowd ones included) is over 1 pixel in both
    width and height."""
    return any(width > 1 and height > 1 for width, height in raw_sizes)


def _sorted_ids(ids: Sequence[ImageId]) -> list[ImageId]:
    """Image ids in ascending order (the official datasets sort them); strings after integers."""
    return sorted(ids, key=lambda value: (isinstance(value, str), value))


# --------------------------------------------------------------------------------------------------
# Shared machinery
# --------------------------------------------------------------------------------------------------


class _GroundingSource(Dataset):
    """Loading, clipping, prompting, transforming and positive maps, shared by all formats.

    Subclasses fill ``records`` (and ``category_names`` when they have detection records) and call
    :meth:`_report_box_problems`.
    """

    def __init__(
        self, source: str | Path, image_dir: str | Path, tokenizer: BertTokenizerFast, options: DatasetOptions
    ) -> None:
        self.source = Path(source)
        self.image_dir = Path(image_dir)
        self.tokenizer = tokenizer
        self.options = options
        self.transforms: Transforms = options.transforms if options.transforms is not None else TrainTransforms()
        self.max_query_len = options.max_query_len
        self.seed = options.seed
        self.epoch = 0
        self.records: list[_Record] = []
        self.category_names: dict[int, str] = {}
        self.box_stats = BoxStats()
        self._reported_images: set[Path] = set()
        self._warned_at_load = False

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Change the randomness of every sample (call before each epoch)."""
        self.epoch = int(epoch)

    def rng_for(self, index: int) -> random.Random:
        """The random source of sample ``index`` in the current epoch."""
        # A string seed is hashed with SHA-512 by ``random.seed``: stable across processes and runs.
        return random.Random(f"glip-data:{self.seed}:{self.epoch}:{index}")

    def __getitem__(self, index: int) -> Sample | None:
        return self.get(index, self.rng_for(index))

    def get(self, index: int, rng: random.Random) -> Sample | None:
        """Sample ``index`` built with the random source ``rng``; ``None`` if its image cannot be read."""
        record = self.records[index]
        image = self._load_image(record)
        if image is None:
            return None
        original_size = (image.height, image.width)
        if record.declared_size != original_size:
            self._count_at_load(record, original_size)

        boxes, keep = clip_boxes_to_image(torch.from_numpy(record.boxes), image.height, image.width)
        boxes, labels = boxes[keep], torch.from_numpy(record.labels)[keep]
        if record.caption is None:
            caption, tokens_positive, grounded = self._category_caption(labels, rng)
            boxes, labels = boxes[grounded], labels[grounded]
        else:
            caption = record.caption
            assert record.tokens_positive is not None
            tokens_positive = [record.tokens_positive[i] for i in torch.nonzero(keep).flatten().tolist()]

        num_boxes = int(boxes.shape[0])
        ignore = None
        if record.ignore_boxes is not None and len(record.ignore_boxes):
            ignore, inside = clip_boxes_to_image(torch.from_numpy(record.ignore_boxes), image.height, image.width)
            ignore = ignore[inside]
            # The ignored boxes ride through the same resize / flip as the named ones, without spans.
            boxes = torch.cat([boxes, ignore])
            tokens_positive = [*tokens_positive, *([[]] * int(ignore.shape[0]))]
        transformed = self.transforms(image, boxes, caption, tokens_positive, rng)
        boxes, spans = transformed.boxes[:num_boxes], transformed.tokens_positive[:num_boxes]
        if ignore is not None:
            ignore = transformed.boxes[num_boxes:]
        # Official ``ConvertCocoPolysToMask``: the caption alone, truncated at the query length.
        encoding = self.tokenizer(transformed.caption, max_length=self.max_query_len, truncation=True)
        positive_map = create_positive_map(encoding, spans, self.max_query_len)
        return Sample(
            image=transformed.image,
            boxes=boxes,
            labels=labels.to(torch.int64),
            positive_map=positive_map,
            caption=transformed.caption,
            tokens_positive=spans,
            image_id=record.image_id,
            original_size=original_size,
            ignore_boxes=ignore,
        )

    def _category_caption(self, labels: Tensor, rng: random.Random) -> tuple[str, list[list[Span]], Tensor]:
        """Caption of category names for a detection record; ``grounded`` flags boxes whose class made it in."""
        positive_labels = [int(label) for label in labels.tolist()]
        options = self.options
        if options.deterministic:
            prompt = full_category_prompt(
                positive_labels, self.category_names, self.tokenizer, self.max_query_len, options.separator
            )
        else:
            prompt = sampled_category_prompt(
                positive_labels,
                self.category_names,
                self.tokenizer,
                rng,
                self.max_query_len,
                options.num_negatives,
                options.full_negative_prob,
                options.separator,
            )
        grounded = torch.tensor([label in prompt.label_spans for label in positive_labels], dtype=torch.bool)
        tokens_positive = [[prompt.label_spans[label]] for label in positive_labels if label in prompt.label_spans]
        return prompt.caption, tokens_positive, grounded

    def _load_image(self, record: _Record) -> Image.Image | None:
        try:
            # No EXIF rotation: annotations refer to the stored pixels, and the official loader
            # (``pil_loader``: ``Image.open(f).convert("RGB")``) does not rotate either.
            return load_image(record.image_file, exif_transpose=False)
        except (ValueError, OSError) as error:
            if record.image_file not in self._reported_images:
                self._reported_images.add(record.image_file)
                logger.warning(
                    "%s: skipping image %s (id %s): %s", self.source, record.image_file, record.image_id, error
                )
            return None

    def _count_at_load(self, record: _Record, size: tuple[int, int]) -> None:
        """Warn (once per dataset) about box problems that the declared image size did not reveal."""
        if self._warned_at_load:
            return
        clipped, dropped = _count_box_problems(record.boxes, size)
        if clipped or dropped:
            self._warned_at_load = True
            declared = "no declared size" if record.declared_size is None else f"declared size {record.declared_size}"
            logger.warning(
                "%s: image %s (%s, decoded %s) has %d boxes clipped and %d dropped; later images like it "
                "are not reported",
                self.source,
                record.image_id,
                declared,
                size,
                clipped,
                dropped,
            )

    def _add_coco_records(self, images: Mapping[ImageId, _CocoImage]) -> None:
        """Records of a COCO-layout file's images, in ascending id order; those without a usable
        box left out unless ``keep_empty_images``. Then the box problems are reported."""
        for image_id in _sorted_ids(list(images)):
            image = images[image_id]
            if not self.options.keep_empty_images and not _has_usable_box(image.raw_sizes):
                continue
            xywh = torch.from_numpy(_box_array(image.boxes))
            self.records.append(
                _Record(
                    image_file=self.image_dir / image.file_name,
                    image_id=image_id,
                    declared_size=image.declared_size,
                    boxes=xywh_to_xyxy(xywh).numpy(),
                    labels=np.asarray(image.labels, dtype=np.int64),
                    caption=image.caption,
                    tokens_positive=image.spans if image.caption is not None else None,
                )
            )
        self._report_box_problems()

    def _report_box_problems(self) -> None:
        """Count boxes to clip or drop (with the declared image sizes) and warn once."""
        stats = self.box_stats
        for record in self.records:
            stats.num_boxes += len(record.boxes)
            if record.declared_size is not None:
                clipped, dropped = _count_box_problems(record.boxes, record.declared_size)
                stats.num_clipped += clipped
                stats.num_dropped += dropped
        if stats.num_clipped or stats.num_dropped or stats.num_unresolved:
            logger.warning(
                "%s: of %d boxes, %d reach outside their image (clipped), %d are empty or invalid (dropped), "
                "%d regions have a phrase not found in the caption (dropped)",
                self.source,
                stats.num_boxes,
                stats.num_clipped,
                stats.num_dropped,
                stats.num_unresolved,
            )


class DetectionDataset(_GroundingSource):
    """COCO-format detection annotations as grounding samples with class-name captions.

    The caption of an image holds category names (:mod:`glip.data.prompts`), joined by
    ``separator``. Labels are the official contiguous ids: 1..K in the order of the file's
    ``categories`` list. Crowd boxes are ignored; images without any box over 1 pixel in both sides
    are left out unless ``keep_empty_images`` (official ``has_valid_annotation``); images are in
    ascending id order.

    Args:
        annotation_file: COCO JSON with ``images`` (``id``, ``file_name``, optional ``height``,
            ``width``), ``annotations`` (``image_id``, ``category_id``, ``bbox`` xywh, optional
            ``iscrowd``) and ``categories`` (``id``, ``name``).
        image_dir: folder that ``file_name`` is relative to.
        tokenizer: the model's tokenizer (``glip.processing.load_tokenizer``).
        options: transforms, prompt sampling, query length, seed (:class:`DatasetOptions`).
        ignore_objects_from: another COCO file of the same images (matched by ``file_name``) that
            lists every object, e.g. a shape file beside a file of colour-shape pairs that leaves
            some pairs out. Its boxes that this file does not have (IoU < 0.9 with each of them) are
            objects this source does not name: anchors on them get no loss, instead of being
            taught as background for every name of the prompt.
        **settings: fields of :class:`DatasetOptions` to replace in ``options``, e.g.
            ``DetectionDataset(path, images, tokenizer, deterministic=True)``.
    """

    def __init__(
        self,
        annotation_file: str | Path,
        image_dir: str | Path,
        tokenizer: BertTokenizerFast,
        options: DatasetOptions | None = None,
        ignore_objects_from: str | Path | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(annotation_file, image_dir, tokenizer, _options(options, settings))
        path, options = self.source, self.options
        data = _read_json(path)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object with images, annotations and categories")
        categories = _field(data, "categories", str(path), list)
        contiguous: dict[int, int] = {}
        for index, category in enumerate(categories):
            where = f"{path}: categories[{index}]"
            category_id = _field(category, "id", where, int)
            name = _field(category, "name", where, str)
            if category_id in contiguous:
                raise ValueError(f"{where}: duplicate category id {category_id}")
            if not name.strip():
                raise ValueError(f"{where}: empty category name")
            contiguous[category_id] = len(contiguous) + 1
            self.category_names[contiguous[category_id]] = name
        if not contiguous:
            raise ValueError(f"{path}: 'categories' is empty")
        images = _parse_coco_images(path, data)
        for where, image, box, annotation in _coco_annotations(path, data, images):
            category_id = _field(annotation, "category_id", where, int)
            if category_id not in contiguous:
                raise ValueError(f"{where}: category_id {category_id} is not in 'categories'")
            image.raw_sizes.append((box[2], box[3]))
            if not annotation.get("iscrowd", 0):
                image.add(box, contiguous[category_id])
        self._add_coco_records(images)
        if ignore_objects_from is not None:
            self._add_ignored_objects(Path(ignore_objects_from))

    def _add_ignored_objects(self, path: Path) -> None:
        """Give each record the boxes of ``path`` (same images, by file name) that it lacks."""
        data = _read_json(path)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a COCO JSON object with images and annotations")
        others = _parse_coco_images(path, data)
        for _, image, box, annotation in _coco_annotations(path, data, others):
            if not annotation.get("iscrowd", 0):
                image.add(box, 0)
        by_name = {image.file_name: image for image in others.values()}
        added = 0
        for record in self.records:
            other = by_name.get(str(record.image_file.relative_to(self.image_dir)))
            if other is None or not other.boxes:
                continue
            candidates = xywh_to_xyxy(torch.from_numpy(_box_array(other.boxes)))
            named = torch.from_numpy(record.boxes)
            if named.shape[0]:
                unnamed = box_iou_legacy(candidates, named).amax(dim=1) < IGNORE_MATCH_IOU
                candidates = candidates[unnamed]
            if candidates.shape[0]:
                record.ignore_boxes = candidates.numpy()
                added += int(candidates.shape[0])
        logger.info("%s: %d objects of %s that it does not name get no loss", self.source, added, path)


@dataclass
class _CocoImage:
    """One image entry of a COCO-layout file and its annotations, gathered one by one.

    ``boxes`` (xywh), ``labels`` and ``spans`` leave crowd annotations out; ``raw_sizes`` (the
    ``(w, h)`` of every box, crowd ones included) decide whether the image is kept (official
    ``has_valid_annotation``).
    """

    file_name: str
    declared_size: tuple[int, int] | None
    caption: str | None = None
    boxes: list[list[float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    spans: list[list[Span]] = field(default_factory=list)
    raw_sizes: list[tuple[float, float]] = field(default_factory=list)

    def add(self, box: list[float], label: int, spans: list[Span] | None = None) -> None:
        self.boxes.append(box)
        self.labels.append(label)
        if spans is not None:
            self.spans.append(spans)


def _parse_coco_images(path: Path, data: Mapping[str, Any]) -> dict[ImageId, _CocoImage]:
    """The ``images`` of a COCO-layout file by id (file name and declared ``(h, w)`` or None)."""
    images: dict[ImageId, _CocoImage] = {}
    for index, image in enumerate(_field(data, "images", str(path), list)):
        where = f"{path}: images[{index}]"
        image_id = _field(image, "id", where, (int, str))
        where = f"{where} (id {image_id})"
        if image_id in images:
            raise ValueError(f"{where}: duplicate image id")
        images[image_id] = _CocoImage(_field(image, "file_name", where, str), _declared_size(image, where))
    return images


def _coco_annotations(
    path: Path, data: Mapping[str, Any], images: Mapping[ImageId, _CocoImage]
) -> Iterator[tuple[str, _CocoImage, list[float], Mapping[str, Any]]]:
    """``(where, its image, checked xywh box, annotation)`` of every annotation of the file."""
    for index, annotation in enumerate(_field(data, "annotations", str(path), list)):
        where = entry_name(path, "annotations", index, annotation)
        image_id = _field(annotation, "image_id", where, (int, str))
        if image_id not in images:
            raise ValueError(f"{where}: image_id {image_id!r} is not in 'images'")
        yield where, images[image_id], checked_bbox(annotation, where), annotation


# --------------------------------------------------------------------------------------------------
# MDETR grounding
# --------------------------------------------------------------------------------------------------


class GroundingDataset(_GroundingSource):
    """MDETR-format grounding annotations (Flickr30k entities, GoldG "mixed").

    Each image entry carries its ``caption``; each annotation a ``bbox`` (xywh) and
    ``tokens_positive`` (or ``tokens``): the ``[begin, end]`` character spans of its phrase. The
    caption is used as is. Images are in ascending id order; images without a usable box are left out
    unless ``keep_empty_images`` (official ``ModulatedDataset``).

    Args:
        annotation_file: the JSON file.
        image_dir: folder that ``file_name`` is relative to.
        tokenizer: the model's tokenizer.
        options, settings: see :class:`DetectionDataset` (the prompt fields do not apply: the
            caption is the file's).
    """

    def __init__(
        self,
        annotation_file: str | Path,
        image_dir: str | Path,
        tokenizer: BertTokenizerFast,
        options: DatasetOptions | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(annotation_file, image_dir, tokenizer, _options(options, settings))
        path, options = self.source, self.options
        data = _read_json(path)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object with images and annotations")
        images = _parse_coco_images(path, data)
        for index, entry in enumerate(data["images"]):
            where = f"{path}: images[{index}] (id {entry['id']})"
            images[entry["id"]].caption = _field(entry, "caption", where, str)
        for where, image, box, annotation in _coco_annotations(path, data, images):
            image.raw_sizes.append((box[2], box[3]))
            if annotation.get("iscrowd", 0):
                continue
            # Official ``ConvertCocoPolysToMask`` reads "tokens" when present, else "tokens_positive".
            key = "tokens" if "tokens" in annotation else "tokens_positive"
            if key not in annotation:
                raise ValueError(f"{where}: missing field 'tokens_positive'")
            assert image.caption is not None
            image.add(box, int(annotation.get("category_id", 1)), _spans(annotation[key], image.caption, where))
        self._add_coco_records(images)


# --------------------------------------------------------------------------------------------------
# ODVG
# --------------------------------------------------------------------------------------------------


class ODVGDataset(_GroundingSource):
    """ODVG jsonl annotations (Open-GroundingDino format), detection and grounding lines alike.

    A line with ``"detection"`` becomes a class-name caption as in :class:`DetectionDataset`;
    a line with ``"grounding"`` keeps its caption, each region grounded to its ``tokens_positive``
    spans or, when absent, to the first occurrence of its ``phrase`` in the caption. A line with both
    is read as detection when ``label_map`` is given (Open-GroundingDino's rule), else as grounding.
    Boxes are ``[x1, y1, x2, y2]`` with exclusive ends (see the module docstring). Detection labels
    keep the file's values; grounding regions get label 1.

    Args:
        annotation_file: the jsonl file (``filename``, ``height``, ``width`` and one of the two fields).
        image_dir: folder that ``filename`` is relative to.
        tokenizer: the model's tokenizer.
        label_map: ``{label: category name}`` (dict or JSON file, keys may be strings); default:
            the ``category`` names found in the detection lines. All of them are candidate negatives.
        options, settings: see :class:`DetectionDataset`.
    """

    def __init__(
        self,
        annotation_file: str | Path,
        image_dir: str | Path,
        tokenizer: BertTokenizerFast,
        options: DatasetOptions | None = None,
        *,
        label_map: str | Path | Mapping[Any, str] | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(annotation_file, image_dir, tokenizer, _options(options, settings))
        path, options = self.source, self.options
        names = _read_label_map(label_map) if label_map is not None else None
        found_names: dict[int, str] = {}
        for record_index, (line_number, line) in enumerate(_read_jsonl(path)):
            where = f"{path}: line {line_number}"
            file_name = _field(line, "filename", where, str)
            image_id = line.get("id", line.get("image_id", record_index))
            declared_size = _declared_size(line, where)
            header = _Record(
                self.image_dir / file_name, image_id, declared_size, _box_array([]), np.zeros(0, np.int64)
            )
            as_detection = "detection" in line and (names is not None or "grounding" not in line)
            if as_detection:
                record, raw_sizes = self._detection_record(header, line, where, names, found_names)
            elif "grounding" in line:
                record, raw_sizes = self._grounding_record(header, line, where)
            else:
                raise ValueError(f"{where}: missing field 'detection' or 'grounding'")
            if options.keep_empty_images or _has_usable_box(raw_sizes):
                self.records.append(record)
        if names is not None:
            self.category_names = dict(sorted(names.items()))
        else:
            self.category_names = dict(sorted(found_names.items()))
        if any(record.caption is None for record in self.records) and not self.category_names:
            raise ValueError(f"{path}: detection lines but no category names")
        self._report_box_problems()

    def _detection_record(
        self,
        header: _Record,
        line: Mapping[str, Any],
        where: str,
        names: Mapping[int, str] | None,
        found_names: dict[int, str],
    ) -> tuple[_Record, list[tuple[float, float]]]:
        """``header`` with the line's instances, and the raw (w, h) of each box."""
        detection = _field(line, "detection", where, dict)
        boxes, labels, raw_sizes = [], [], []
        for index, instance in enumerate(_field(detection, "instances", f"{where}: detection", list)):
            instance_where = f"{where}: detection.instances[{index}]"
            box = checked_bbox(instance, instance_where, "xyxy")
            label = _field(instance, "label", instance_where, int)
            if names is not None:
                if label not in names:
                    raise ValueError(f"{instance_where}: label {label} is not in the label map")
            else:
                name = _field(instance, "category", instance_where, str)
                previous = found_names.setdefault(label, name)
                if previous != name:
                    raise ValueError(f"{instance_where}: label {label} is named {name!r} here and {previous!r} before")
            boxes.append(_exclusive_to_inclusive(box))
            labels.append(label)
            raw_sizes.append((box[2] - box[0], box[3] - box[1]))
        record = dataclasses.replace(header, boxes=_box_array(boxes), labels=np.asarray(labels, dtype=np.int64))
        return record, raw_sizes

    def _grounding_record(
        self, header: _Record, line: Mapping[str, Any], where: str
    ) -> tuple[_Record, list[tuple[float, float]]]:
        """``header`` with the line's caption and regions, and the raw (w, h) of each box."""
        grounding = _field(line, "grounding", where, dict)
        caption = _field(grounding, "caption", f"{where}: grounding", str)
        boxes, spans, raw_sizes = [], [], []
        for index, region in enumerate(_field(grounding, "regions", f"{where}: grounding", list)):
            region_where = f"{where}: grounding.regions[{index}]"
            box = checked_bbox(region, region_where, "xyxy")
            if "tokens_positive" in region:
                region_spans = _spans(region["tokens_positive"], caption, region_where)
            else:
                phrase = _field(region, "phrase", region_where, str)
                region_spans = _locate_phrase(caption, phrase)
                if not region_spans:
                    self.box_stats.num_unresolved += 1
                    continue
            boxes.append(_exclusive_to_inclusive(box))
            spans.append(region_spans)
            raw_sizes.append((box[2] - box[0], box[3] - box[1]))
        record = dataclasses.replace(
            header,
            boxes=_box_array(boxes),
            labels=np.ones(len(boxes), dtype=np.int64),
            caption=caption,
            tokens_positive=spans,
        )
        return record, raw_sizes


def _exclusive_to_inclusive(box: list[float]) -> list[float]:
    return [box[0], box[1], box[2] - quirks.TO_REMOVE, box[3] - quirks.TO_REMOVE]


def _locate_phrase(caption: str, phrase: str) -> list[Span]:
    """Span of the first occurrence of ``phrase`` (exact, then ignoring case); empty if absent."""
    phrase = phrase.strip()
    if not phrase:
        return []
    begin = caption.find(phrase)
    if begin < 0:
        begin = caption.lower().find(phrase.lower())
    return [(begin, begin + len(phrase))] if begin >= 0 else []


def _read_label_map(label_map: str | Path | Mapping[Any, str]) -> dict[int, str]:
    where = "label_map"
    if isinstance(label_map, (str, Path)):
        where = str(label_map)
        label_map = _read_json(Path(label_map))
        if not isinstance(label_map, dict):
            raise ValueError(f"{where}: expected a JSON object {{label: name}}")
    names = {}
    for key, name in label_map.items():
        try:
            label = int(key)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: key {key!r} is not an integer label") from error
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{where}: label {key!r} must map to a non-empty name, got {name!r}")
        names[label] = name
    if not names:
        raise ValueError(f"{where}: the label map is empty")
    return names


# --------------------------------------------------------------------------------------------------
# Mixing sources
# --------------------------------------------------------------------------------------------------


class MixedDataset(Dataset):
    """Several datasets drawn with per-source weights.

    Each epoch has ``num_samples`` positions; position i comes from source s with probability
    ``weights[s] / sum(weights)``. Within a source, images are taken in a random permutation
    (cycled when a source is drawn more often than it has images), so every image of a source is
    seen before any repeats. The plan of an epoch depends only on ``(seed, epoch)``; the random source
    of each sample only on ``(seed, epoch, position)``.

    Args:
        datasets: the sources (any map-style dataset; ours get their random source from here).
        weights: one non-negative weight per source.
        num_samples: positions per epoch; default the total size of the sources.
        seed: seed of the plan and of the per-sample random sources.
    """

    def __init__(
        self,
        datasets: Sequence[Dataset],
        weights: Sequence[float],
        *,
        num_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        if len(datasets) == 0:
            raise ValueError("MixedDataset needs at least one dataset")
        if len(weights) != len(datasets):
            raise ValueError(f"{len(weights)} weights for {len(datasets)} datasets")
        weights = [float(weight) for weight in weights]
        if any(not math.isfinite(weight) or weight < 0 for weight in weights) or sum(weights) <= 0:
            raise ValueError(f"weights must be finite, non-negative and not all zero, got {weights}")
        sizes = [len(dataset) for dataset in datasets]
        for index, (size, weight) in enumerate(zip(sizes, weights)):
            if size == 0 and weight > 0:
                raise ValueError(f"datasets[{index}] is empty but has weight {weight}")
        self.datasets = list(datasets)
        self.weights = weights
        self.num_samples = int(num_samples) if num_samples is not None else sum(sizes)
        if self.num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {self.num_samples}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.seed = seed
        self.epoch = 0
        self._plan: tuple[int, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Select the plan of ``epoch`` (and pass the epoch on to the sources)."""
        self.epoch = int(epoch)
        for dataset in self.datasets:
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)

    def locate(self, index: int) -> tuple[int, int]:
        """``(source index, index within that source)`` of position ``index`` in the current epoch."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for MixedDataset of length {self.num_samples}")
        sources, local = self._epoch_plan()
        return int(sources[index]), int(local[index])

    def __getitem__(self, index: int) -> Any:
        source, local = self.locate(index)
        dataset = self.datasets[source]
        if isinstance(dataset, _GroundingSource):
            return dataset.get(local, random.Random(f"glip-mixed:{self.seed}:{self.epoch}:{index}"))
        return dataset[local]

    def _epoch_plan(self) -> tuple[np.ndarray, np.ndarray]:
        if self._plan is not None and self._plan[0] == self.epoch:
            return self._plan[1], self._plan[2]
        generator = np.random.Generator(np.random.PCG64([self.seed, self.epoch]))
        probabilities = np.asarray(self.weights) / sum(self.weights)
        sources = generator.choice(len(self.datasets), size=self.num_samples, p=probabilities)
        local = np.zeros(self.num_samples, dtype=np.int64)
        for source, dataset in enumerate(self.datasets):
            positions = np.flatnonzero(sources == source)
            if len(positions) == 0:
                continue
            size = len(dataset)
            rounds = -(-len(positions) // size)  # ceil
            order = np.concatenate([generator.permutation(size) for _ in range(rounds)])
            local[positions] = order[: len(positions)]
        self._plan = (self.epoch, sources, local)
        return sources, local

    def source_counts(self) -> list[int]:
        """Positions per source in the current epoch."""
        sources, _ = self._epoch_plan()
        return np.bincount(sources, minlength=len(self.datasets)).tolist()
