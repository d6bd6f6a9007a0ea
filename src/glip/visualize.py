"""Drawing detections and writing ``glip detect`` outputs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from glip.files import write_json_atomic
from glip.modeling.postprocess import Detections
from glip.processing import load_image

logger = logging.getLogger(__name__)

_PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
            (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40), (128, 0, 0)]


def draw_detections(image: Image.Image, detections: Detections) -> Image.Image:
    """A copy of ``image`` with each box, its phrase and score drawn on it."""
    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    width = max(1, round(max(canvas.size) / 300))
    rows = list(zip(detections.boxes.tolist(), detections.scores.tolist(), detections.labels.tolist(),
                    detections.phrases or [""] * len(detections)))
    # Lowest scores first, so the best label of overlapping boxes is drawn on top.
    for box, score, label, phrase in sorted(rows, key=lambda row: row[1]):
        color = _PALETTE[int(label) % len(_PALETTE)]
        draw.rectangle(box, outline=color, width=width)
        text = f"{phrase or label} {score:.2f}"
        left, top, right, bottom = draw.textbbox((box[0], box[1]), text, font=font)
        y = box[1] - (bottom - top) - 2 if box[1] - (bottom - top) - 2 >= 0 else box[1]
        draw.rectangle((box[0], y, box[0] + right - left + 4, y + bottom - top + 2), fill=color)
        draw.text((box[0] + 2, y), text, fill=(255, 255, 255), font=font)
    return canvas


def detect_and_save(
    model,
    images: Sequence[str | Path],
    out: str | Path,
    classes: Sequence[str] | None = None,
    caption: str | None = None,
    spans: Sequence[tuple[int, int]] | None = None,
    threshold: float | None = None,
    min_size: int | None = None,
    max_size: int | None = None,
) -> list[dict[str, Any]]:
    """Run ``model.predict`` over image files; write ``out/detections.json`` and one picture each.

    An image that cannot be read is reported (an ``error`` entry and a log line) and the others
    are processed.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = model.build_prompts(classes, caption, spans)
    encoded = [model.encode_prompt(prompt) for prompt in prompts]
    report: list[dict[str, Any]] = []
    used_names: set[str] = set()
    for path in tqdm(list(images), desc="detect", unit="image", disable=len(images) < 2):
        path = Path(path)
        entry: dict[str, Any] = {"image": str(path)}
        try:
            image = load_image(path)
            detections = model.predict_encoded(image, encoded, threshold=threshold, min_size=min_size,
                                               max_size=max_size)
        except (OSError, ValueError, TypeError) as error:
            logger.error("%s: %s", path, error)
            entry["error"] = str(error)
            report.append(entry)
            continue
        name = path.stem
        while name in used_names:
            name += "_"
        used_names.add(name)
        picture = out / f"{name}.detections.jpg"
        draw_detections(image, detections).save(picture, quality=92)
        entry.update(detections.to_dict(), picture=str(picture))
        report.append(entry)
    write_json_atomic(out / "detections.json", report)
    return report
