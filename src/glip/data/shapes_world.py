"""The Shapes world: a synthetic detection and grounding data set (``glip synth``).

A small world in which GLIP's claims can be trained and measured on a CPU in minutes: 224 x 224
scenes of one to six coloured, rotated shapes on a noisy grey background, with COCO detection
files for the 6 shapes and the 36 (colour, shape) pairs, MDETR-style grounding captions, and
box-free captions. Three pairs (``HELD_OUT_PAIRS``) are never named in training text, so pair
detection on them measures zero-shot composition of separately learned words. Two transfer splits
draw three new shapes only. The numbers below are those of the Shapes world specification
(``SHAPES_WORLD.md``); where that page leaves a choice open, the choice is stated here.

Files written by :func:`synthesize` into ``out_dir``:

* ``images/NNNNNN.png``: 224 x 224 RGB; ``file_name`` fields are relative to ``images/``.
* ``detection.json``: COCO, categories = the shapes of the split (ids 1..6, or 1..3 in the
  transfer splits).
* ``pairs.json`` (not for transfer splits): COCO, categories = the 36 pairs, ids 1..36
  colour-major; in ``train`` the held-out categories and their boxes are absent (the other ids
  are kept, not renumbered).
* ``colours.json`` (not for transfer splits): COCO, categories = the 6 colour names, ids 1..6 in
  the order of :data:`COLOURS`; every object, held-out pairs included (a colour alone never names
  a held-out pair): colour learnt apart from shape, as ``detection.json`` teaches shape apart
  from colour.
* ``grounding.json``: one image entry per (image, caption) with ``caption``, ``file_name``,
  ``id``, ``original_img_id`` (the image's id in ``detection.json``), ``width``, ``height`` and
  ``tokens_positive_eval`` (one list of ``[start, end)`` spans per referred phrase, in caption
  order); one annotation per referred box with ``bbox``, ``area``, ``iscrowd``,
  ``category_id`` (shape id), ``tokens_positive`` and ``phrase_ids`` (index of its phrase in
  ``tokens_positive_eval``).
* ``captions.json``: ``[{"file_name", "caption"}, ...]``, the same captions without boxes.
* ``info.json``: split, seed, number of images and captions, format version.

Choices the specification leaves open (they are part of the format, change them only with
``FORMAT_VERSION``):

* Randomness: every image has its own ``numpy`` PCG64 streams seeded by
  ``SeedSequence([seed, split number, image index, purpose])`` (purposes: scene, captions, pixel
  noise), so image ``i`` is the same whether 10 or 10,000 images are generated, and two splits
  never share scenes even with the same seed. The spec still asks train seeds to differ from the
  canonical test seeds (``CANONICAL_TEST_SEEDS``); that is left to the caller.
* Geometry: a shape of side ``s`` fits its bounding square of side ``s`` before rotation (the
  circle's diameter is ``s``; star, hexagon, heart, arrow and crescent are scaled so their longer
  extent is ``s``). Objects are drawn at 4x with PIL polygons (ellipses for the circle) whose
  vertices are snapped to the 4x pixel grid; the box is the extent of the filled 4x pixels, so it
  is exactly the tight box of what is drawn and a multiple of 0.25 px. The centre is uniform over
  the positions that keep that box inside the canvas. A rejected object (IoU > 0.2 with an earlier
  box) is redrawn entirely (shape, colour, size, rotation, position); after 50 rejections it is
  dropped and the next object is tried.
* Background: the grey level, the optional clutter lines (1..3, a grey 25..50 levels darker than
  the background, width 1..3 px, anti-aliased, end points anywhere on the canvas) and then
  Gaussian noise (sigma 6, independent per pixel and channel). Objects are drawn on top, noise-free.
* Anti-aliasing: a 4x box filter computed with integers (``(sum of 16 + 8) // 16``), so the pixels
  do not depend on the resampling code of a Pillow version.
* PNG: written by :func:`encode_png` with uncompressed (stored) deflate blocks, so the bytes depend
  on the pixels only, not on the zlib build (zlib and zlib-ng compress differently). A file is
  about 151 kB.
* Captions: ``CAPTIONS_PER_IMAGE`` (2) distinct captions per image when the image allows them.
  A caption refers to 1..3 distinct objects (the count is drawn uniformly, fewer when the image has
  fewer referable objects). Objects are visited in random order; for each, one of the phrase
  templates that identify it uniquely is drawn uniformly, then one instance of that template
  (e.g. which relation and which reference object). Phrases are joined as ``"p1"``,
  ``"p1 and p2"`` or ``"p1, p2 and p3"``.
* Unique identification: a phrase is used only if it denotes exactly one object of the image.
  Position words (``on the left``, ``at the top``, ...) compare box centres among the objects of
  the same colour and shape and need at least two of them; relations (``the circle left of the
  red square``) compare the centres of the objects of the target's shape with the centre of the
  reference object, which must itself be the only object of its colour and shape. To keep
  "unique" visible to a reader, the chosen object must win by ``RELATION_MARGIN_PX`` (10 px) and,
  for relations, no other candidate may satisfy the relation at all.
* Spans: every referred object is grounded by its own noun phrase, whole (``the red circle on the
  left``, ``a star``, ``the small blue square``). In a relation phrase the target is grounded by
  ``the circle`` and the reference object, which the caption names too, by ``the red square``;
  the relation words (``left of``) belong to neither span. So a box never owns the words of
  another object (which would teach ``red square`` to point at the circle), and the reference
  counts as one of the caption's 1..3 objects. Each phrase grounds exactly one box.
* Held-out rule (``train`` only): no phrase ever puts a held-out pair's colour and shape together,
  including the reference of a relation phrase; such objects are named by shape alone (``a
  triangle``, ``the triangle above the red square``) or colour alone (``the green shape``).
* English: ``a <shape>`` becomes ``an arrow``.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import shutil
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

logger = logging.getLogger(__name__)

# Bumped whenever a change alters the bytes written for a given (seed, split, num_images).
FORMAT_VERSION = 1

SPLITS: tuple[str, ...] = ("train", "test", "transfer-train", "transfer-test")
# The canonical evaluation splits (500 test images, 300 transfer-test images); train seeds must differ.
CANONICAL_TEST_SEEDS = MappingProxyType({"test": 1000, "transfer-test": 2000})

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "hexagon", "cross")
TRANSFER_SHAPES: tuple[str, ...] = ("heart", "arrow", "crescent")
COLOURS = MappingProxyType(
    {
        "red": (220, 40, 40),
        "green": (40, 170, 60),
        "blue": (40, 80, 220),
        "yellow": (230, 210, 40),
        "purple": (140, 60, 180),
        "orange": (240, 140, 30),
    }
)
# Pair classes "<colour> <shape>", colour-major: the category id of PAIRS[k] is k + 1.
PAIRS: tuple[str, ...] = tuple(f"{colour} {shape}" for colour in COLOURS for shape in SHAPES)
HELD_OUT_PAIRS: tuple[str, ...] = ("green triangle", "orange circle", "blue star")
DESCRIPTIVE_PROMPTS = MappingProxyType(
    {
        "heart": "heart, a shape with two round lobes on top and a point at the bottom",
        "arrow": "arrow, a long thin shaft with a triangle at one end",
        "crescent": "crescent, a curved shape like a thin moon",
    }
)

CANVAS_SIZE = 224
BACKGROUND_GREY_RANGE = (170, 235)  # inclusive
NOISE_SIGMA = 6.0
CLUTTER_PROBABILITY = 0.3
CLUTTER_LINE_COUNT_RANGE = (1, 3)  # inclusive
CLUTTER_LINE_WIDTH_RANGE = (1, 3)  # inclusive, pixels
CLUTTER_DARKENING_RANGE = (25, 50)  # inclusive; "faint": a little darker than the background
OBJECT_COUNT_RANGE = (1, 6)  # inclusive
SIDE_RANGE = (14.0, 72.0)  # side of the object's bounding square, pixels
SMALL_SIDE_BELOW = 30.0
LARGE_SIDE_ABOVE = 52.0
COLOUR_JITTER = 20  # each channel + uniform integer in [-20, 20]
MAX_BOX_IOU = 0.2
PLACEMENT_TRIES = 50
SUPERSAMPLING = 4

CAPTIONS_PER_IMAGE = 2  # our choice: two distinct captions per image when the image allows them
MAX_OBJECTS_PER_CAPTION = 3
CAPTION_TRIES = 10  # draws allowed to find CAPTIONS_PER_IMAGE distinct captions
# Our reading of "identifies uniquely" for position and relation words (the spec gives no number):
# the described object must win the comparison of box centres by this many pixels.
RELATION_MARGIN_PX = 10.0

_SCENE_STREAM, _CAPTION_STREAM, _NOISE_STREAM = 0, 1, 2
# (words, axis of the box centre, sign): the target wins when sign * (target - other) >= margin.
_POSITIONS = (("on the left", 0, -1), ("on the right", 0, 1), ("at the top", 1, -1), ("at the bottom", 1, 1))
_RELATIONS = (("left of", 0, -1), ("right of", 0, 1), ("above", 1, -1), ("below", 1, 1))
# Phrase templates in a fixed order, so that drawing one by index is reproducible.
_TEMPLATES = ("colour shape", "shape", "colour", "size colour shape", "position", "relation")


# --------------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------------


def _normalised(points: Sequence[tuple[float, float]]) -> np.ndarray:
    """Centre an outline on its bounding box and scale its longer extent to 1.

    Args:
        points: outline vertices ``(x, y)``, y pointing down.

    Returns:
        ``[V, 2]`` float64 vertices inside ``[-0.5, 0.5]^2``.
    """
    outline = np.asarray(points, dtype=np.float64)
    low, high = outline.min(axis=0), outline.max(axis=0)
    return (outline - (low + high) / 2) / float((high - low).max())


def _on_circle(radii: Sequence[float], start_degrees: float) -> list[tuple[float, float]]:
    """Vertices at equal angular steps with the given radii (``math`` trigonometry: same bits everywhere)."""
    step = 2 * math.pi / len(radii)
    start = math.radians(start_degrees)
    return [(r * math.cos(start + k * step), r * math.sin(start + k * step)) for k, r in enumerate(radii)]


def _heart() -> list[tuple[float, float]]:
    """The classic parametric heart (lobes up, point down)."""
    points = []
    for k in range(64):
        t = 2 * math.pi * k / 64
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        points.append((x, -y))  # image y points down
    return points


def _crescent(inner_radius: float = 0.9, inner_offset: float = 0.45, arc_points: int = 40) -> list[tuple[float, float]]:
    """A unit disc minus a disc shifted to the right: a crescent opening to the right."""
    # Where the two circles cross: x^2 + y^2 = 1 and (x - d)^2 + y^2 = r^2.
    cross_x = (inner_offset**2 + 1 - inner_radius**2) / (2 * inner_offset)
    cross_y = math.sqrt(1 - cross_x**2)
    outer_start = math.atan2(cross_y, cross_x)
    inner_start = math.atan2(cross_y, cross_x - inner_offset)
    points = []
    # Outer arc from the upper horn round the left side to the lower horn ...
    for k in range(arc_points + 1):
        angle = outer_start + (2 * math.pi - 2 * outer_start) * k / arc_points
        points.append((math.cos(angle), math.sin(angle)))
    # ... and back along the inner arc, again round its left side.
    for k in range(1, arc_points):
        angle = (2 * math.pi - inner_start) - (2 * math.pi - 2 * inner_start) * k / arc_points
        points.append((inner_offset + inner_radius * math.cos(angle), inner_radius * math.sin(angle)))
    return points


_CROSS_HALF_WIDTH = 1 / 6  # arm thickness a third of the side: a plus sign
_w = _CROSS_HALF_WIDTH
_UNIT_OUTLINES: dict[str, np.ndarray] = {
    "square": _normalised([(-1, -1), (1, -1), (1, 1), (-1, 1)]),
    "triangle": _normalised(_on_circle([1.0] * 3, -90)),
    "star": _normalised(_on_circle([1.0, 0.4] * 5, -90)),
    "hexagon": _normalised(_on_circle([1.0] * 6, 0)),
    "cross": _normalised(
        [(-_w, -0.5), (_w, -0.5), (_w, -_w), (0.5, -_w), (0.5, _w), (_w, _w),
         (_w, 0.5), (-_w, 0.5), (-_w, _w), (-0.5, _w), (-0.5, -_w), (-_w, -_w)]
    ),  # fmt: skip
    "heart": _normalised(_heart()),
    # Shaft 0.18 thick, head 0.35 long and 0.5 wide.
    "arrow": _normalised(
        [(-0.5, -0.09), (0.15, -0.09), (0.15, -0.25), (0.5, 0.0), (0.15, 0.25), (0.15, 0.09), (-0.5, 0.09)]
    ),
    "crescent": _normalised(_crescent()),
}
del _w


# --------------------------------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneObject:
    """One drawn object.

    Attributes:
        shape: shape name (``SHAPES`` or ``TRANSFER_SHAPES``).
        colour: colour name (``COLOURS``).
        rgb: the jittered colour it is drawn with.
        side: side of its bounding square before rotation, pixels.
        rotation: degrees (0 for circles).
        outline: vertices on the 4x pixel grid, ``((x, y), ...)``; for a circle the inclusive
            4x pixel box ``((x0, y0), (x1, y1))`` of the ellipse.
        box: tight ``(x, y, width, height)`` box of the drawn pixels at 1x, multiples of 0.25.
    """

    shape: str
    colour: str
    rgb: tuple[int, int, int]
    side: float
    rotation: float
    outline: tuple[tuple[int, int], ...]
    box: tuple[float, float, float, float]

    @property
    def pair(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def size_word(self) -> str | None:
        """``small`` (side < 30), ``large`` (side > 52) or None: used by captions only."""
        if self.side < SMALL_SIDE_BELOW:
            return "small"
        if self.side > LARGE_SIDE_ABOVE:
            return "large"
        return None

    @property
    def centre(self) -> tuple[float, float]:
        x, y, width, height = self.box
        return (x + width / 2, y + height / 2)


@dataclass(frozen=True)
class ClutterLine:
    """A faint straight line of the background, end points and width on the 4x grid."""

    start: tuple[int, int]
    end: tuple[int, int]
    width: int
    grey: int


@dataclass(frozen=True)
class Caption:
    """A caption and the spans grounding its referred objects.

    Attributes:
        text: the caption.
        groundings: ``((object index, start, end), ...)`` sorted by ``start``; ``text[start:end]``
            is the whole noun phrase of object ``scene.objects[object index]``.
    """

    text: str
    groundings: tuple[tuple[int, int, int], ...]


@dataclass(frozen=True)
class Scene:
    """Everything about one image but its pixel noise (drawn by :func:`render_scene`)."""

    seed: int
    split: str
    index: int
    background: int
    clutter: tuple[ClutterLine, ...]
    objects: tuple[SceneObject, ...]
    captions: tuple[Caption, ...]


def _generator(seed: int, split: str, index: int, purpose: int) -> np.random.Generator:
    """The PCG64 stream of one purpose (scene, captions, noise) of one image."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, SPLITS.index(split), index, purpose])))


