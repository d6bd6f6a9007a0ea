"""Detection annotations turned into grounding prompts (class-name captions).

GLIP trains on detection data by writing the class names into a caption and grounding each box to
the characters of its class name (official ``data/datasets/od_to_grounding.py``). Two recipes:

* :func:`full_category_prompt`: every category, in the dataset's category order
  (``convert_od_to_grounding_simple`` with ``disable_shuffle=True``; COCO / ODinW fine-tuning and the
  reference training step of ``tests/reference/glip_tiny_loss``);
* :func:`sampled_category_prompt`: the image's positive classes plus randomly sampled negative classes,
  shuffled, kept within the token budget (``check_for_positive_overflow`` +
  ``convert_object_detection_to_grounding_optimized_for_od``, the Objects365 pre-training recipe with
  ``DATASETS.RANDOM_SAMPLE_NEG 85`` and ``CONTROL_PROB (0, 0, 0.5, 0)``).

Names are joined by ``separator`` (pre-training uses ". ") with nothing after the last name, e.g.
``"person. flag. helmet. rocket"``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from transformers import BertTokenizerFast

from glip import quirks
from glip.processing import Span


def clean_category_name(name: str) -> str:
    """A category name as written into a caption (official ``od_to_grounding.clean_name``).

    A parenthesised part is removed (greedily, from the first "(" to the last ")"), underscores become
    spaces and double spaces single ones: ``"bat_(animal)"`` -> ``"bat "``.
    """
    name = re.sub(r"\(.*\)", "", name)
    name = name.replace("_", " ")
    return name.replace("  ", " ")


@dataclass
class CategoryPrompt:
    """A caption made of category names.

    Attributes:
        caption: the names joined by the separator.
        label_spans: ``{label: (begin, end)}`` character span of each label's name in ``caption``,
            in caption order.
    """

    caption: str
    label_spans: dict[int, Span]


def join_category_names(
    labels: Sequence[int], names: Mapping[int, str], separator: str = quirks.TRAIN_CLASS_SEPARATOR
) -> CategoryPrompt:
    """Write the (cleaned) names of ``labels`` in the given order, ``separator`` between them.

    Args:
        labels: label ids in caption order (no duplicates).
        names: ``{label: category name}``.
        separator: text between two names (none after the last).
    """
    caption = ""
    label_spans: dict[int, Span] = {}
    for position, label in enumerate(labels):
        if position > 0:
            caption += separator
        begin = len(caption)
        caption += clean_category_name(names[label])
        label_spans[label] = (begin, len(caption))
    return CategoryPrompt(caption, label_spans)


def _name_token_count(name: str, tokenizer: BertTokenizerFast) -> int:
    """WordPiece tokens of ``"<clean name>. "``, the unit the official budget counts per class."""
    return len(tokenizer.tokenize(clean_category_name(name) + ". "))


def full_category_prompt(
    positive_labels: Sequence[int],
    names: Mapping[int, str],
    tokenizer: BertTokenizerFast,
    max_len: int = 256,
    separator: str = quirks.TRAIN_CLASS_SEPARATOR,
) -> CategoryPrompt:
    """All categories in the order of ``names`` (deterministic).

    Equals the official ``convert_od_to_grounding_simple(disable_shuffle=True, add_detection_prompt=
    False)`` whenever the whole list fits ``max_len`` tokens. The official code does not check the
    length (names beyond the limit are truncated away by the tokenizer and their boxes get an empty
    positive map); here, when the list does not fit, the image's positive classes come first, then
    as many of the others as fit, each group in category order, so that every box stays grounded.

    Args:
        positive_labels: labels of the image's boxes.
        names: ``{label: category name}`` of the whole dataset, in category order.
        tokenizer: the model's tokenizer (only used to count tokens).
        max_len: token budget, [CLS] and [SEP] included.
        separator: text between two names.
    """
    order = list(names)
    budget = max_len - tokenizer.num_special_tokens_to_add(pair=False)
    counts = {label: _name_token_count(names[label], tokenizer) for label in order}
    if sum(counts.values()) <= budget:
        return join_category_names(order, names, separator)
    positives = set(positive_labels)
    kept = _fit_budget([label for label in order if label in positives], counts, budget)
    remaining = budget - sum(counts[label] for label in kept)
    kept_set = set(kept) | set(_fit_budget([label for label in order if label not in positives], counts, remaining))
    return join_category_names([label for label in order if label in kept_set], names, separator)


def _fit_budget(labels: Sequence[int], counts: Mapping[int, int], budget: int) -> list[int]:
    """The leading labels whose token counts add up to at most ``budget``."""
    kept, used = [], 0
    for label in labels:
        used += counts[label]
        if used > budget:
            break
        kept.append(label)
    return kept


def sampled_category_prompt(
    positive_labels: Sequence[int],
    names: Mapping[int, str],
    tokenizer: BertTokenizerFast,
    rng: random.Random,
    max_len: int = 256,
    num_negatives: int = 85,
    full_negative_prob: float = 0.5,
    separator: str = quirks.TRAIN_CLASS_SEPARATOR,
) -> CategoryPrompt:
    """Positive classes plus sampled negative classes, shuffled, within ``max_len`` tokens.

    The official pre-training recipe (``od_to_grounding.py``), step by step:

    1. positives in random order; keep them while the running count of ``"name. "`` tokens stays
       within ``max_len - 2`` (``check_for_positive_overflow``; the caller drops the boxes of the
       positives left out);
    2. number of negatives: with probability ``full_negative_prob`` all ``num_negatives`` (capped by
       the number of categories), else uniform in ``1..num_negatives``
       (``generate_control_options_given_probabilities`` with CONTROL_PROB ``(0, 0, p, 0)``);
    3. that many categories sampled without replacement; the positives among them are dropped;
    4. negatives kept while the remaining budget ``max_len - 2 - positive tokens`` stays positive;
    5. negatives and positives shuffled together into one caption.

    The official TSV datasets also count ``__background__`` (label 0) among the candidate negatives;
    here only real categories are sampled.

    Args:
        positive_labels: labels of the image's boxes (repeats allowed).
        names: ``{label: category name}`` of the whole dataset.
        tokenizer: the model's tokenizer (only used to count tokens).
        rng: source of randomness (the dataset derives it from seed, epoch and index).
        max_len: token budget, [CLS] and [SEP] included.
        num_negatives: official ``DATASETS.RANDOM_SAMPLE_NEG``.
        full_negative_prob: probability of taking all ``num_negatives`` (official CONTROL_PROB[2]).
        separator: text between two names.

    Returns:
        The prompt; ``label_spans`` holds every kept positive (boxes of other labels must be dropped).
    """
    budget = max_len - tokenizer.num_special_tokens_to_add(pair=False)
    positives = sorted(set(positive_labels))
    rng.shuffle(positives)
    kept_positives, positive_tokens = [], 0
    for label in positives:
        count = _name_token_count(names[label], tokenizer)
        if positive_tokens + count > budget:
            break
        positive_tokens += count
        kept_positives.append(label)

    categories = list(names)
    full_negative = min(num_negatives, len(categories))
    if full_negative <= 0:
        num_sampled = 0
    elif rng.random() < full_negative_prob:
        num_sampled = full_negative
    else:
        num_sampled = rng.randrange(full_negative) + 1
    positive_set = set(positives)
    candidates = [label for label in rng.sample(categories, num_sampled) if label not in positive_set]

    negatives, remaining = [], budget - positive_tokens
    for label in candidates:
        remaining -= _name_token_count(names[label], tokenizer)
        if remaining <= 0:
            break
        negatives.append(label)

    labels = negatives + kept_positives
    rng.shuffle(labels)
    return join_category_names(labels, names, separator)
