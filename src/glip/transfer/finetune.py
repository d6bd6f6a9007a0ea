"""``glip finetune``: adapt a GLIP model to a COCO-format detection task, on all or k-shot data.

One run: draw the k-shot subset (:mod:`.fewshot`), write the training file (categories renamed to
their prompt texts, :mod:`.prompts`), train with the training loop (:func:`glip.training.train`)
in one of the three modes (:mod:`.modes`), then evaluate the saved model on a test file with the
same prompt texts (``glip eval coco``'s official prompt, which is the training caption). The run
folder holds ``train.json`` (the exact training data), the loop's ``recipe.yaml`` and
``metrics.jsonl``, ``model/`` (loadable with ``GLIP.from_pretrained``; a prompt-tuned model brings
its offsets) and ``metrics.json`` (test AP).

Run length: ``max_steps`` optimizer steps whatever k (a budget-matched stand-in for the official
schedule), or ``epochs`` over the few-shot set repeated as officially (:data:`.fewshot.OFFICIAL_COPIES`;
the official runs use 200 epochs with early stopping on the validation AP, which is not done here).
The learning rate follows ``schedule`` (default: no warm-up, x0.1 at 67% and 89% of the run) where
the official runs lower it when the validation AP stalls (SOLVER.USE_AUTOSTEP).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from glip.evaluation.coco import CocoEvaluation, evaluate_coco, read_coco
from glip.evaluation.prompts import CategoryText
from glip.pipeline import GLIP
from glip.training import checkpoint as checkpoints
from glip.training.loop import TrainCallbacks, resolve_device, train
from glip.training.recipe import (
    DataRecipe,
    DataSource,
    OptimizerRecipe,
    Precision,
    RecipeError,
    ScheduleRecipe,
    TrainRecipe,
    apply_override,
    build_dataclass,
)
from glip.transfer.fewshot import ShotUnit, boxes_per_class, copies_for, sample_few_shot
from glip.transfer.modes import MODES, OFFICIAL_MODES, ModeSettings, apply_mode, check_mode
from glip.transfer.prompts import ClassPrompts, class_texts, sorted_categories
from glip.files import write_json_atomic

logger = logging.getLogger(__name__)

TRAIN_FILE = "train.json"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class CocoSplit:
    """A COCO detection file and the folder its image file names are relative to."""

    annotations: Path
    images: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "annotations", Path(self.annotations))
        object.__setattr__(self, "images", Path(self.images))

    def check(self, name: str) -> None:
        """Fail early, naming the ``name`` argument, when a path is missing."""
        if not self.annotations.is_file():
            raise FileNotFoundError(f"{name}: annotation file {self.annotations} does not exist")
        if not self.images.is_dir():
            raise FileNotFoundError(f"{name}: image folder {self.images} does not exist")


@dataclass(frozen=True)
class FinetuneRecipe:
    """Settings of every fine-tuning run (YAML: :meth:`from_yaml`); defaults are the official ODinW
    fine-tuning values (:mod:`.modes`) unless a comment says otherwise.

    Attributes:
        model: preset name or model directory to start from.
        batch_size: images per step (SOLVER.IMS_PER_BATCH 4).
        max_steps: optimizer steps per run, whatever k; 0 = use ``epochs``. The default is a small
            budget, not the official one.
        epochs: with ``max_steps`` 0: epochs over the few-shot set repeated as officially
            (official: 200, with early stopping).
        full_data_steps: optimizer steps of a full-data run (0: ``max_steps`` / ``epochs`` as for
            k-shot runs). A step budget sized for a handful of images would stop a full-data run
            before it has seen its data once; the official full-data runs train for epochs.
        min_sizes / max_size / flip_prob: training resize and flip (ODinW configs: 800 / 1333).
        num_workers: data-loading processes.
        modes: per-mode changes of :data:`.modes.OFFICIAL_MODES`, e.g. ``{prompt: {lr: 0.01}}``.
        schedule: learning-rate schedule of a run (no warm-up: ODinW configs' WARMUP_ITERS 0).
        clip_grad_norm: full-model gradient clipping (CLIP_GRADIENTS 1.0).
        few_shot_unit: ``boxes`` (exactly k boxes per class) or ``images`` (official rule).
        precision / device / num_threads / log_every / progress_bar: as in
            :class:`glip.training.TrainRecipe` (official ODinW runs use fp16: USE_AMP True).
        eval_batch_size / eval_min_size / eval_max_size: test-time batching and resize (None: the
            model config's test size).
        keep_checkpoint: keep the run's resumable checkpoint (with optimizer state) next to the model.
    """

    model: str = "glip_t"
    batch_size: int = 4
    max_steps: int = 50
    epochs: int = 0
    full_data_steps: int = 0
    min_sizes: tuple[int, ...] = (800,)
    max_size: int = 1333
    flip_prob: float = 0.5
    num_workers: int = 2
    modes: dict[str, Any] = field(default_factory=dict)
    schedule: ScheduleRecipe = field(default_factory=lambda: ScheduleRecipe(warmup_steps=0))
    clip_grad_norm: float = 1.0
    few_shot_unit: ShotUnit = "boxes"
    precision: Precision = "fp32"
    device: str = "auto"
    num_threads: int = 0
    log_every: int = 10
    progress_bar: bool = True
    eval_batch_size: int = 8
    eval_min_size: int | None = None
    eval_max_size: int | None = None
    keep_checkpoint: bool = False

    def __post_init__(self) -> None:
        problems = []
        if (self.max_steps > 0) == (self.epochs > 0):
            problems.append(f"give exactly one of max_steps or epochs (> 0), got max_steps={self.max_steps}, "
                            f"epochs={self.epochs}")
        for name in ("batch_size", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if min(self.max_steps, self.epochs, self.full_data_steps, self.num_threads, self.num_workers) < 0:
            problems.append("max_steps, epochs, full_data_steps, num_threads and num_workers must be >= 0")
        for mode in self.modes:
            if mode not in MODES:
                problems.append(f"modes.{mode}: unknown tuning mode; expected one of {', '.join(MODES)}")
        if problems:
            raise RecipeError("invalid fine-tuning recipe: " + "; ".join(problems))
        for mode in self.modes:
            self.mode_settings(mode)  # checks the keys and types of the overrides

    @classmethod
    def from_yaml(cls, path: str | Path | None, overrides: Sequence[str] = ()) -> FinetuneRecipe:
        """Read a recipe file (None: the defaults) and apply ``key=value`` overrides.

        Raises:
            RecipeError: unreadable file, unknown key or bad value, naming the file and key.
        """
        data: Any = {}
        where = "--set"
        if path is not None:
            path = Path(path)
            where = str(path)
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except OSError as error:
                raise RecipeError(f"cannot read fine-tuning recipe {path}: {error}") from error
            except yaml.YAMLError as error:
                raise RecipeError(f"{path}: invalid YAML: {error}") from error
            if not isinstance(data, dict):
                raise RecipeError(f"{path}: a recipe is a mapping of settings, got {type(data).__name__}")
            model = data.get("model")
            if isinstance(model, str) and (path.resolve().parent / model).is_dir():
                data["model"] = str(path.resolve().parent / model)
        for override in overrides:
            data = apply_override(data, override)
        try:
            return build_dataclass(cls, data)
        except RecipeError as error:
            raise RecipeError(f"{where}: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def mode_settings(self, mode: str) -> ModeSettings:
        """The official settings of ``mode`` with this recipe's changes."""
        check_mode(mode)
        changes = self.modes.get(mode) or {}
        if not isinstance(changes, dict):
            raise RecipeError(f"modes.{mode}: expected a mapping of settings, got {changes!r}")
        merged = {**dataclasses.asdict(OFFICIAL_MODES[mode]), **changes}
        settings = build_dataclass(ModeSettings, merged, f"modes.{mode}")
        if mode != "full" and settings.train_language:
            raise RecipeError(f"modes.{mode}.train_language: only full fine-tuning trains the language model")
        return settings


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


def read_detection_file(path: str | Path) -> dict[str, Any]:
    """A COCO detection file, checked enough for sampling and prompting; errors name the file."""
    data = read_coco(path)
    categories, images, annotations = data["categories"], data["images"], data["annotations"]
    if not isinstance(categories, list) or not categories:
        raise ValueError(f"{path}: 'categories' must be a non-empty list")
    seen: set[int] = set()
    for index, category in enumerate(categories):
        if (not isinstance(category, dict) or isinstance(category.get("id"), bool)
                or not isinstance(category.get("id"), int) or not isinstance(category.get("name"), str)
                or not category["name"].strip()):
            raise ValueError(f"{path}: categories[{index}] needs an integer 'id' and a non-empty 'name'")
        if category["id"] in seen:
            raise ValueError(f"{path}: categories[{index}]: duplicate category id {category['id']}")
        seen.add(category["id"])
    if not isinstance(images, list) or not all(isinstance(i, dict) and "id" in i and "file_name" in i
                                               for i in images):
        raise ValueError(f"{path}: 'images' must be a list of objects with 'id' and 'file_name'")
    for index, annotation in enumerate(annotations if isinstance(annotations, list) else [None]):
        if not isinstance(annotation, dict) or not {"image_id", "category_id", "bbox"} <= set(annotation):
            raise ValueError(f"{path}: annotations[{index}] needs 'image_id', 'category_id' and 'bbox'")
    return data


def check_same_categories(train: dict[str, Any], test: dict[str, Any], train_file: Path, test_file: Path) -> None:
    """The test file must have the training file's categories (ids and names)."""
    pairs = [[(c["id"], c["name"]) for c in sorted_categories(data["categories"])] for data in (train, test)]
    if pairs[0] != pairs[1]:
        raise ValueError(f"{test_file}: its categories {pairs[1]} differ from those of the training file "
                         f"{train_file} {pairs[0]}")


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
    started = time.perf_counter()
    check_mode(mode, "--mode")
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int) or shots < 1):
        raise ValueError(f"--shots: a fine-tuning run needs k >= 1 (or all the data), got {shots!r}")
    settings = recipe.mode_settings(mode)
    train_split.check("--train")
    data = read_detection_file(train_split.annotations)
    texts = class_texts(data["categories"], prompts, str(train_split.annotations))
    test_data = None
    if test_split is not None:
        test_split.check("--test")
        test_data = read_detection_file(test_split.annotations)
        check_same_categories(data, test_data, train_split.annotations, test_split.annotations)
    if shots is not None:
        data = sample_few_shot(data, shots, seed, recipe.few_shot_unit, str(train_split.annotations))
    output_dir = Path(output_dir)
    train_file = output_dir / TRAIN_FILE
    write_json_atomic(train_file, training_file(data, texts))

    annotated = {annotation["image_id"] for annotation in data["annotations"]}
    num_images = sum(1 for image in data["images"] if image["id"] in annotated)
    # Repeat a few-shot set as officially; at least one batch per epoch.
    samples_per_epoch = max(copies_for(shots) * num_images, recipe.batch_size)
    max_steps = recipe.max_steps or max(1, math.ceil(recipe.epochs * samples_per_epoch / recipe.batch_size))
    if shots is None and recipe.full_data_steps:
        max_steps = recipe.full_data_steps
    train_recipe = TrainRecipe(
        model=recipe.model,
        pretrained=True,
        data=DataRecipe(
            sources=(DataSource("coco", str(train_file), str(train_split.images)),),
            min_sizes=recipe.min_sizes,
            max_size=recipe.max_size,
            flip_prob=recipe.flip_prob,
            # Captions of all classes in category order (official DATASETS.DISABLE_SHUFFLE True).
            full_category_prompts=True,
            num_workers=recipe.num_workers,
            samples_per_epoch=samples_per_epoch,
        ),
        optimizer=OptimizerRecipe(lr=settings.lr, language_lr=settings.language_lr,
                                  weight_decay=settings.weight_decay, clip_grad_norm=recipe.clip_grad_norm),
        schedule=recipe.schedule,
        batch_size=recipe.batch_size,
        max_steps=max_steps,
        precision=recipe.precision,
        freeze_backbone_at=settings.freeze_backbone_at,
        freeze_language=not settings.train_language,
        checkpoint_every=max_steps,
        keep_checkpoints=1,
        log_every=recipe.log_every,
        seed=seed,
        output_dir=str(output_dir),
        device=recipe.device,
        num_threads=recipe.num_threads,
        progress_bar=recipe.progress_bar,
    )
    train_boxes = boxes_per_class(data)
    logger.info("%s tuning on %s: %d images, boxes per class %s, %d steps of %d images",
                mode, "all data" if shots is None else f"{shots}-shot data (seed {seed})", num_images,
                train_boxes, max_steps, recipe.batch_size)
    summary = train(train_recipe, callbacks=TrainCallbacks(prepare_model=lambda model: apply_mode(model, mode, texts)))
    if not recipe.keep_checkpoint:
        for path in checkpoints.list_checkpoints(output_dir):
            path.unlink()
        (output_dir / checkpoints.LATEST_FILE).unlink(missing_ok=True)

    metrics = None
    model_dir = Path(summary["model_dir"])
    if test_split is not None:
        with torch_threads(recipe.num_threads):
            model = GLIP.from_pretrained(model_dir, device=resolve_device(recipe.device))
            metrics = summary_metrics(evaluate_split(model, test_split, prompts, recipe))
        write_json_atomic(output_dir / METRICS_FILE, metrics)
        logger.info("test AP %.4f (AP50 %.4f) on %s", metrics["AP"], metrics["AP50"], test_split.annotations)
    return FinetuneResult(model_dir, int(summary["steps"]), num_images, train_boxes, metrics,
                          time.perf_counter() - started)