def _box_iou(first: tuple[float, float, float, float], second: tuple[float, float, float, float]) -> float:
    """IoU of two ``(x, y, width, height)`` boxes."""
    overlap_width = min(first[0] + first[2], second[0] + second[2]) - max(first[0], second[0])
    overlap_height = min(first[1] + first[3], second[1] + second[3]) - max(first[1], second[1])
    if overlap_width <= 0 or overlap_height <= 0:
        return 0.0
    intersection = overlap_width * overlap_height
    return intersection / (first[2] * first[3] + second[2] * second[3] - intersection)


def _pixel_box(x_low: int, y_low: int, x_high: int, y_high: int) -> tuple[float, float, float, float]:
    """``(x, y, width, height)`` at 1x of the inclusive 4x pixel range ``[low, high]``."""
    scale = SUPERSAMPLING
    return (x_low / scale, y_low / scale, (x_high + 1 - x_low) / scale, (y_high + 1 - y_low) / scale)


def _sample_object(rng: np.random.Generator, shapes: Sequence[str]) -> SceneObject:
    """Draw one object, placed so that its drawn box lies inside the canvas."""
    colour_names = tuple(COLOURS)
    shape = shapes[int(rng.integers(len(shapes)))]
    colour = colour_names[int(rng.integers(len(colour_names)))]
    jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
    rgb = tuple(int(min(255, max(0, base + int(delta)))) for base, delta in zip(COLOURS[colour], jitter))
    side = float(rng.uniform(*SIDE_RANGE))
    rotation = float(rng.uniform(0.0, 360.0))
    scale = SUPERSAMPLING
    last_pixel = CANVAS_SIZE * scale - 1
    if shape == "circle":
        radius = side / 2
        centre_x = float(rng.uniform(radius, CANVAS_SIZE - radius))
        centre_y = float(rng.uniform(radius, CANVAS_SIZE - radius))
        x_low = max(0, math.floor(scale * (centre_x - radius)))
        y_low = max(0, math.floor(scale * (centre_y - radius)))
        x_high = min(last_pixel, math.ceil(scale * (centre_x + radius)) - 1)
        y_high = min(last_pixel, math.ceil(scale * (centre_y + radius)) - 1)
        outline = ((x_low, y_low), (x_high, y_high))
        return SceneObject(shape, colour, rgb, side, 0.0, outline, _pixel_box(x_low, y_low, x_high, y_high))

    cos, sin = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    unit = _UNIT_OUTLINES[shape] * side  # [V, 2]
    # Element-wise products (no matmul) so no BLAS kernel can change the rounding.
    rotated_x = unit[:, 0] * cos - unit[:, 1] * sin
    rotated_y = unit[:, 0] * sin + unit[:, 1] * cos
    centre_x = float(rng.uniform(-rotated_x.min(), CANVAS_SIZE - rotated_x.max()))
    centre_y = float(rng.uniform(-rotated_y.min(), CANVAS_SIZE - rotated_y.max()))
    # Snap each vertex to the 4x pixel containing it; PIL fills the pixels of its vertices.
    pixels_x = np.clip(np.floor(scale * (centre_x + rotated_x)), 0, last_pixel).astype(np.int64)
    pixels_y = np.clip(np.floor(scale * (centre_y + rotated_y)), 0, last_pixel).astype(np.int64)
    outline = tuple(zip(pixels_x.tolist(), pixels_y.tolist()))
    box = _pixel_box(int(pixels_x.min()), int(pixels_y.min()), int(pixels_x.max()), int(pixels_y.max()))
    return SceneObject(shape, colour, rgb, side, rotation, outline, box)


