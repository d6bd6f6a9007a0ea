"""Descriptive class prompts: a JSON file mapping class names to the text the prompt uses.

The GLIP paper (section 4.2, "prompt with attributes") shows that describing a new class in the
prompt ("stingray, which is flat and round") helps transfer; the official code reads such texts
from DATASETS.PREDEFINED_TEXT / CAPTION_PROMPT. Here a data set's file is a plain object::

    {"heart": "heart, a shape with two round lobes on top and a point at the bottom",
     "arrow": "arrow, a long thin shaft with a triangle at one end"}

Classes the file does not name keep their name. The texts are the class list of both the training
captions and the evaluation prompt (the same caption, "text. text. text"); labels stay mapped to the
categories (label ``i`` is the ``i``-th category in id order), so results carry the data set's
category ids. A whole text is its class's phrase: its tokens are the positive tokens in training
and their mean score is the class score. Such a file is also a ``glip eval coco --prompts`` file;
that command's other form, ``{"prefix", "name", "suffix"}`` with only the name scored (the official
CAPTION_PROMPT), would need training captions with context around the positive span, which the
detection dataset does not write, so fine-tuning refuses it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ClassPrompts:
    """Prompt text per class name.

    Attributes:
        texts: ``{class name: prompt text}``.
        source: where they come from (the file), for messages.
    """

    texts: Mapping[str, str] = field(default_factory=dict)
    source: str = "prompts"

    @classmethod
    def from_file(cls, path: str | Path) -> ClassPrompts:
        """Read a prompt file; errors name the file and the offending entry."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise FileNotFoundError(f"cannot read prompt file {path}: {error}") from error
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: malformed JSON ({error})") from error
        if not isinstance(data, dict) or not data:
            raise ValueError(f"{path}: expected a non-empty JSON object {{class name: prompt text}}")
        for name, text in data.items():
            if isinstance(text, dict):
                raise ValueError(f"{path}: the prompt of class {name!r} is a {{prefix, name, suffix}} object; "
                                 "fine-tuning takes whole prompt texts only (strings)")
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"{path}: the prompt of class {name!r} must be a non-empty string, got {text!r}")
            if any(character in text for character in "()_"):
                # Training captions clean names as officially (glip.data.prompts.clean_category_name):
                # a parenthesised part and underscores would differ between training and evaluation.
                raise ValueError(f"{path}: the prompt of class {name!r} contains '(', ')' or '_', which training "
                                 f"captions remove; write it without them")
        return cls(dict(data), str(path))


def sorted_categories(categories: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Categories in id order: label ``i`` (1-based) is the ``i``-th of them."""
    return sorted(categories, key=lambda category: category["id"])


def class_texts(categories: Sequence[Mapping[str, Any]], prompts: ClassPrompts | None, where: str) -> list[str]:
    """The class list of the prompt: each category's prompt text (or name), in id order."""
    ordered = sorted_categories(categories)
    names = [str(category["name"]) for category in ordered]
    if prompts is None:
        return names
    unknown = sorted(set(prompts.texts) - set(names))
    if unknown:
        raise ValueError(f"{prompts.source}: class {unknown[0]!r} is not a category of {where} "
                         f"(categories: {', '.join(names)})")
    texts = [prompts.texts.get(name, name) for name in names]
    if len(set(texts)) != len(texts):
        repeated = next(text for text in texts if texts.count(text) > 1)
        raise ValueError(f"{prompts.source}: two classes of {where} would share the prompt text {repeated!r}")
    return texts


def label_to_category(categories: Sequence[Mapping[str, Any]]) -> dict[int, int]:
    """``{label: category id}``: label ``i`` is the ``i``-th category in id order."""
    return {index + 1: int(category["id"]) for index, category in enumerate(sorted_categories(categories))}


__all__ = ["ClassPrompts", "class_texts", "label_to_category", "sorted_categories"]
