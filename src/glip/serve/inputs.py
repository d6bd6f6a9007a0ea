"""What a ``POST /detect`` request may carry, checked before it reaches the model: the uploaded
image (decoded from memory, never from a path), the prompt and the threshold. Each check raises
:class:`BadRequest` with the HTTP status and a one-line reason for the client.
"""

from __future__ import annotations

import io
import json
import math
import threading
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from glip.processing import load_image

# Formats a client may upload. Image.open would otherwise try every plugin PIL has, including EPS,
# which runs Ghostscript on load: no external program may touch a request's bytes.
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")

# A prompt longer than this is refused: a class list splits into one fusion pass per 256-token
# chunk, so an unbounded prompt would let one request occupy the model for minutes.
MAX_PROMPT_CHARS = 10_000

# Images decoded at once. A decoded image may take up to 3 x PIL's MAX_IMAGE_PIXELS bytes (about
# 270 MB), so the decoders, not the uploads, bound the server's memory under a burst of requests.
_DECODE_SLOTS = threading.BoundedSemaphore(2)


class BadRequest(ValueError):
    """A request the server will not run: ``status`` (4xx) and a one-line ``message``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


Span = tuple[int, int]


@dataclass(frozen=True)
class PromptSpec:
    """A checked prompt: class names, or a caption with optional character spans per phrase.

    Frozen and hashable: requests with equal specs share batches and the encoded-prompt cache.
    """

    classes: tuple[str, ...] | None = None
    caption: str | None = None
    spans: tuple[tuple[Span, ...], ...] | None = None  # per phrase, its (start, end) ranges

    def build_arguments(self) -> dict[str, object]:
        """Keyword arguments of ``GLIP.build_prompts`` / ``encode_prompts``."""
        spans = [list(phrase) for phrase in self.spans] if self.spans is not None else None
        return {"classes": list(self.classes) if self.classes is not None else None,
                "caption": self.caption, "spans": spans}


def parse_prompt(classes: str | None, caption: str | None, spans: str | None) -> PromptSpec:
    """The prompt of a request from its form fields (None: the field is absent).

    Raises:
        BadRequest: both or neither of ``classes`` and ``caption``; an empty or too long prompt;
            ``spans`` without ``caption``, not JSON, not a list of ``[start, end]`` pairs, or a
            range outside the caption.
    """
    if classes is not None and caption is not None:
        raise BadRequest("give classes or caption, not both")
    if classes is None and caption is None:
        raise BadRequest("give classes (comma-separated names) or caption (text to ground)")
    text = classes if classes is not None else caption
    if len(text) > MAX_PROMPT_CHARS:
        raise BadRequest(f"the prompt has {len(text)} characters, more than the limit of {MAX_PROMPT_CHARS}")
    if classes is not None:
        if spans is not None:
            raise BadRequest("spans go with caption, not with classes")
        names = tuple(name.strip() for name in classes.split(",") if name.strip())
        if not names:
            raise BadRequest("empty prompt: classes has no name (give comma-separated names, e.g. cat,dog)")
        return PromptSpec(classes=names)
    if not caption.strip():
        raise BadRequest("empty prompt: caption is blank")
    return PromptSpec(caption=caption, spans=None if spans is None else parse_spans(spans, len(caption)))


def parse_spans(text: str, caption_length: int) -> tuple[tuple[Span, ...], ...]:
    """``[[start, end], ...]`` (one range per phrase) or ``[[[s, e], [s, e]], ...]`` (several
    ranges per phrase), character offsets into the caption, end exclusive."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise BadRequest('spans is not JSON: give a list of [start, end] pairs, e.g. [[0, 5], [10, 17]]') from None
    if not isinstance(value, list) or not value:
        raise BadRequest("spans must be a non-empty JSON list of [start, end] pairs")
    phrases = []
    for index, item in enumerate(value):
        ranges = [item] if _is_pair(item) else item
        if not isinstance(ranges, list) or not ranges or not all(_is_pair(pair) for pair in ranges):
            raise BadRequest(f"spans[{index}] must be a [start, end] pair of integers (or a list of them), "
                             f"got {json.dumps(item)[:80]}")
        for start, end in ranges:
            if not 0 <= start < end <= caption_length:
                raise BadRequest(f"spans[{index}] = [{start}, {end}] is not a range of the caption "
                                 f"(0 <= start < end <= {caption_length})")
        phrases.append(tuple((start, end) for start, end in ranges))
    return tuple(phrases)


def _is_pair(item: object) -> bool:
    return (isinstance(item, list) and len(item) == 2
            and all(isinstance(value, int) and not isinstance(value, bool) for value in item))


def parse_threshold(text: str | None, default: float) -> float:
    """The score threshold in [0, 1]; ``default`` when the field is absent or blank."""
    if text is None or not text.strip():
        return default
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"threshold must be a number in [0, 1], got {text[:40]!r}") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise BadRequest(f"threshold must be in [0, 1], got {text[:40]}")
    return value


def decode_image(data: bytes) -> Image.Image:
    """An uploaded file's bytes -> an RGB PIL image (EXIF orientation applied, as ``load_image``).

    Stricter than reading a local file: only :data:`ALLOWED_FORMATS`, and any image above PIL's
    ``MAX_IMAGE_PIXELS`` is refused (a local file may have up to twice that).

    Raises:
        BadRequest: empty, not an image of an allowed format, truncated, or too many pixels.
    """
    if not data:
        raise BadRequest("the image is empty (0 bytes)")
    with _DECODE_SLOTS:
        try:
            with warnings.catch_warnings():
                # PIL only warns between MAX_IMAGE_PIXELS and twice that; a server refuses both.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as opened:
                    opened.load()  # decode now: a truncated file fails here, not later in the worker
                    return load_image(opened)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise BadRequest(f"the image has more than {Image.MAX_IMAGE_PIXELS} pixels (refused as a possible "
                             "decompression bomb)") from None
        except UnidentifiedImageError:
            raise BadRequest(f"the upload is not an image ({', '.join(ALLOWED_FORMATS)} are accepted)") from None
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            reason = " ".join(str(error).split())[:120]
            raise BadRequest(f"the image is truncated or corrupt ({reason})") from None
