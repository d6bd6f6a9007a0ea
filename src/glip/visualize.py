"""Drawing detections: boxes, phrases and scores, labels placed so that they stay readable."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from glip.modeling.postprocess import Detections

_PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
            (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40), (128, 0, 0)]


Rect = tuple[int, int, int, int]  # (left, top, right, bottom), pixels, right/bottom exclusive


def _overlaps(first: Rect, second: Rect) -> bool:
    return first[0] < second[2] and second[0] < first[2] and first[1] < second[3] and second[1] < first[3]


def place_labels(boxes: Sequence[Sequence[float]], sizes: Sequence[tuple[int, int]],
                 canvas: tuple[int, int]) -> list[Rect]:
    """Where to draw each label so that labels do not cover each other.

    Labels are placed in the given order (best detection first, so it gets the best spot). Each
    tries, in turn: above its box's top-left corner, inside it below the top edge, below the box,
    then further down inside the box one label height at a time, then the same spots aligned with
    the box's right edge; the first spot that lies on the
    canvas and overlaps no label placed before is taken (if none is free, the first on the canvas:
    above the box, or inside it when there is no room above).

    Args:
        boxes: per label, its box ``(x1, y1, x2, y2)``.
        sizes: per label, the ``(width, height)`` of its rectangle.
        canvas: ``(width, height)`` of the picture.

    Returns:
        Per label, its rectangle ``(left, top, right, bottom)``.
    """
    canvas_width, canvas_height = canvas
    placed: list[Rect] = []
    for box, (width, height) in zip(boxes, sizes):
        x1, y1, x2, y2 = (int(round(value)) for value in box)
        # Aligned with the box's left edge, else with its right edge.
        lefts = [min(max(0, x), max(0, canvas_width - width)) for x in (x1, x2 + 1 - width)]
        tops = [y1 - height, y1, y2 + 1]
        tops += range(y1 + height, max(y1 + height, y2 - height + 1), height)
        tops = [top for top in tops if 0 <= top <= canvas_height - height] or [max(0, canvas_height - height)]
        spots = [(left, top, left + width, top + height) for left in lefts for top in tops]
        free = [spot for spot in spots if not any(_overlaps(spot, other) for other in placed)]
        placed.append(free[0] if free else spots[0])
    return placed


def draw_detections(image: Image.Image, detections: Detections) -> Image.Image:
    """A copy of ``image`` with each box, its phrase and score drawn on it.

    Each label is white text on a rectangle of its box's colour, placed by :func:`place_labels`
    (no label covers another while there is room); the best detection is drawn last, on top.
    """
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    line_width = max(1, round(max(canvas.size) / 300))
    rows = list(zip(detections.boxes.tolist(), detections.scores.tolist(), detections.labels.tolist(),
                    detections.phrases or [""] * len(detections)))
    rows.sort(key=lambda row: -row[1])  # best first: it gets the best label spot
    texts = [f"{phrase or label} {score:.2f}" for _, score, label, phrase in rows]
    sizes = []
    for text in texts:
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        sizes.append((right - left + 4, bottom - top + 4))
    spots = place_labels([row[0] for row in rows], sizes, canvas.size)
    colors = [_PALETTE[int(label) % len(_PALETTE)] for _, _, label, _ in rows]
    # Lowest scores first, so the best box and label of overlapping detections are drawn on top;
    # all labels after all boxes, so no box line crosses a label.
    for (box, *_), color in reversed(list(zip(rows, colors))):
        draw.rectangle(box, outline=color, width=line_width)
    for text, spot, color in reversed(list(zip(texts, spots, colors))):
        draw.rectangle((spot[0], spot[1], spot[2] - 1, spot[3] - 1), fill=color)
        text_left, text_top, _, _ = draw.textbbox((0, 0), text, font=font)
        draw.text((spot[0] + 2 - text_left, spot[1] + 2 - text_top), text, fill=(255, 255, 255), font=font)
    return canvas

