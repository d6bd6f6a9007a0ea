"""``glip finetune run``: adapt a GLIP model to a COCO-format detection task, on all or k-shot data.

One run: draw the k-shot subset (:mod:`.fewshot`), write the training file (categories renamed to
their prompt texts, :mod:`.prompts`), train in one of the three modes (:mod:`.tuning`), then
evaluate the saved model on a test file with the same prompt texts (``glip eval coco``'s official
prompt, which is the training caption). The run folder holds ``train.json`` (the exact training
data), the loop's ``recipe.yaml`` and ``metrics.jsonl``, ``model/`` (loadable with
``GLIP.from_pretrained``; a prompt-tuned model is only its offsets and a reference to its base,
:mod:`.prompt_tuning`) and ``metrics.json`` (test AP).

Run length: ``max_steps`` optimizer steps whatever k (a budget-matched stand-in for the official
schedule), or ``epochs`` over the few-shot set repeated as officially (:data:`.fewshot.OFFICIAL_COPIES`;
the official runs use 200 epochs with early stopping on the validation AP, which is not done here).
The learning rate follows ``schedule`` (default: no warm-up, x0.1 at 67% and 89% of the run) where
the official runs lower it when the validation AP stalls (SOLVER.USE_AUTOSTEP).

The call graph goes one way: :mod:`.study` (or :func:`finetune`) reads the task and draws the
k-shot set, :func:`run_on_data` runs one fine-tuning on it, :func:`.tuning.tune` trains.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from glip.files import write_json_atomic
from glip.transfer.data import CocoSplit, annotated_images, read_task, training_file
from glip.transfer.evaluate import model_metrics
from glip.transfer.fewshot import boxes_per_class, sample_few_shot
from glip.transfer.modes import check_mode
from glip.transfer.prompts import ClassPrompts, class_texts, sorted_categories
from glip.transfer.recipe import FinetuneRecipe
from glip.transfer.tuning import TuningJob, tune

logger = logging.getLogger(__name__)

TRAIN_FILE = "train.json"
METRICS_FILE = "metrics.json"


@dataclass
class FinetuneResult:
    """What one run produced.

    Attributes:
        model_dir: the fine-tuned model (``GLIP.from_pretrained``).
        steps: optimizer steps done.
        train_images: images of the training data.
        train_boxes: boxes per class of the training data.
        metrics: test metrics (``AP``, ``AP50``, ..., ``per_category_AP``), or None without a test file.
        seconds: wall time of training (and evaluation).
    """

    model_dir: Path
    steps: int
    train_images: int
    train_boxes: dict[str, int]
    metrics: dict[str, Any] | None
    seconds: float


def finetune(
    recipe: FinetuneRecipe,
    mode: str,
    train_split: CocoSplit,
    output_dir: str | Path,
    *,
    shots: int | None = None,
    seed: int = 0,
    prompts: ClassPrompts | None = None,
    test_split: CocoSplit | None = None,
) -> FinetuneResult:
    """Fine-tune ``recipe.model`` in ``mode`` on all or ``shots``-shot training data; evaluate on test.

    Args:
        recipe: the run settings.
        mode: ``full``, ``prompt`` or ``linear``.
        train_split: the training file and images.
        output_dir: the run folder (see the module doc); it must not hold checkpoints.
        shots: k of a k-shot run (k boxes per class, :mod:`.fewshot`); None trains on all the data.
        seed: draws the k-shot subset and seeds the training (data order, augmentation, dropout).
        prompts: descriptive class prompts (training captions and evaluation prompt).
        test_split: evaluated after training when given (``metrics.json``).

    Raises:
        ValueError / FileNotFoundError: unknown mode, unreadable or malformed file, k larger than a
            class's boxes, categories of test and train that differ; each names its file or argument.
    """
    check_mode(mode, "--mode")
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int) or shots < 1):
        raise ValueError(f"--shots: a fine-tuning run needs k >= 1 (or all the data), got {shots!r}")
    recipe.mode_settings(mode)
    data, _ = read_task(train_split, test_split)
    class_texts(data["categories"], prompts, str(train_split.annotations))
    if shots is not None:
        data = sample_few_shot(data, shots, seed, recipe.few_shot_unit, str(train_split.annotations))
    return run_on_data(recipe, mode, data, train_split, output_dir, shots=shots, seed=seed, prompts=prompts,
                       test_split=test_split, label=f"{mode} tuning")


def run_on_data(
    recipe: FinetuneRecipe,
    mode: str,
    data: dict[str, Any],
    train_split: CocoSplit,
    output_dir: str | Path,
    *,
    shots: int | None,
    seed: int,
    prompts: ClassPrompts | None,
    test_split: CocoSplit | None,
    label: str,
) -> FinetuneResult:
    """One run on training data already read, checked and sampled (``data``: the k-shot subset
    of ``train_split``'s file, or all of it); arguments as :func:`finetune`, ``label`` names the
    run's progress bar."""
    started = time.perf_counter()
    texts = class_texts(data["categories"], prompts, str(train_split.annotations))
    output_dir = Path(output_dir)
    train_file = output_dir / TRAIN_FILE
    write_json_atomic(train_file, training_file(data, texts))
    num_images = annotated_images(data)
    samples_per_epoch, max_steps = recipe.run_length(shots, num_images)
    train_boxes = boxes_per_class(data)
    logger.info("%s tuning on %s: %d images, boxes per class %s, %d steps of %d images",
                mode, "all data" if shots is None else f"{shots}-shot data (seed {seed})", num_images,
                train_boxes, max_steps, recipe.batch_size)
    names = [str(category["name"]) for category in sorted_categories(data["categories"])]
    job = TuningJob(mode, train_file, train_split.images, texts, names, samples_per_epoch, max_steps, seed,
                    output_dir, label)
    steps, model_dir = tune(recipe, job)
    metrics = None
    if test_split is not None:
        metrics = model_metrics(model_dir, test_split, prompts, recipe)
        write_json_atomic(output_dir / METRICS_FILE, metrics)
        logger.info("test AP %.4f (AP50 %.4f) on %s", metrics["AP"], metrics["AP50"], test_split.annotations)
    return FinetuneResult(model_dir, steps, num_images, train_boxes, metrics, time.perf_counter() - started)


def finetune_command(
    config: str | Path | None,
    overrides: Sequence[str],
    *,
    model: str | None,
    mode: str,
    train: CocoSplit,
    out: str | Path,
    shots: int | None = None,
    seed: int = 0,
    prompts: str | Path | None = None,
    test: CocoSplit | None = None,
) -> FinetuneResult:
    """``glip finetune run``: the recipe file (or the defaults) with ``--set`` overrides and
    ``--model``, then :func:`finetune`."""
    recipe = FinetuneRecipe.from_yaml(config, overrides)
    if model is not None:
        recipe = dataclasses.replace(recipe, model=model)
    class_prompts = ClassPrompts.from_file(prompts) if prompts is not None else None
    return finetune(recipe, mode, train, out, shots=shots, seed=seed, prompts=class_prompts, test_split=test)


# CocoSplit is imported from here by the CLI (it lives in .data).
__all__ = [
    "CocoSplit",
    "FinetuneResult",
    "finetune",
    "finetune_command",
    "run_on_data",
]