def training_file(data: dict[str, Any], texts: Sequence[str]) -> dict[str, Any]:
    """The COCO dict to train on: categories in id order, each named by its prompt text, so that
    the training captions are the evaluation prompt's class list."""
    renamed = [{**category, "name": text} for category, text in zip(sorted_categories(data["categories"]), texts)]
    return {**data, "categories": renamed}


def evaluate_split(
    model: GLIP, split: CocoSplit, prompts: ClassPrompts | None, recipe: FinetuneRecipe
) -> CocoEvaluation:
    """COCO AP of ``model`` on a test file with the official evaluation prompt (``glip eval coco``).

    The prompt is the categories in id order, each written as its prompt text (or cleaned name),
    joined by ". ": the training caption of :func:`training_file`'s categories, token for token,
    so tuned prompt offsets fall on the tokens they were trained on. Labels map back to the file's
    category ids.
    """
    texts = {name: CategoryText(text) for name, text in prompts.texts.items()} if prompts is not None else None
    evaluation = evaluate_coco(model, split.annotations, split.images, batch_size=recipe.eval_batch_size,
                               min_size=recipe.eval_min_size, max_size=recipe.eval_max_size, prompts=texts,
                               progress=recipe.progress_bar)
    if evaluation is None:
        raise RuntimeError("evaluate_split: no evaluation came back (a distributed run's process other than 0)")
    return evaluation


def summary_metrics(evaluation: CocoEvaluation) -> dict[str, Any]:
    """``{"AP", "AP50", "AP75", "APs", "APm", "APl", "per_category_AP": {class name: AP}}``."""
    return {**evaluation.metrics, "per_category_AP": evaluation.per_category_ap}


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run with ``count`` torch CPU threads (0: leave as is), restored on exit."""
    previous = torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


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


__all__ = [
    "CocoSplit",
    "FinetuneRecipe",
    "FinetuneResult",
    "evaluate_split",
    "finetune",
    "finetune_command",
    "read_detection_file",
    "summary_metrics",
    "training_file",
]
