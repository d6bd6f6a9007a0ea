"""Training and test transforms of an image with its boxes and caption.

Official chain (``data/transforms/build.py:build_transforms``): ``Resize(min_sizes, max_size)`` (the
shorter side drawn from AUGMENT.MULT_MIN_SIZE_TRAIN, the longer capped at INPUT.MAX_SIZE_TRAIN; PIL
bilinear) -> ``RandomHorizontalFlip(p)`` -> ``ToTensor`` -> ``Normalize`` (BGR, 0-255, Caffe
statistics). Boxes are in the legacy inclusive convention (``quirks.TO_REMOVE``): resizing scales the
corners (``BoxList.resize``) and flipping maps ``x`` to ``width - x - 1`` (``BoxList.transpose``).

Captions under a horizontal flip: MDETR's ``RandomHorizontalFlip`` swaps the words "left" and
"right" in the caption; GLIP's does not (it flips the image and the boxes only, and the positive
map keeps pointing at the unswapped words). We do as GLIP does by default; ``swap_left_right=True``
gives the MDETR behaviour, with the character spans moved along with the words (MDETR leaves them
where they were, off by one character after each swap of different-length words).

All randomness comes from a ``random.Random`` passed in, so a sample is reproducible from its seed.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image
from torch import Tensor

from glip import quirks
from glip.processing import Span, image_to_tensor, resized_size

# GLIP-T pre-training (configs/pretrain/glip_Swin_T_O365_GoldG.yaml): AUGMENT.MULT_MIN_SIZE_TRAIN.
DEFAULT_TRAIN_MIN_SIZES: tuple[int, ...] = (480, 560, 640, 720, 800)


@dataclass
class TransformedSample:
    """Output of a transform.

    Attributes:
        image: ``[3, h, w]`` float32, BGR, 0-255 scale, normalised.
        boxes: ``[G, 4]`` float32 xyxy (inclusive convention) in resized-image pixels.
        caption: the caption (changed only by ``swap_left_right``).
        tokens_positive: per box, its character spans in ``caption``.
    """

    image: Tensor
    boxes: Tensor
    caption: str
    tokens_positive: list[list[Span]]


def resize_boxes(boxes: Tensor, old_size: tuple[int, int], new_size: tuple[int, int]) -> Tensor:
    """Scale box corners from an image of ``old_size`` to ``new_size`` (``(h, w)`` each).

    As ``BoxList.resize``: x by ``new_w / old_w``, y by ``new_h / old_h`` (no +1 correction).

    Args:
        boxes: ``[G, 4]`` xyxy.
    """
    ratio_height = float(new_size[0]) / float(old_size[0])
    ratio_width = float(new_size[1]) / float(old_size[1])
    scaled = boxes.clone()
    scaled[:, 0::2] = boxes[:, 0::2] * ratio_width
    scaled[:, 1::2] = boxes[:, 1::2] * ratio_height
    return scaled


def flip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Mirror boxes left-right in an image ``width`` pixels wide (``BoxList.transpose(0)``:
    ``x1' = width - x2 - 1``, ``x2' = width - x1 - 1``).

    Args:
        boxes: ``[G, 4]`` xyxy, inclusive convention.
    """
    flipped = boxes.clone()
    flipped[:, 0] = width - boxes[:, 2] - quirks.TO_REMOVE
    flipped[:, 2] = width - boxes[:, 0] - quirks.TO_REMOVE
    return flipped


_LEFT_RIGHT = re.compile(r"\b(left|right)\b", re.IGNORECASE)


def swap_left_right(caption: str, tokens_positive: Sequence[Sequence[Span]]) -> tuple[str, list[list[Span]]]:
    """Swap the whole words "left" and "right" (MDETR's caption flip) and move the spans with them.

    The case of the first letter is kept ("Left" -> "Right"). A span boundary inside a swapped word
    moves to that word's new start (for a begin) or end (for an end).

    Args:
        caption: the text.
        tokens_positive: per box, its ``(begin, end)`` character spans (end exclusive).

    Returns:
        ``(new caption, new spans)``.
    """
    pieces: list[str] = []
    # (old_begin, old_end, new_begin, new_end) of every swapped word, in order.
    moves: list[tuple[int, int, int, int]] = []
    cursor = 0
    new_length = 0
    for match in _LEFT_RIGHT.finditer(caption):
        word = match.group(0)
        replacement = "right" if word.lower() == "left" else "left"
        if word[0].isupper():
            replacement = replacement.capitalize()
        if word.isupper():
            replacement = replacement.upper()
        pieces.append(caption[cursor : match.start()])
        new_length += match.start() - cursor
        moves.append((match.start(), match.end(), new_length, new_length + len(replacement)))
        pieces.append(replacement)
        new_length += len(replacement)
        cursor = match.end()
    if not moves:
        return caption, [list(spans) for spans in tokens_positive]
    pieces.append(caption[cursor:])

    def move(position: int, is_end: bool) -> int:
        shift = 0
        for old_begin, old_end, new_begin, new_end in moves:
            if position <= old_begin:
                break
            if position < old_end:
                return new_end if is_end else new_begin
            shift = new_end - old_end
        return position + shift

    new_spans = [[(move(begin, False), move(end, True)) for begin, end in spans] for spans in tokens_positive]
    return "".join(pieces), new_spans


