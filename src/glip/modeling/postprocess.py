"""Detections from head outputs (official ``rpn/inference.py:ATSSPostProcessor``, quirk 12).

Per level: token probabilities are aggregated into one score per phrase (label), locations whose
phrase score exceeds a threshold become candidates, the best ``pre_nms_top_n`` by
``score * centerness`` are decoded and clipped. Over all levels: class-aware NMS with the legacy
``+1`` IoU, then the ``detections_per_image`` best are kept and boxes are rescaled to the original
image size (``BoxList.resize`` in the demo).

Two differences from the official post-processor, both off the official reference outputs:

* Boxes that clipping leaves empty (``x2 <= x1`` or ``y2 <= y1``; a box wholly outside a tiny
  image) are dropped. The official code only calls ``remove_small_boxes(min_size=0)``, which
  with its ``+1`` widths keeps them (``clip_to_image(remove_empty=True)`` is used for training
  targets only); none of the reference detections is such a box (tests/parity).
* ``class_agnostic_nms`` (off by default) lets boxes of different labels suppress each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor

from glip import quirks
from glip.config import shorten
from glip.modeling.box_coder import BoxCoder


@dataclass
class Detections:
    """Detections (or candidates) of one image; the post-processor returns them by descending score.

    Attributes:
        boxes: ``[N, 4]`` float32 xyxy boxes in pixels, legacy inclusive convention (a box is
            ``x2 - x1 + 1`` pixels wide).
        scores: ``[N]`` float32 in [0, 1].
        labels: ``[N]`` int64 label ids (1-based, those of the prompt's phrases).
        phrases: N phrase strings, the phrase of each label.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    phrases: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def __repr__(self) -> str:
        """A short summary: the count and the best few (phrase or label, score)."""
        shown = 5
        names = self.phrases or [str(label) for label in self.labels.tolist()]
        order = torch.argsort(self.scores, descending=True, stable=True)[:shown].tolist()
        # A phrase may be a whole caption span: each is cut to 40 characters.
        best = ", ".join(f"{shorten(names[index], 40)} {float(self.scores[index]):.2f}" for index in order)
        more = f", ... {len(self) - shown} more" if len(self) > shown else ""
        return f"Detections({len(self)}: [{best}{more}])"

    def plot(self, image: Any) -> Any:
        """The image (path, PIL image or RGB array) with boxes, phrases and scores drawn; a PIL image."""
        from glip.processing import load_image  # drawing imports this module: imported on use
        from glip.visualize import draw_detections

        return draw_detections(load_image(image), self)

    def save(self, path: str | Path, image: Any, **options: Any) -> Path:
        """Write :meth:`plot` of ``image`` to ``path`` (format from the suffix), atomically; ``options``
        go to PIL's ``Image.save`` (e.g. ``quality=92`` for JPEG)."""
        from PIL import Image

        from glip.files import write_atomic

        path = Path(path)
        image_format = Image.registered_extensions().get(path.suffix.lower())
        if image_format is None:
            raise ValueError(f"cannot save detections to {path}: unknown image suffix {path.suffix!r}")
        picture = self.plot(image)
        write_atomic(path, lambda temporary: picture.save(temporary, format=image_format, **options))
        return path

    def __getitem__(self, index: Tensor | slice) -> Detections:
        """Select detections with a boolean mask, an index tensor or a slice."""
        if isinstance(index, slice):
            positions = list(range(len(self)))[index]
        else:
            index = torch.as_tensor(index)
            positions = (index.nonzero().flatten() if index.dtype == torch.bool else index.flatten()).tolist()
        return Detections(
            self.boxes[index],
            self.scores[index],
            self.labels[index],
            [self.phrases[position] for position in positions] if self.phrases else [],
        )

    def to(self, device: torch.device | str) -> Detections:
        return Detections(self.boxes.to(device), self.scores.to(device), self.labels.to(device), list(self.phrases))

    def above(self, threshold: float) -> Detections:
        """Detections with a score strictly above ``threshold`` (the demo's confidence filter)."""
        return self[self.scores > threshold]

    def to_dict(self) -> dict[str, Any]:
        """Plain Python lists (JSON-serialisable)."""
        return {
            "boxes": self.boxes.tolist(),
            "scores": self.scores.tolist(),
            "labels": self.labels.tolist(),
            "phrases": list(self.phrases),
        }

    def to_coco(self, image_id: int, label_to_category_id: Mapping[int, int] | None = None) -> list[dict[str, Any]]:
        """COCO result records ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``.

        Widths and heights use the legacy ``+1`` (``x2 - x1 + 1``) as the official COCO evaluation
        does (``BoxList.convert("xywh")`` in ``coco_eval.py``).

        Args:
            image_id: COCO image id.
            label_to_category_id: maps label ids to category ids; identity when None.
        """
        boxes = self.boxes.detach().cpu()
        widths = boxes[:, 2] - boxes[:, 0] + quirks.TO_REMOVE
        heights = boxes[:, 3] - boxes[:, 1] + quirks.TO_REMOVE
        xywh = torch.stack((boxes[:, 0], boxes[:, 1], widths, heights), dim=1).tolist()
        records = []
        for box, score, label in zip(xywh, self.scores.tolist(), self.labels.tolist()):
            category = label if label_to_category_id is None else label_to_category_id[label]
            records.append({"image_id": image_id, "category_id": int(category), "bbox": box, "score": float(score)})
        return records

    @classmethod
    def from_coco(cls, records: Sequence[Mapping[str, Any]], image_id: int | None = None,
                  categories: Mapping[int, str] | None = None) -> Detections:
        """One image's detections from COCO result records, the inverse of :meth:`to_coco`
        (see :func:`glip.interop.from_coco`; ``categories``: category id -> phrase)."""
        from glip.interop import from_coco

        return from_coco(records, image_id, categories)

    def to_supervision(self) -> Any:
        """``supervision.Detections`` (``glip[supervision]``): continuous ``xyxy`` (``x2 + 1``),
        ``class_id`` = label - 1, ``confidence``, ``data["phrase"]`` (see :mod:`glip.interop`)."""
        from glip.interop import to_supervision

        return to_supervision(self)

    @classmethod
    def from_supervision(cls, detections: Any, classes: Sequence[str] | None = None) -> Detections:
        """The inverse of :meth:`to_supervision`; ``classes[class_id]`` names the phrases when given."""
        from glip.interop import from_supervision

        return from_supervision(detections, classes)


# --------------------------------------------------------------------------------------------------
# NMS with the legacy +1 IoU
# --------------------------------------------------------------------------------------------------


def box_iou_legacy(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU with inclusive pixel ends, in the operation order of the official CUDA kernel
    (``csrc/cuda/ml_nms.cu:devIoU``), so that values match it bit for bit.

    Args:
        boxes1: ``[N, 4]`` xyxy.
        boxes2: ``[M, 4]`` xyxy.

    Returns:
        ``[N, M]`` IoU.
    """
    x1_a, y1_a, x2_a, y2_a = (coordinate.contiguous()[:, None] for coordinate in boxes1.unbind(1))  # [N, 1] each
    x1_b, y1_b, x2_b, y2_b = (coordinate.contiguous()[None, :] for coordinate in boxes2.unbind(1))  # [1, M] each
    # In-place steps on the [N, M] temporaries: NMS calls this on thousands of boxes.
    width = torch.minimum(x2_a, x2_b).sub_(torch.maximum(x1_a, x1_b)).add_(quirks.TO_REMOVE).clamp_(min=0)
    height = torch.minimum(y2_a, y2_b).sub_(torch.maximum(y1_a, y1_b)).add_(quirks.TO_REMOVE).clamp_(min=0)
    intersection = width.mul_(height)
    area_a = (x2_a - x1_a + quirks.TO_REMOVE) * (y2_a - y1_a + quirks.TO_REMOVE)
    area_b = (x2_b - x1_b + quirks.TO_REMOVE) * (y2_b - y1_b + quirks.TO_REMOVE)
    union = (area_a + area_b).sub_(intersection)
    return intersection.div_(union)


def legacy_nms(
    boxes: Tensor,
    scores: Tensor,
    iou_threshold: float,
    labels: Tensor | None = None,
) -> Tensor:
    """Greedy (class-aware) NMS with the semantics of the official ``ml_nms``.

    Boxes are visited by descending score; a box is suppressed iff a kept box of the same label
    has IoU strictly greater than ``iou_threshold``, IoU computed with ``+1`` widths/heights. This
    is ``torchvision.ops.batched_nms`` on boxes whose ``x2, y2`` are moved by ``+1`` (the same
    IoU; ``tests/modeling/test_postprocess.py`` checks kept sets and order against a literal
    transcription of the official loop on random box sets, ties included), 10-50x faster than a
    greedy loop of our own.

    Args:
        boxes: ``[N, 4]`` xyxy, legacy inclusive convention.
        scores: ``[N]``.
        iou_threshold: suppression threshold.
        labels: ``[N]`` integer labels; boxes of different labels never suppress each other. None:
            all boxes compete.

    Returns:
        ``[K]`` int64 indices of the kept boxes, by descending score (ties: ascending index).
    """
    # [N, 4]: (x1, y1, x2 + 1, y2 + 1), so that torchvision's x2 - x1 is the legacy width.
    shifted = torch.cat((boxes[:, :2], boxes[:, 2:] + quirks.TO_REMOVE), dim=1).float()
    if labels is None:
        kept = torchvision.ops.nms(shifted, scores.float(), iou_threshold)
    else:
        kept = torchvision.ops.batched_nms(shifted, scores.float(), labels, iou_threshold)
    kept = torch.sort(kept).values
    return kept[torch.argsort(scores[kept], descending=True, stable=True)]


# --------------------------------------------------------------------------------------------------
# Post-processor
# --------------------------------------------------------------------------------------------------


@dataclass
class PhraseTokens:
    """Token positions of each phrase of one prompt, padded to the longest phrase.

    Attributes:
        index: ``[K, M]`` int64 token positions (0 where padded).
        valid: ``[K, M]`` bool, False where padded.
        counts: ``[K]`` tokens per phrase (0 for a phrase that no token covers).
        label_ids: ``[K]`` int64 label id of each phrase.
        phrases: K strings.
    """

    index: Tensor
    valid: Tensor
    counts: Tensor
    label_ids: Tensor
    phrases: list[str]

    @classmethod
    def from_positive_map(
        cls,
        positive_map: Tensor,
        label_ids: Sequence[int] | None = None,
        phrases: Sequence[str] | None = None,
        device: torch.device | str | None = None,
    ) -> PhraseTokens:
        """Token lists from the non-zero entries of each row (official ``positive_map_label_to_token``).

        Args:
            positive_map: ``[K, T]`` phrase-to-token map.
            label_ids: label id per row; default 1..K (the official ``plus=1``).
            phrases: phrase per row; default "label <id>".
            device: where the tables live; default that of ``positive_map``.
        """
        if positive_map.dim() != 2:
            raise ValueError(f"positive_map must be [K, T], got shape {tuple(positive_map.shape)}")
        device = positive_map.device if device is None else torch.device(device)
        num_phrases = positive_map.shape[0]
        token_lists = [torch.nonzero(row, as_tuple=True)[0] for row in positive_map.detach().cpu()]
        longest = max([len(tokens) for tokens in token_lists] + [1])
        index = torch.zeros((num_phrases, longest), dtype=torch.int64)
        valid = torch.zeros((num_phrases, longest), dtype=torch.bool)
        for row, tokens in enumerate(token_lists):
            index[row, : len(tokens)] = tokens
            valid[row, : len(tokens)] = True
        if label_ids is None:
            label_ids = range(1, num_phrases + 1)
        label_tensor = torch.as_tensor(list(label_ids), dtype=torch.int64)
        if label_tensor.shape != (num_phrases,):
            raise ValueError(f"{label_tensor.numel()} label_ids for {num_phrases} positive_map rows")
        if phrases is None:
            phrases = [f"label {label}" for label in label_tensor.tolist()]
        if len(phrases) != num_phrases:
            raise ValueError(f"{len(phrases)} phrases for {num_phrases} positive_map rows")
        return cls(index.to(device), valid.to(device), valid.sum(1).to(device), label_tensor.to(device), list(phrases))


def _per_image(value: Any, batch_size: int, name: str, is_single: bool) -> list[Any]:
    if is_single:
        return [value] * batch_size
    if len(value) != batch_size:
        raise ValueError(f"{name} has {len(value)} entries for a batch of {batch_size} images")
    return list(value)


class GroundingPostProcessor:
    """Turns grounding-head outputs into per-image :class:`Detections`.

    Args:
        score_threshold: a (location, phrase) pair is a candidate iff its phrase score (before
            centerness) exceeds this (official ATSS.INFERENCE_TH).
        pre_nms_top_n: candidates kept per level and image, by ``score * sigmoid(centerness)``.
        nms_threshold: IoU above which a lower-scored box of the same label is suppressed.
        detections_per_image: after NMS, keep the scores >= the n-th largest (ties kept); 0 = all.
        score_aggregation: "MEAN" or "MAX" of the token probabilities of a phrase.
        min_box_size: boxes narrower or lower than this (``+1`` convention) are dropped.
        num_label_columns: the official post-processor scores phrases into NUM_CLASSES - 1 = 80
            columns, so a prompt may have at most that many phrases; a prompt with more raises.
            None lifts the limit (larger prompts are then handled normally).
        box_coder: decoder of the regression deltas.
        class_agnostic_nms: NMS over all boxes whatever their label (not official), so that an
            object gets one label.
    """

    def __init__(
        self,
        score_threshold: float = 0.05,
        pre_nms_top_n: int = 1000,
        nms_threshold: float = 0.6,
        detections_per_image: int = 100,
        score_aggregation: str = "MEAN",
        min_box_size: float = 0.0,
        num_label_columns: int | None = 80,
        box_coder: BoxCoder | None = None,
        class_agnostic_nms: bool = False,
    ) -> None:
        if score_aggregation not in ("MEAN", "MAX"):
            raise ValueError(f"score_aggregation must be 'MEAN' or 'MAX', got {score_aggregation!r}")
        self.score_threshold = score_threshold
        self.pre_nms_top_n = pre_nms_top_n
        self.nms_threshold = nms_threshold
        self.detections_per_image = detections_per_image
        self.score_aggregation = score_aggregation
        self.min_box_size = min_box_size
        self.num_label_columns = num_label_columns
        self.box_coder = box_coder if box_coder is not None else BoxCoder()
        self.class_agnostic_nms = class_agnostic_nms

    @classmethod
    def from_config(cls, config, num_label_columns: int | None = 80) -> GroundingPostProcessor:
        """From a :class:`glip.config.PostProcessConfig` (``num_label_columns``: HeadConfig.num_classes)."""
        return cls(
            score_threshold=config.score_threshold,
            pre_nms_top_n=config.pre_nms_top_n,
            nms_threshold=config.nms_threshold,
            detections_per_image=config.detections_per_image,
            score_aggregation=config.score_aggregation,
            num_label_columns=num_label_columns,
            class_agnostic_nms=config.class_agnostic_nms,
        )

    def phrase_scores(self, dot_product_logits: Tensor, tokens: PhraseTokens) -> Tensor:
        """Phrase probabilities from token logits (official ``convert_grounding_to_od_logits``).

        Args:
            dot_product_logits: ``[B, HW, T]`` logits.
            tokens: token positions of the K phrases.

        Returns:
            ``[B, HW, K]``: mean (or max) of the sigmoid over each phrase's tokens; 0 for a phrase
            without tokens (the official mean of nothing is NaN, which is never a candidate either).
        """
        batch_size, num_locations, _ = dot_product_logits.shape
        num_phrases, longest = tokens.index.shape
        # Gather before the (elementwise) sigmoid: usually far fewer phrase tokens than T.
        gathered = dot_product_logits[:, :, tokens.index.reshape(-1)].float().sigmoid()  # [B, HW, K*M]
        gathered = gathered.reshape(batch_size, num_locations, num_phrases, longest)  # -> [B, HW, K, M]
        has_tokens = tokens.counts > 0
        if self.score_aggregation == "MEAN":
            summed = gathered.masked_fill(~tokens.valid, 0.0).sum(-1)
            scores = summed / tokens.counts.clamp(min=1).to(summed.dtype)
        else:
            scores = gathered.masked_fill(~tokens.valid, float("-inf")).amax(-1)
        return scores.masked_fill(~has_tokens, 0.0)

    def select_candidates(
        self,
        box_regression: Sequence[Tensor],
        centerness: Sequence[Tensor],
        dot_product_logits: Sequence[Tensor],
        anchors: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        positive_map: Tensor | Sequence[Tensor],
        label_ids: Sequence[int] | Sequence[Sequence[int]] | None = None,
        phrases: Sequence[str] | Sequence[Sequence[str]] | None = None,
    ) -> list[Detections]:
        """Per-level thresholding, top-k, decoding and clipping; levels concatenated, no NMS.

        Args:
            box_regression: per level ``[B, 4, H_l, W_l]`` deltas.
            centerness: per level ``[B, 1, H_l, W_l]`` logits.
            dot_product_logits: per level ``[B, H_l*W_l, T]`` logits (T may be any length covering
                the phrases' tokens).
            anchors: per level ``[H_l*W_l, 4]`` xyxy anchors.
            image_sizes: ``(h, w)`` of each image before padding; boxes are clipped to it.
            positive_map: ``[K, T']`` phrase-to-token map shared by the batch, or one per image.
            label_ids: label id of each phrase (default 1..K); one list per image if
                ``positive_map`` is a list.
            phrases: phrase strings, same layout as ``label_ids`` (default "label <id>").

        Returns:
            Per image, the candidates in resized-image coordinates (unsorted).
        """
        batch_size = box_regression[0].shape[0]
        device = box_regression[0].device
        if not (len(box_regression) == len(centerness) == len(dot_product_logits) == len(anchors)):
            raise ValueError("box_regression, centerness, dot_product_logits and anchors need one entry per level")
        if len(image_sizes) != batch_size:
            raise ValueError(f"{len(image_sizes)} image_sizes for a batch of {batch_size}")
        shared = isinstance(positive_map, Tensor)
        maps = _per_image(positive_map, batch_size, "positive_map", shared)
        label_lists = _per_image(label_ids, batch_size, "label_ids", shared or label_ids is None)
        phrase_lists = _per_image(phrases, batch_size, "phrases", shared or phrases is None)
        # One token table per distinct prompt: a shared map is scored for the whole batch at once.
        prompt_tokens = [
            PhraseTokens.from_positive_map(maps[image], label_lists[image], phrase_lists[image], device)
            for image in range(1 if shared else batch_size)
        ]
        num_tokens = dot_product_logits[0].shape[-1]
        for tokens in prompt_tokens:
            num_phrases = tokens.index.shape[0]
            if self.num_label_columns is not None and num_phrases > self.num_label_columns:
                raise ValueError(
                    f"prompt has {num_phrases} phrases but the post-processor keeps {self.num_label_columns} "
                    "score columns (official NUM_CLASSES - 1); split the prompt or set num_label_columns=None"
                )
            if bool((tokens.index[tokens.valid] >= num_tokens).any()):
                raise ValueError(f"positive_map points at tokens beyond the {num_tokens} logits per location")

        per_image: list[list[tuple[Tensor, Tensor, Tensor]]] = [[] for _ in range(batch_size)]
        for level_regression, level_centerness, level_logits, level_anchors in zip(
            box_regression, centerness, dot_product_logits, anchors
        ):
            num_locations = level_logits.shape[1]
            # [B, 4, H, W] -> [B, HW, 4]; [B, 1, H, W] -> [B, HW]
            # Decoding and scoring run in float32 even when the network ran in half precision.
            level_regression = level_regression.float().reshape(batch_size, 4, num_locations).permute(0, 2, 1)
            level_centerness = level_centerness.float().reshape(batch_size, num_locations).sigmoid()
            if shared:
                batch_scores = self.phrase_scores(level_logits, prompt_tokens[0])
                level_scores = [batch_scores[image] for image in range(batch_size)]
            else:
                level_scores = [
                    self.phrase_scores(level_logits[image : image + 1], prompt_tokens[image])[0]
                    for image in range(batch_size)
                ]
            for image in range(batch_size):
                tokens = prompt_tokens[0] if shared else prompt_tokens[image]
                scores = level_scores[image]  # [HW, K]
                is_candidate = scores > self.score_threshold
                locations, columns = is_candidate.nonzero(as_tuple=True)
                ranking = (scores * level_centerness[image][:, None])[locations, columns]
                if ranking.shape[0] > self.pre_nms_top_n:
                    ranking, top = ranking.topk(self.pre_nms_top_n, sorted=False)
                    locations, columns = locations[top], columns[top]
                boxes = self.box_coder.decode(level_regression[image][locations], level_anchors[locations])
                boxes = _clip_boxes(boxes, image_sizes[image])
                sides_ok = _box_sides(boxes, self.min_box_size) & _not_empty(boxes)
                labels = tokens.label_ids[columns]
                per_image[image].append((boxes[sides_ok], ranking.sqrt()[sides_ok], labels[sides_ok]))

        candidates = []
        for image in range(batch_size):
            tokens = prompt_tokens[0] if shared else prompt_tokens[image]
            boxes, scores, labels = (torch.cat(parts) for parts in zip(*per_image[image]))
            candidates.append(Detections(boxes, scores, labels, _phrases_of(labels, tokens)))
        return candidates

    def select_detections(self, candidates: Detections) -> Detections:
        """Class-aware (or class-agnostic) NMS, then the ``detections_per_image`` best (ties at the
        cut kept), by score."""
        labels = None if self.class_agnostic_nms else candidates.labels
        keep = legacy_nms(candidates.boxes, candidates.scores, self.nms_threshold, labels)
        kept = candidates[keep]
        limit = self.detections_per_image
        if limit > 0 and len(kept) > limit:
            # kthvalue as the official code: every score equal to the limit-th largest stays.
            cut = torch.kthvalue(kept.scores.float(), len(kept) - limit + 1).values
            kept = kept[kept.scores >= cut]
        return kept

    def __call__(
        self,
        box_regression: Sequence[Tensor],
        centerness: Sequence[Tensor],
        dot_product_logits: Sequence[Tensor],
        anchors: Sequence[Tensor],
        image_sizes: Sequence[tuple[int, int]],
        positive_map: Tensor | Sequence[Tensor],
        label_ids: Sequence[int] | Sequence[Sequence[int]] | None = None,
        phrases: Sequence[str] | Sequence[Sequence[str]] | None = None,
        original_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[Detections]:
        """Detections per image (arguments as :meth:`select_candidates`).

        Args:
            original_sizes: ``(H0, W0)`` per image; boxes are rescaled from ``image_sizes`` to it
                (x by W0/w, y by H0/h). None keeps resized-image coordinates.

        Returns:
            Per image, :class:`Detections` sorted by descending score.
        """
        candidates = self.select_candidates(
            box_regression, centerness, dot_product_logits, anchors, image_sizes, positive_map, label_ids, phrases
        )
        results = [self.select_detections(image_candidates) for image_candidates in candidates]
        if original_sizes is not None:
            if len(original_sizes) != len(results):
                raise ValueError(f"{len(original_sizes)} original_sizes for a batch of {len(results)}")
            results = [
                rescale_detections(result, size, original_size)
                for result, size, original_size in zip(results, image_sizes, original_sizes)
            ]
        return results


def _clip_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Clamp x to [0, w - 1] and y to [0, h - 1] (inclusive pixel ends, ``BoxList.clip_to_image``)."""
    height, width = image_size
    max_x = width - quirks.TO_REMOVE
    max_y = height - quirks.TO_REMOVE
    return torch.stack(
        (
            boxes[:, 0].clamp(min=0, max=max_x),
            boxes[:, 1].clamp(min=0, max=max_y),
            boxes[:, 2].clamp(min=0, max=max_x),
            boxes[:, 3].clamp(min=0, max=max_y),
        ),
        dim=1,
    )


def _box_sides(boxes: Tensor, min_size: float) -> Tensor:
    """Mask of boxes whose ``+1`` width and height are >= ``min_size`` (``remove_small_boxes``;
    also drops NaN boxes)."""
    widths = boxes[:, 2] - boxes[:, 0] + quirks.TO_REMOVE
    heights = boxes[:, 3] - boxes[:, 1] + quirks.TO_REMOVE
    return (widths >= min_size) & (heights >= min_size)


def _not_empty(boxes: Tensor) -> Tensor:
    """Mask of boxes with ``x2 > x1`` and ``y2 > y1``: clipping to a tiny image squeezes a box
    outside it to a line or a point, which the legacy ``+1`` width would count as one pixel."""
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def _phrases_of(labels: Tensor, tokens: PhraseTokens) -> list[str]:
    phrase_of_label = dict(zip(tokens.label_ids.tolist(), tokens.phrases))
    return [phrase_of_label[label] for label in labels.tolist()]


def rescale_detections(
    detections: Detections, image_size: tuple[int, int], original_size: tuple[int, int]
) -> Detections:
    """Boxes from the resized image ``(h, w)`` to the original ``(H0, W0)`` (``BoxList.resize``):
    x scaled by ``W0 / w`` and y by ``H0 / h``."""
    height, width = image_size
    original_height, original_width = original_size
    ratio_x = float(original_width) / float(width)
    ratio_y = float(original_height) / float(height)
    boxes = detections.boxes
    scaled = torch.stack(
        (boxes[:, 0] * ratio_x, boxes[:, 1] * ratio_y, boxes[:, 2] * ratio_x, boxes[:, 3] * ratio_y), dim=1
    )
    return Detections(scaled, detections.scores, detections.labels, list(detections.phrases))