def _sample_layout(
    rng: np.random.Generator, shapes: Sequence[str]
) -> tuple[int, tuple[ClutterLine, ...], tuple[SceneObject, ...]]:
    """Background grey, clutter lines and objects of one scene."""
    background = int(rng.integers(BACKGROUND_GREY_RANGE[0], BACKGROUND_GREY_RANGE[1] + 1))
    clutter: list[ClutterLine] = []
    if rng.random() < CLUTTER_PROBABILITY:
        for _ in range(int(rng.integers(CLUTTER_LINE_COUNT_RANGE[0], CLUTTER_LINE_COUNT_RANGE[1] + 1))):
            ends = rng.integers(0, CANVAS_SIZE * SUPERSAMPLING, size=4)
            width = int(rng.integers(CLUTTER_LINE_WIDTH_RANGE[0], CLUTTER_LINE_WIDTH_RANGE[1] + 1))
            darkening = int(rng.integers(CLUTTER_DARKENING_RANGE[0], CLUTTER_DARKENING_RANGE[1] + 1))
            start, end = (int(ends[0]), int(ends[1])), (int(ends[2]), int(ends[3]))
            clutter.append(ClutterLine(start, end, width * SUPERSAMPLING, background - darkening))
    objects: list[SceneObject] = []
    for _ in range(int(rng.integers(OBJECT_COUNT_RANGE[0], OBJECT_COUNT_RANGE[1] + 1))):
        for _ in range(PLACEMENT_TRIES):
            candidate = _sample_object(rng, shapes)
            if all(_box_iou(candidate.box, placed.box) <= MAX_BOX_IOU for placed in objects):
                objects.append(candidate)
                break
    return background, tuple(clutter), tuple(objects)


