"""Test AP of a model on the task's test file, with the prompt texts it was tuned on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from glip.device import resolve_device, torch_threads
from glip.evaluation.coco import CocoEvaluation, evaluate_coco
from glip.evaluation.prompts import CategoryText
from glip.pipeline import GLIP
from glip.transfer.data import CocoSplit
from glip.transfer.prompts import ClassPrompts
from glip.transfer.recipe import FinetuneRecipe


def evaluate_split(
    model: GLIP, split: CocoSplit, prompts: ClassPrompts | None, recipe: FinetuneRecipe
) -> CocoEvaluation:
    """COCO AP of ``model`` on a test file with the official evaluation prompt (``glip eval coco``).

    The prompt is the categories in id order, each written as its prompt text (or cleaned name),
    joined by ". ": the training caption of :func:`.data.training_file`'s categories, token for
    token, so tuned prompt offsets fall on the tokens they were trained on. Labels map back to the
    file's category ids. Batching and resize are the recipe's ``eval_*`` settings; a progress bar
    is shown on stderr.
    """
    texts = {name: CategoryText(text) for name, text in prompts.texts.items()} if prompts is not None else None
    evaluation = evaluate_coco(model, split.annotations, split.images, batch_size=recipe.eval_batch_size,
                               min_size=recipe.eval_min_size, max_size=recipe.eval_max_size, prompts=texts,
                               progress=True)
    if evaluation is None:
        raise RuntimeError("evaluate_split: no evaluation came back (a distributed run's process other than 0)")
    return evaluation


def summary_metrics(evaluation: CocoEvaluation) -> dict[str, Any]:
    """``{"AP", "AP50", "AP75", "APs", "APm", "APl", "per_category_AP": {class name: AP}}``."""
    return {**evaluation.metrics, "per_category_AP": evaluation.per_category_ap}


def model_metrics(
    model: str | Path, split: CocoSplit, prompts: ClassPrompts | None, recipe: FinetuneRecipe
) -> dict[str, Any]:
    """:func:`summary_metrics` of the saved model or preset ``model``, loaded on the recipe's device
    and evaluated with its CPU threads."""
    with torch_threads(recipe.num_threads):
        loaded = GLIP.from_pretrained(model, device=resolve_device(recipe.device))
        return summary_metrics(evaluate_split(loaded, split, prompts, recipe))


__all__ = ["evaluate_split", "summary_metrics", "model_metrics"]
