"""The core of one run: the training loop on a prepared training file in one tuning mode.

The mode decides what trains (:func:`.modes.apply_mode`) and its optimiser settings; a progress
bar counts the steps whatever the recipe's logging settings; the resumable checkpoint is removed
unless kept; a prompt-tuned model is saved as its offsets and a reference to its base
(:mod:`.prompt_tuning`), other modes as the whole network (``GLIP.from_pretrained``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from glip.pipeline import GLIP
from glip.training import checkpoint as checkpoints
from glip.training.loop import TrainCallbacks, train
from glip.training.recipe import DataRecipe, DataSource, OptimizerRecipe, TrainRecipe
from glip.transfer.modes import apply_mode
from glip.transfer.prompt_tuning import base_reference, save_prompt_tuned
from glip.transfer.recipe import FinetuneRecipe


@dataclass(frozen=True)
class TuningJob:
    """What one run trains on and for how long.

    Attributes:
        mode: ``full``, ``prompt`` or ``linear``.
        train_file: the COCO training file (categories named by their prompt texts).
        images: the folder its image file names are relative to.
        texts: the class texts of the training prompt, in label order.
        class_names: the class names those texts stand for (saved with tuned prompts).
        samples_per_epoch: images per epoch (a few-shot set repeated).
        max_steps: optimizer steps.
        seed: data order, augmentation and dropout.
        output_dir: the run folder.
        label: the progress bar's description.
    """

    mode: str
    train_file: Path
    images: Path
    texts: Sequence[str]
    class_names: Sequence[str]
    samples_per_epoch: int
    max_steps: int
    seed: int
    output_dir: Path
    label: str = "train"


def tune(recipe: FinetuneRecipe, job: TuningJob) -> tuple[int, Path]:
    """Train ``recipe.model`` as ``job`` says and save it.

    Returns:
        ``(optimizer steps done, model folder)``.
    """
    trained: list[GLIP] = []
    with tqdm(total=job.max_steps, desc=job.label, unit="step", dynamic_ncols=True) as bar:

        def step_done(step: int, metrics: dict[str, float]) -> None:
            bar.update(1)
            if "loss" in metrics:
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)

        callbacks = TrainCallbacks(prepare_model=lambda model: apply_mode(model, job.mode, job.texts, job.class_names),
                                   on_model_ready=trained.append, on_step_end=step_done)
        summary = train(train_recipe(recipe, job), callbacks=callbacks)
    if not recipe.keep_checkpoint:
        for path in checkpoints.list_checkpoints(job.output_dir):
            path.unlink()
        (job.output_dir / checkpoints.LATEST_FILE).unlink(missing_ok=True)
    model_dir = Path(summary["model_dir"])
    if job.mode == "prompt":
        # The loop saved the whole network; everything but the offsets is the starting model.
        save_prompt_tuned(trained[0], model_dir, base_reference(recipe.model), job.class_names)
    return int(summary["steps"]), model_dir


def train_recipe(recipe: FinetuneRecipe, job: TuningJob) -> TrainRecipe:
    """The training loop's recipe of ``job``: the mode's optimiser settings and frozen parts."""
    settings = recipe.mode_settings(job.mode)
    return TrainRecipe(
        model=recipe.model,
        pretrained=True,
        data=DataRecipe(
            sources=(DataSource("coco", str(job.train_file), str(job.images)),),
            min_sizes=recipe.min_sizes,
            max_size=recipe.max_size,
            flip_prob=recipe.flip_prob,
            # Captions of all classes in category order (official DATASETS.DISABLE_SHUFFLE True).
            full_category_prompts=True,
            num_workers=recipe.num_workers,
            samples_per_epoch=job.samples_per_epoch,
        ),
        optimizer=OptimizerRecipe(lr=settings.lr, language_lr=settings.language_lr,
                                  weight_decay=settings.weight_decay, clip_grad_norm=recipe.clip_grad_norm),
        schedule=recipe.schedule,
        batch_size=recipe.batch_size,
        max_steps=job.max_steps,
        precision=recipe.precision,
        freeze_backbone_at=settings.freeze_backbone_at,
        freeze_language=not settings.train_language,
        checkpoint_every=job.max_steps,
        keep_checkpoints=1,
        log_every=recipe.log_every,
        seed=job.seed,
        output_dir=str(job.output_dir),
        device=recipe.device,
        num_threads=recipe.num_threads,
        # This module draws the run's bar (named after the run) whatever the recipe says.
        progress_bar=False,
    )


__all__ = ["TuningJob", "train_recipe", "tune"]