def _resize_image(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """PIL bilinear resize to ``(h, w)``: the call torchvision's ``F.resize`` makes for PIL images."""
    if (image.height, image.width) == size:
        return image
    return image.resize((size[1], size[0]), Image.Resampling.BILINEAR)


class TrainTransforms:
    """Random multi-scale resize, random horizontal flip, BGR 0-255 normalisation.

    Args:
        min_sizes: candidate shorter-side lengths, one drawn per sample (MULT_MIN_SIZE_TRAIN).
        max_size: cap of the longer side (MAX_SIZE_TRAIN); ``None`` or 0 for none.
        flip_prob: probability of a horizontal flip (FLIP_PROB_TRAIN).
        swap_left_right: swap "left"/"right" in the caption when flipping (MDETR); GLIP does not.
        pixel_mean, pixel_std: BGR statistics on the 0-255 scale.
    """

    def __init__(
        self,
        min_sizes: Sequence[int] = DEFAULT_TRAIN_MIN_SIZES,
        max_size: int | None = 1333,
        flip_prob: float = 0.5,
        *,
        swap_left_right: bool = False,
        pixel_mean: Sequence[float] = quirks.BGR_PIXEL_MEAN,
        pixel_std: Sequence[float] = quirks.BGR_PIXEL_STD,
    ) -> None:
        if isinstance(min_sizes, int):
            min_sizes = (min_sizes,)
        if len(min_sizes) == 0 or any(size <= 0 for size in min_sizes):
            raise ValueError(f"min_sizes must be a non-empty list of positive sizes, got {min_sizes}")
        if not 0.0 <= flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
        self.min_sizes = tuple(int(size) for size in min_sizes)
        self.max_size = max_size
        self.flip_prob = flip_prob
        self.swap_left_right = swap_left_right
        self.pixel_mean = tuple(pixel_mean)
        self.pixel_std = tuple(pixel_std)

    def __call__(
        self,
        image: Image.Image,
        boxes: Tensor,
        caption: str,
        tokens_positive: Sequence[Sequence[Span]],
        rng: random.Random,
    ) -> TransformedSample:
        """Transform one sample.

        Args:
            image: RGB PIL image.
            boxes: ``[G, 4]`` xyxy boxes in ``image`` pixels.
            caption: the caption.
            tokens_positive: per box, its character spans.
            rng: draws the size, then the flip (the official order).
        """
        # Same order of draws as the official Resize then RandomHorizontalFlip.
        min_size = rng.choice(self.min_sizes)
        flip = rng.random() < self.flip_prob
        size = resized_size(image.height, image.width, min_size, self.max_size)
        boxes = resize_boxes(boxes, (image.height, image.width), size)
        image = _resize_image(image, size)
        spans = [list(item) for item in tokens_positive]
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            boxes = flip_boxes(boxes, image.width)
            if self.swap_left_right:
                caption, spans = swap_left_right(caption, spans)
        return TransformedSample(image_to_tensor(image, self.pixel_mean, self.pixel_std), boxes, caption, spans)


class TestTransforms:
    """Deterministic resize (shorter side ``min_size``, longer capped at ``max_size``) and
    normalisation, as the official evaluation transform (MIN_SIZE_TEST / MAX_SIZE_TEST, no flip).

    Args:
        min_size: shorter-side length.
        max_size: cap of the longer side; ``None`` or 0 for none.
        pixel_mean, pixel_std: BGR statistics on the 0-255 scale.
    """

    # Not a pytest test class despite the name.
    __test__ = False

    def __init__(
        self,
        min_size: int = 800,
        max_size: int | None = 1333,
        *,
        pixel_mean: Sequence[float] = quirks.BGR_PIXEL_MEAN,
        pixel_std: Sequence[float] = quirks.BGR_PIXEL_STD,
    ) -> None:
        if min_size <= 0:
            raise ValueError(f"min_size must be positive, got {min_size}")
        self.min_size = int(min_size)
        self.max_size = max_size
        self.pixel_mean = tuple(pixel_mean)
        self.pixel_std = tuple(pixel_std)

    def __call__(
        self,
        image: Image.Image,
        boxes: Tensor,
        caption: str,
        tokens_positive: Sequence[Sequence[Span]],
        rng: random.Random | None = None,
    ) -> TransformedSample:
        """Transform one sample (``rng`` is accepted for a uniform call and not used)."""
        size = resized_size(image.height, image.width, self.min_size, self.max_size)
        boxes = resize_boxes(boxes, (image.height, image.width), size)
        image = _resize_image(image, size)
        spans = [list(item) for item in tokens_positive]
        return TransformedSample(image_to_tensor(image, self.pixel_mean, self.pixel_std), boxes, caption, spans)
