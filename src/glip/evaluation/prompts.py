"""Category names and class-list prompts of the official detection evaluations.

The official evaluation (``engine/inference.py:create_queries_and_maps``) writes one caption per
group of categories: the cleaned names joined by ". ", with nothing after the last one
("person. bicycle. car"); each name is a phrase whose tokens score its category. A custom prompt
(official ``DATASETS.CAPTION_PROMPT``, used by ODinW) puts a prefix before and a suffix after a
name and may replace the name; only the name is the phrase.

This differs from the demo prompt of :func:`glip.processing.build_class_prompts` ("person .
bicycle . car . ", a separator after every name), which ``glip detect`` and the Shapes-world
evaluation use.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import BertTokenizerFast

from glip.processing import Prompt, create_positive_map

logger = logging.getLogger(__name__)

# Official DATASETS.SEPARATION_TOKENS of the GLIP-T/L configs, put between two names only.
EVAL_CLASS_SEPARATOR = ". "


def clean_name(name: str) -> str:
    """A category name as the official evaluation writes it into the prompt (``clean_name`` of
    ``engine/inference.py`` and ``data/datasets/od_to_grounding.py``).

    Everything from the first "(" to the last ")" is removed, underscores become spaces, then
    double spaces become single ones: ``"bow_(decorative_ribbons)"`` -> ``"bow "``. The result is
    not stripped (the official caption keeps such a trailing space; it adds no token).
    """
    name = re.sub(r"\(.*\)", "", name)
    name = name.replace("_", " ")
    return name.replace("  ", " ")


@dataclass(frozen=True)
class CategoryText:
    """How one category is written in the prompt: ``prefix + name + suffix``.

    Attributes:
        name: the phrase whose tokens score the category.
        prefix, suffix: context around it, not scored (official CAPTION_PROMPT "prefix"/"suffix").
    """

    name: str
    prefix: str = ""
    suffix: str = ""


def read_prompts_file(path: str | Path) -> dict[str, CategoryText]:
    """Descriptive prompts: a JSON object from category name to its prompt text.

    A value is either a string, used instead of the category name as the scored phrase
    (``{"pothole": "a hole in the road"}``), or an object ``{"prefix", "name", "suffix"}`` where only
    ``name`` is scored (``{"pothole": {"prefix": "there are some ", "name": "holes", "suffix": " on
    the road"}}``, the official ODinW form). Keys are category names as in the annotation file (or
    as cleaned by :func:`clean_name`).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read prompts file {path}: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object {{category name: prompt}}, got {type(data).__name__}")
    return {str(key): _category_text(value, f"{path}: {key!r}") for key, value in data.items()}


def _category_text(value: Any, where: str) -> CategoryText:
    if isinstance(value, str):
        return CategoryText(value)
    if isinstance(value, dict):
        unknown = set(value) - {"prefix", "name", "suffix"}
        if unknown or not isinstance(value.get("name"), str):
            raise ValueError(f"{where}: a prompt object needs a string 'name' and only 'prefix'/'suffix' besides "
                             f"(got keys {sorted(value)})")
        return CategoryText(value["name"], str(value.get("prefix", "")), str(value.get("suffix", "")))
    raise ValueError(f"{where}: a prompt must be a string or a {{prefix, name, suffix}} object, got {value!r}")


def category_texts(
    names: Sequence[str], prompts: Mapping[str, CategoryText] | None = None, source: str = "prompts"
) -> list[CategoryText]:
    """The prompt text of each category: its descriptive prompt when ``prompts`` has one for its
    name (raw or cleaned), else its cleaned name.

    Args:
        names: category names in label order, as in the annotation file.
        prompts: descriptive prompts (:func:`read_prompts_file`).
        source: where ``prompts`` come from, for error messages.

    Raises:
        ValueError: a key of ``prompts`` names no category (a typo would silently do nothing).
    """
    prompts = dict(prompts or {})
    known = set(names) | {clean_name(name) for name in names}
    unknown = sorted(set(prompts) - known)
    if unknown:
        raise ValueError(f"{source}: no category is named {', '.join(map(repr, unknown))}")
    texts = []
    for name in names:
        text = prompts.get(name, prompts.get(clean_name(name)))
        texts.append(text if text is not None else CategoryText(clean_name(name)))
    return texts


def _caption(texts: Sequence[CategoryText]) -> tuple[str, list[tuple[int, int]]]:
    """The caption of a group of categories and the character span of each name."""
    caption, spans = "", []
    for index, text in enumerate(texts):
        caption += text.prefix
        spans.append((len(caption), len(caption) + len(text.name)))
        caption += text.name + text.suffix
        if index < len(texts) - 1:
            caption += EVAL_CLASS_SEPARATOR
    return caption, spans


def build_category_prompts(
    texts: Sequence[CategoryText],
    tokenizer: BertTokenizerFast,
    max_len: int,
    chunk_size: int | None = None,
    *,
    names: Sequence[str] | None = None,
    allow_untokenized: bool = False,
) -> list[Prompt]:
    """Evaluation prompts of a category list, in groups of at most ``chunk_size`` categories that
    each fit ``max_len`` tokens (official TEST.CHUNKED_EVALUATION; a group too long for the token
    limit is split further, where the official code would truncate it).

    Labels are global: category ``i`` of ``texts`` has label id ``i + 1`` in whichever prompt holds it.

    Args:
        texts: per category, its prompt text (:func:`category_texts`), in label order.
        tokenizer: the model's tokenizer.
        max_len: token budget of one prompt, [CLS] and [SEP] included (MAX_QUERY_LEN).
        chunk_size: categories per prompt; None for as many as fit.
        names: category names for error messages (default: the texts' names).
        allow_untokenized: keep a category whose name has no token (it can never be detected),
            with a warning, instead of failing; ODinW has such a placeholder category, which the
            official evaluation keeps in its prompt.

    Raises:
        ValueError: a category's name has no token, or one category alone exceeds ``max_len``.
    """
    if len(texts) == 0:
        raise ValueError("no categories to build a prompt of")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    names = list(names) if names is not None else [text.name for text in texts]
    limit = chunk_size or len(texts)
    prompts = []
    start = 0
    while start < len(texts):
        end = min(start + limit, len(texts))
        while True:
            caption, spans = _caption(texts[start:end])
            encoding = tokenizer(caption)
            if len(encoding["input_ids"]) <= max_len:
                break
            if end - start == 1:
                raise ValueError(f"category {names[start]!r} alone needs {len(encoding['input_ids'])} tokens, "
                                 f"more than the model's {max_len}")
            end -= 1
        positive_map = create_positive_map(encoding, [[span] for span in spans], max_len)
        for row, index in enumerate(range(start, end)):
            if not bool(positive_map[row].any()):
                message = f"category {names[index]!r}: its prompt text {texts[index].name!r} has no token to score it"
                if not allow_untokenized:
                    raise ValueError(message)
                logger.warning("%s; it can never be detected", message)
        prompts.append(Prompt(
            caption=caption,
            phrases=[text.name.strip() for text in texts[start:end]],
            spans=[[span] for span in spans],
            label_ids=list(range(start + 1, end + 1)),
            positive_map=positive_map,
        ))
        start = end
    return prompts
