"""Batching of training samples (official ``data/collate_batch.py:BatchCollator``).

Images are zero-padded at the bottom/right to a multiple of ``size_divisibility``
(``to_image_list``); captions are tokenised as the model does (``max_length`` padding, see
:func:`glip.processing.tokenize_captions`); each image's positive map is BINARISED (any token with
a non-zero weight becomes 1.0), which is what the official collator hands to the loss.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import BertTokenizerFast

from glip.data.datasets import ImageId, Sample
from glip.processing import batch_images, tokenize_captions

logger = logging.getLogger(__name__)


@dataclass
class Target:
    """Ground truth of one image.

    Attributes:
        boxes: ``[G, 4]`` float32 xyxy (inclusive convention) in resized-image pixels.
        labels: ``[G]`` int64 category ids.
        positive_map: ``[G, T]`` float32 in {0, 1}: box g is grounded to token t.
        ignore_boxes: ``[K, 4]`` float32 xyxy of objects that get no loss (``Sample.ignore_boxes``),
            or None.
    """

    boxes: Tensor
    labels: Tensor
    positive_map: Tensor
    ignore_boxes: Tensor | None = None

    def to(self, device: torch.device | str) -> Target:
        ignore = None if self.ignore_boxes is None else self.ignore_boxes.to(device)
        return Target(self.boxes.to(device), self.labels.to(device), self.positive_map.to(device), ignore)


@dataclass
class Batch:
    """A collated batch.

    Attributes:
        images: ``[B, 3, H, W]`` float32, zero-padded to a multiple of the size divisibility.
        image_sizes: ``(h, w)`` of each image before padding.
        input_ids: ``[B, T]`` int64 token ids, padded to T = max_len.
        attention_mask: ``[B, T]`` int64, 1 on real tokens.
        targets: per image, its boxes, labels and binarised positive map.
        captions: the B captions.
        image_ids: id of each image in its annotation file.
        original_sizes: ``(H0, W0)`` of each decoded image.
    """

    images: Tensor
    image_sizes: list[tuple[int, int]]
    input_ids: Tensor
    attention_mask: Tensor
    targets: list[Target]
    captions: list[str]
    image_ids: list[ImageId]
    original_sizes: list[tuple[int, int]]

    @property
    def positive_map(self) -> Tensor:
        """``[sum G, T]`` the targets' maps stacked in batch order (the official collated map)."""
        return torch.cat([target.positive_map for target in self.targets], dim=0)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            images=self.images.to(device),
            image_sizes=list(self.image_sizes),
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            targets=[target.to(device) for target in self.targets],
            captions=list(self.captions),
            image_ids=list(self.image_ids),
            original_sizes=list(self.original_sizes),
        )


def binarize_positive_map(positive_map: Tensor, max_len: int) -> Tensor:
    """``[G, W]`` normalised map -> ``[G, max_len]`` float {0, 1} (columns cut or zero-padded).

    The official collator copies the map into a bool tensor, so every non-zero weight becomes 1.
    """
    binary = torch.zeros((positive_map.shape[0], max_len), dtype=torch.float32)
    width = min(max_len, positive_map.shape[1])
    binary[:, :width] = (positive_map[:, :width] != 0).to(torch.float32)
    return binary


def collate(
    samples: Sequence[Sample | None],
    tokenizer: BertTokenizerFast,
    max_len: int = 256,
    size_divisibility: int = 32,
) -> Batch | None:
    """Collate samples into a :class:`Batch`.

    ``None`` entries (images that failed to load) are dropped; ``None`` is returned when nothing is
    left, and a training loop skips that step.

    Args:
        samples: dataset outputs.
        tokenizer: the model's tokenizer.
        max_len: token length T (the model's max query length).
        size_divisibility: padded image sides are multiples of it.
    """
    kept = [sample for sample in samples if sample is not None]
    if len(kept) < len(samples):
        logger.debug("collate: dropped %d samples whose image could not be read", len(samples) - len(kept))
    if not kept:
        logger.warning("collate: every sample of the batch failed to load; returning None")
        return None
    images, image_sizes = batch_images([sample.image for sample in kept], size_divisibility)
    captions = [sample.caption for sample in kept]
    text = tokenize_captions(captions, tokenizer, max_len)
    targets = [
        Target(sample.boxes, sample.labels, binarize_positive_map(sample.positive_map, max_len), sample.ignore_boxes)
        for sample in kept
    ]
    return Batch(
        images=images,
        image_sizes=image_sizes,
        input_ids=text.input_ids,
        attention_mask=text.attention_mask,
        targets=targets,
        captions=captions,
        image_ids=[sample.image_id for sample in kept],
        original_sizes=[sample.original_size for sample in kept],
    )


class Collator:
    """:func:`collate` with fixed arguments, picklable for ``DataLoader(collate_fn=...)`` workers.

    Args:
        tokenizer: the model's tokenizer.
        max_len: token length T.
        size_divisibility: padded image sides are multiples of it.
    """

    def __init__(self, tokenizer: BertTokenizerFast, max_len: int = 256, size_divisibility: int = 32) -> None:
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.size_divisibility = size_divisibility

    def __call__(self, samples: Sequence[Sample | None]) -> Batch | None:
        return collate(samples, self.tokenizer, self.max_len, self.size_divisibility)