def sample_scene(seed: int, split: str, index: int) -> Scene:
    """The scene and captions of image ``index`` of a split (everything but the pixel noise).

    Args:
        seed: the split's seed (non-negative).
        split: one of ``SPLITS``.
        index: 0-based image index.
    """
    _check_seed_and_split(seed, split)
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"index must be a non-negative integer; got {index!r}")
    shapes = TRANSFER_SHAPES if split.startswith("transfer") else SHAPES
    background, clutter, objects = _sample_layout(_generator(seed, split, index, _SCENE_STREAM), shapes)
    held_out = frozenset(HELD_OUT_PAIRS) if split == "train" else frozenset()
    captions = sample_captions(objects, _generator(seed, split, index, _CAPTION_STREAM), held_out)
    return Scene(seed, split, index, background, clutter, objects, captions)


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def _box_downsample(pixels: np.ndarray) -> np.ndarray:
    """Average ``SUPERSAMPLING`` x ``SUPERSAMPLING`` blocks with integer rounding.

    Args:
        pixels: ``[S*H, S*W]`` or ``[S*H, S*W, C]`` uint8.

    Returns:
        ``[H, W]`` or ``[H, W, C]`` uint8.
    """
    scale = SUPERSAMPLING
    # 16 strided views, one per position inside a block: [S*H, S*W, ...] -> S*S x [H, W, ...];
    # 16 * 255 fits in uint16.
    total = np.zeros(pixels[::scale, ::scale].shape, dtype=np.uint16)
    for row in range(scale):
        for column in range(scale):
            total += pixels[row::scale, column::scale]
    return ((total + scale * scale // 2) // (scale * scale)).astype(np.uint8)


def render_scene(scene: Scene) -> np.ndarray:
    """Draw a scene.

    Returns:
        ``[224, 224, 3]`` uint8 RGB.
    """
    size, scale = CANVAS_SIZE, SUPERSAMPLING
    background = np.full((size, size), scene.background, dtype=np.uint8)
    if scene.clutter:
        lines = Image.new("L", (size * scale, size * scale), scene.background)
        draw = ImageDraw.Draw(lines)
        for line in scene.clutter:
            draw.line([line.start, line.end], fill=line.grey, width=line.width)
        background = _box_downsample(np.asarray(lines))
    noise_stream = _generator(scene.seed, scene.split, scene.index, _NOISE_STREAM)
    noise = noise_stream.normal(0.0, NOISE_SIGMA, size=(size, size, 3))
    noisy = np.clip(np.rint(background[:, :, None] + noise), 0, 255).astype(np.uint8)  # [224, 224, 3]
    # [224, 224, 3] -> [896, 896, 3]: every 1x pixel becomes a 4x4 block, so the box filter gives it back.
    canvas = Image.fromarray(np.repeat(np.repeat(noisy, scale, axis=0), scale, axis=1), mode="RGB")
    draw = ImageDraw.Draw(canvas)
    for item in scene.objects:  # later objects on top
        if item.shape == "circle":
            draw.ellipse([item.outline[0], item.outline[1]], fill=item.rgb)
        else:
            draw.polygon(list(item.outline), fill=item.rgb)
    return _box_downsample(np.asarray(canvas))


def encode_png(pixels: np.ndarray) -> bytes:
    """Encode an RGB image as PNG whose bytes depend on the pixels only.

    The image data is stored in uncompressed deflate blocks (RFC 1951 section 3.2.4), filter 0 on
    every row, no ancillary chunks: a zlib library would compress differently from version to
    version, this does not.

    Args:
        pixels: ``[H, W, 3]`` uint8.
    """
    height, width, channels = pixels.shape
    if channels != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"pixels must be [H, W, 3] uint8, got {pixels.shape} {pixels.dtype}")
    rows = np.zeros((height, 1 + width * 3), dtype=np.uint8)  # first byte of each row: filter type 0
    rows[:, 1:] = pixels.reshape(height, width * 3)  # [H, W, 3] -> [H, 3W]
    raw = rows.tobytes()
    blocks = []
    block_size = 0xFFFF
    for start in range(0, len(raw), block_size):
        block = raw[start : start + block_size]
        is_last = start + block_size >= len(raw)
        blocks.append(struct.pack("<BHH", int(is_last), len(block), len(block) ^ 0xFFFF) + block)
    # zlib header 0x78 0x01: deflate, 32 KiB window, check bits; adler32 trailer.
    stream = b"\x78\x01" + b"".join(blocks) + struct.pack(">I", zlib.adler32(raw))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", stream) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Phrase:
    """A referring expression of one target object; ``groundings`` are relative to ``text``."""

    text: str
    groundings: tuple[tuple[int, int, int], ...]


def _article(shape: str) -> str:
    return "an" if shape[0] in "aeiou" else "a"


def _phrase_options(target: int, objects: Sequence[SceneObject], held_out: frozenset[str]) -> dict[str, list[_Phrase]]:
    """Every phrase that identifies ``objects[target]`` uniquely in its image, by template.

    Args:
        target: index of the object to describe.
        objects: all objects of the image.
        held_out: pair names that no phrase may name (empty outside ``train``).
    """
    item = objects[target]
    others = [j for j in range(len(objects)) if j != target]
    same_shape = [j for j in others if objects[j].shape == item.shape]
    same_colour = [j for j in others if objects[j].colour == item.colour]
    same_pair = [j for j in same_shape if objects[j].colour == item.colour]
    may_name_pair = item.pair not in held_out

    def whole(text: str) -> _Phrase:
        return _Phrase(text, ((target, 0, len(text)),))

    options: dict[str, list[_Phrase]] = {}
    if may_name_pair and not same_pair:
        options["colour shape"] = [whole(f"the {item.pair}")]
    if not same_shape:
        options["shape"] = [whole(f"{_article(item.shape)} {item.shape}")]
    if not same_colour:
        options["colour"] = [whole(f"the {item.colour} shape")]
    size = item.size_word
    if may_name_pair and size is not None and all(objects[j].size_word != size for j in same_pair):
        options["size colour shape"] = [whole(f"the {size} {item.pair}")]
    if may_name_pair and same_pair:
        positions = [
            whole(f"the {item.pair} {words}")
            for words, axis, sign in _POSITIONS
            if all(sign * (item.centre[axis] - objects[j].centre[axis]) >= RELATION_MARGIN_PX for j in same_pair)
        ]
        if positions:
            options["position"] = positions
    relations = []
    for reference in others:
        anchor = objects[reference]
        anchor_is_unique = all(objects[j].pair != anchor.pair for j in range(len(objects)) if j != reference)
        if not anchor_is_unique or anchor.pair in held_out:
            continue
        competitors = [j for j in same_shape if j != reference]
        for words, axis, sign in _RELATIONS:
            holds = sign * (item.centre[axis] - anchor.centre[axis]) >= RELATION_MARGIN_PX
            if holds and all(sign * (objects[j].centre[axis] - anchor.centre[axis]) <= 0 for j in competitors):
                head = f"the {item.shape}"
                tail = f"the {anchor.pair}"
                text = f"{head} {words} {tail}"
                relations.append(_Phrase(text, ((target, 0, len(head)), (reference, len(text) - len(tail), len(text)))))
    if relations:
        options["relation"] = relations
    return options


def _sample_caption(options: Sequence[dict[str, list[_Phrase]]], rng: np.random.Generator) -> Caption | None:
    """Draw one caption from the phrase options of every object.

    Returns None when no phrase fits the drawn object budget (e.g. a budget of one object in an
    image whose only referable object needs a relation phrase, which names two).
    """
    referable = [index for index, found in enumerate(options) if found]
    budget = int(rng.integers(1, MAX_OBJECTS_PER_CAPTION + 1))
    referred: set[int] = set()
    phrases: list[_Phrase] = []
    for target in rng.permutation(referable).tolist():
        if len(referred) >= budget:
            break
        if target in referred:
            continue
        room = budget - len(referred)
        fitting: dict[str, list[_Phrase]] = {}
        for template in _TEMPLATES:
            usable = [
                phrase
                for phrase in options[target].get(template, [])
                if len(phrase.groundings) <= room and all(obj not in referred for obj, _, _ in phrase.groundings)
            ]
            if usable:
                fitting[template] = usable
        if not fitting:
            continue
        templates = list(fitting)
        candidates = fitting[templates[int(rng.integers(len(templates)))]]
        phrase = candidates[int(rng.integers(len(candidates)))]
        phrases.append(phrase)
        referred.update(obj for obj, _, _ in phrase.groundings)
    if not phrases:
        return None

    text = ""
    groundings: list[tuple[int, int, int]] = []
    for position, phrase in enumerate(phrases):
        if position > 0:
            text += " and " if position == len(phrases) - 1 else ", "
        offset = len(text)
        text += phrase.text
        groundings.extend((obj, offset + start, offset + end) for obj, start, end in phrase.groundings)
    return Caption(text, tuple(sorted(groundings, key=lambda grounding: grounding[1])))


def sample_captions(
    objects: Sequence[SceneObject], rng: np.random.Generator, held_out: frozenset[str]
) -> tuple[Caption, ...]:
    """Up to ``CAPTIONS_PER_IMAGE`` distinct captions of an image (fewer if it allows fewer).

    Args:
        objects: the image's objects.
        rng: the image's caption stream.
        held_out: pair names that no phrase may name (``HELD_OUT_PAIRS`` in ``train``).
    """
    options = [_phrase_options(target, objects, held_out) for target in range(len(objects))]
    captions: list[Caption] = []
    if not any(options):  # no object is referable: the image gets no caption
        return ()
    for _ in range(CAPTION_TRIES):
        if len(captions) == CAPTIONS_PER_IMAGE:
            break
        caption = _sample_caption(options, rng)
        if caption is not None and all(caption.text != kept.text for kept in captions):
            captions.append(caption)
    return tuple(captions)


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def _check_seed_and_split(seed: int, split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}; got {split!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")


def _coco_box(box: tuple[float, float, float, float]) -> tuple[list[float], float]:
    """JSON box and area. Boxes are multiples of 0.25 px, so the rounding only guards the format."""
    return [round(value, 2) for value in box], round(box[2] * box[3], 4)


def _write_json(path: Path, content: Any) -> None:
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    path.write_bytes(text.encode("ascii") + b"\n")


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> Path:
    """Check ``out_dir`` and create an empty staging folder beside it."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ValueError(f"out_dir {out_dir} exists and is not a folder")
        if any(out_dir.iterdir()) and not overwrite:
            raise ValueError(f"out_dir {out_dir} exists and is not empty; pass overwrite=True or choose another folder")
    staging = out_dir.parent / f".{out_dir.name}.partial-{secrets.token_hex(4)}"
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
    except OSError as error:
        raise ValueError(f"out_dir {out_dir} is not writable: {error}") from error
    return staging


def _publish(staging: Path, out_dir: Path) -> None:
    """Move the finished staging folder to ``out_dir``, replacing an old one only at the end."""
    if not out_dir.exists():
        staging.rename(out_dir)
        return
    retired = out_dir.parent / f".{out_dir.name}.old-{secrets.token_hex(4)}"
    out_dir.rename(retired)
    try:
        staging.rename(out_dir)
    except OSError:
        retired.rename(out_dir)
        raise
    shutil.rmtree(retired)


def synthesize(
    out_dir: str | Path,
    num_images: int,
    seed: int,
    split: str = "train",
    show_progress: bool = True,
    *,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Generate a split of the Shapes world (``glip synth``).

    The split is built in a hidden folder beside ``out_dir`` and renamed to ``out_dir`` only once
    complete, so an interrupted run leaves no ``out_dir`` that looks finished. The same
    ``(seed, split)`` gives byte-identical files on any machine, and image ``i`` does not depend on
    ``num_images``. Canonical evaluation splits: ``test`` with 500 images and seed 1000,
    ``transfer-test`` with 300 images and seed 2000; train seeds should differ from them (the
    split name also enters the random streams, so equal seeds still give different scenes).

    Args:
        out_dir: folder to create; must be absent or empty unless ``overwrite``.
        num_images: number of images, at least 1.
        seed: non-negative integer.
        split: ``train``, ``test``, ``transfer-train`` or ``transfer-test``.
        show_progress: show a tqdm bar.
        overwrite: replace an existing non-empty ``out_dir`` (only once the new split is complete).

    Returns:
        Paths by name: ``images`` (folder), ``detection``, ``pairs`` (not for transfer splits),
        ``grounding``, ``captions``, ``info``, all inside ``out_dir``.

    Raises:
        ValueError: naming the bad argument (``num_images``, ``seed``, ``split``, ``out_dir``).
    """
    if isinstance(num_images, bool) or not isinstance(num_images, (int, np.integer)) or num_images < 1:
        raise ValueError(f"num_images must be an integer >= 1; got {num_images!r}")
    _check_seed_and_split(seed, split)
    seed, num_images = int(seed), int(num_images)
    out_dir = Path(out_dir).expanduser().absolute()
    is_transfer = split.startswith("transfer")
    held_out = frozenset(HELD_OUT_PAIRS) if split == "train" else frozenset()

    annotations = _SplitAnnotations(is_transfer, TRANSFER_SHAPES if is_transfer else SHAPES, held_out)
    staging = _prepare_out_dir(out_dir, overwrite)
    try:
        (staging / "images").mkdir()
        for index in tqdm(range(num_images), desc=f"synth {split}", unit="img", disable=not show_progress):
            scene = sample_scene(seed, split, index)
            file_name = f"{index:06d}.png"
            (staging / "images" / file_name).write_bytes(encode_png(render_scene(scene)))
            annotations.add(scene, index + 1, file_name)
        info = {
            "generator": "glip.data.shapes_world",
            "format_version": FORMAT_VERSION,
            "split": split,
            "seed": seed,
            "num_images": num_images,
            "num_captions": len(annotations.captions),
            "held_out_pairs": sorted(held_out),
        }
        names = annotations.write(staging, info)
        _publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info(
        "wrote %d images, %d boxes, %d captions (%s, seed %d) to %s",
        num_images, len(annotations.detections), len(annotations.captions), split, seed, out_dir,
    )  # fmt: skip
    return {"images": out_dir / "images", **{name: out_dir / f"{name}.json" for name in names}}


class _SplitAnnotations:
    """The annotation files of a split, gathered scene by scene: detection (shapes), pairs
    (colour-shape classes, not for transfer splits), grounding (one entry per caption) and captions."""

    def __init__(self, is_transfer: bool, shapes: Sequence[str], held_out: frozenset[str]) -> None:
        self.is_transfer = is_transfer
        self.shapes = list(shapes)
        self.held_out = held_out
        self.images: list[dict[str, Any]] = []
        self.detections: list[dict[str, Any]] = []
        self.pairs: list[dict[str, Any]] = []
        self.colours: list[dict[str, Any]] = []
        self.grounding_images: list[dict[str, Any]] = []
        self.groundings: list[dict[str, Any]] = []
        self.captions: list[dict[str, str]] = []

    def add(self, scene: Scene, image_id: int, file_name: str) -> None:
        self.images.append({"id": image_id, "file_name": file_name, "width": CANVAS_SIZE, "height": CANVAS_SIZE})
        for item in scene.objects:
            bbox, area = _coco_box(item.box)
            common = {"image_id": image_id, "bbox": bbox, "area": area, "iscrowd": 0}
            self.detections.append(
                {"id": len(self.detections) + 1, "category_id": self.shapes.index(item.shape) + 1, **common}
            )
            if self.is_transfer:
                continue
            colour_id = list(COLOURS).index(item.colour) + 1
            self.colours.append({"id": len(self.colours) + 1, "category_id": colour_id, **common})
            if item.pair not in self.held_out:
                self.pairs.append({"id": len(self.pairs) + 1, "category_id": PAIRS.index(item.pair) + 1, **common})
        for caption in scene.captions:
            self._add_caption(scene, caption, image_id, file_name)

    def _add_caption(self, scene: Scene, caption: Caption, image_id: int, file_name: str) -> None:
        entry_id = len(self.grounding_images) + 1
        spans = [[start, end] for _, start, end in caption.groundings]
        self.grounding_images.append(
            {
                "id": entry_id,
                "file_name": file_name,
                "width": CANVAS_SIZE,
                "height": CANVAS_SIZE,
                "caption": caption.text,
                "original_img_id": image_id,
                "tokens_positive_eval": [[span] for span in spans],
            }
        )
        for phrase_id, (obj, start, end) in enumerate(caption.groundings):
            item = scene.objects[obj]
            bbox, area = _coco_box(item.box)
            self.groundings.append(
                {
                    "id": len(self.groundings) + 1,
                    "image_id": entry_id,
                    "category_id": self.shapes.index(item.shape) + 1,
                    "bbox": bbox,
                    "area": area,
                    "iscrowd": 0,
                    "tokens_positive": [[start, end]],
                    "phrase_ids": phrase_id,
                }
            )
        self.captions.append({"file_name": file_name, "caption": caption.text})

    def write(self, folder: Path, info: dict[str, Any]) -> list[str]:
        """Write the files (and ``info``) into ``folder``; their names without ``.json``."""
        shape_categories = [
            {"id": k + 1, "name": name, "supercategory": "shape"} for k, name in enumerate(self.shapes)
        ]
        files: dict[str, Any] = {
            "detection": {"images": self.images, "annotations": self.detections, "categories": shape_categories}
        }
        if not self.is_transfer:
            pair_categories = [
                {"id": k + 1, "name": name, "supercategory": "pair"}
                for k, name in enumerate(PAIRS)
                if name not in self.held_out
            ]
            files["pairs"] = {"images": self.images, "annotations": self.pairs, "categories": pair_categories}
            colour_categories = [{"id": k + 1, "name": name, "supercategory": "colour"} for k, name in enumerate(COLOURS)]
            files["colours"] = {"images": self.images, "annotations": self.colours, "categories": colour_categories}
        files["grounding"] = {
            "images": self.grounding_images, "annotations": self.groundings, "categories": shape_categories
        }
        files["captions"] = self.captions
        files["info"] = info
        for name, content in files.items():
            _write_json(folder / f"{name}.json", content)
        return list(files)
