"""Losses of a model on an annotation file, computed exactly as a training step computes them.

:func:`batch_losses` is the forward half of a training step (the loop in :mod:`.loop` calls it);
:func:`compute_losses` runs it over a COCO / MDETR / ODVG annotation file, by default without any
randomness (no augmentation, all classes in category order, no dropout), e.g. to compare a
converted checkpoint with the official training code or to track a validation loss.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from transformers import BertTokenizerFast

from glip.data import (
    Batch,
    Collator,
    DatasetOptions,
    DetectionDataset,
    GroundingDataset,
    ODVGDataset,
    Target,
    TrainTransforms,
)
from glip.losses import GLIPCriterion
from glip.modeling.anchors import AnchorGenerator
from glip.modeling.box_coder import BoxCoder
from glip.modeling.fpn import FPN
from glip.modeling.fusion import BiAttention
from glip.modeling.swin import SwinBlock

# The official training input size (INPUT.MIN_SIZE_TRAIN / MAX_SIZE_TRAIN).
DEFAULT_MIN_SIZE = 800
DEFAULT_MAX_SIZE = 1333


# --------------------------------------------------------------------------------------------------
# Stochastic layers
# --------------------------------------------------------------------------------------------------


@contextmanager
def deterministic_train_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Training mode with every stochastic layer switched off, restored on exit.

    Inside, ``model`` is in training mode (what depends on ``training``, such as gradient
    checkpointing, frozen stages kept in eval, behaves as in training) but dropout (BERT, the
    tower's text layers), the fusion's attention dropout, Swin's stochastic depth (drop path) and
    the FPN's DropBlock are all off, so the outputs are a deterministic function of the inputs. The
    official loss reference (``tests/reference/glip_tiny_loss``) was made this way.
    """
    modes = [(module, module.training) for module in model.modules()]
    zeroed: list[tuple[nn.Module, str, Any]] = []

    def zero(module: nn.Module, name: str) -> None:
        zeroed.append((module, name, getattr(module, name)))
        setattr(module, name, 0.0)

    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.eval()
        elif isinstance(module, SwinBlock):
            zero(module, "drop_path_rate")
        elif isinstance(module, FPN):
            zero(module, "drop_block_prob")
        elif isinstance(module, BiAttention):
            zero(module, "dropout")
        elif isinstance(getattr(module, "dropout_prob", None), float):
            # transformers' SDPA BERT attention reads a float, not a Dropout module.
            zero(module, "dropout_prob")
    try:
        yield model
    finally:
        for module, name, value in zeroed:
            setattr(module, name, value)
        for module, training in modes:
            module.training = training


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def detect_annotation_kind(path: str | Path) -> str:
    """``"odvg"`` for ``.jsonl``; ``"grounding"`` for MDETR JSON (every image has a ``caption``);
    ``"coco"`` for COCO detection JSON (with ``categories``)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return "odvg"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise FileNotFoundError(f"cannot read annotation file {path}: {error}") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: malformed JSON ({error})") from error
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list):
        raise ValueError(f"{path}: expected a COCO or MDETR JSON object with an 'images' list")
    if images and all(isinstance(image, dict) and "caption" in image for image in images):
        return "grounding"
    if "categories" in data:
        return "coco"
    raise ValueError(f"{path}: neither MDETR grounding (images with 'caption') nor COCO detection ('categories')")


def open_dataset(
    kind: str,
    annotations: str | Path,
    images: str | Path,
    tokenizer: BertTokenizerFast,
    options: DatasetOptions,
    label_map: str | Path | None = None,
    ignore_objects_from: str | Path | None = None,
) -> Dataset:
    """The dataset of one annotation source.

    Args:
        kind: ``coco``, ``grounding`` or ``odvg``.
        annotations: the annotation file.
        images: the folder image file names are relative to.
        tokenizer: the model's tokenizer.
        options: transforms, prompt sampling, query length and seed (:class:`glip.data.DatasetOptions`).
        label_map: ODVG only, ``{label: name}`` JSON.
        ignore_objects_from: coco only, the COCO file of every object (see :class:`DetectionDataset`).
    """
    if ignore_objects_from is not None and kind != "coco":
        raise ValueError(f"{annotations}: ignore_objects_from is only read for COCO detection files, not {kind}")
    if kind == "coco":
        return DetectionDataset(annotations, images, tokenizer, options, ignore_objects_from=ignore_objects_from)
    if kind == "grounding":
        return GroundingDataset(annotations, images, tokenizer, options)
    if kind == "odvg":
        return ODVGDataset(annotations, images, tokenizer, options, label_map=label_map)
    raise ValueError(f"unknown data source kind {kind!r}; expected coco, grounding or odvg")


# --------------------------------------------------------------------------------------------------
# The forward half of a training step
# --------------------------------------------------------------------------------------------------


def loss_targets(batch: Batch, device: torch.device) -> list[Target]:
    """The batch's ground truth (boxes and binarised positive maps, what the criterion reads) on ``device``."""
    return [target.to(device) for target in batch.targets]


def batch_losses(
    model: nn.Module,
    criterion: GLIPCriterion,
    anchor_generator: AnchorGenerator,
    batch: Batch,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, Tensor]:
    """Forward a collated batch and compute the official loss terms.

    Args:
        model: GLIP (possibly wrapped in DistributedDataParallel), in the mode the caller chose.
        criterion: the GLIP losses.
        anchor_generator: the model's anchors.
        batch: a :class:`glip.data.Batch`.
        device: where the model lives.
        autocast_dtype: run the network under autocast with this dtype (the losses stay float32).

    Returns:
        ``{"loss_reg", "loss_centerness", "loss_cls", "loss_dot_product_token"}`` scalars.
    """
    images = batch.images.to(device, non_blocking=True)
    input_ids = batch.input_ids.to(device, non_blocking=True)
    attention_mask = batch.attention_mask.to(device, non_blocking=True)
    autocast = (
        torch.autocast(device_type=device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else nullcontext()
    )
    with autocast:
        outputs = model(images, input_ids, attention_mask)
    grid_sizes = [tuple(level.shape[-2:]) for level in outputs.box_regression]
    anchors = anchor_generator(grid_sizes, device)
    return criterion(outputs, anchors, loss_targets(batch, device), attention_mask)


def compute_losses(
    model: nn.Module,
    annotations: str | Path,
    images: str | Path,
    deterministic: bool = True,
    batch_size: int | None = None,
    *,
    min_sizes: int | Sequence[int] = DEFAULT_MIN_SIZE,
    max_size: int | None = DEFAULT_MAX_SIZE,
    flip_prob: float = 0.5,
    seed: int = 0,
) -> dict[str, float]:
    """Training losses of ``model`` on an annotation file and its image folder.

    The batch is built as training builds it (dataset, transforms, collate, the criterion's
    targets), in the file's image order (ascending ids).

    Args:
        model: a :class:`glip.pipeline.GLIP` (it provides the tokenizer for the data; the anchors
            and config are the network's own).
        annotations: COCO detection JSON, MDETR grounding JSON or ODVG jsonl (told apart by
            :func:`detect_annotation_kind`).
        images: the image folder.
        deterministic: no random augmentation (one size, no flip), detection captions of all
            classes in category order (no shuffling, no negative sampling), and dropout, drop path
            and DropBlock off (:func:`deterministic_train_mode`). Otherwise the model runs in plain
            training mode with the given augmentation and sampled prompts.
        batch_size: images per forward pass; None puts all images in one batch. With several
            batches the result is the image-weighted mean of the per-batch losses.
        min_sizes: shorter side (one value when deterministic; a list to draw from otherwise).
        max_size: cap of the longer side (None or 0: no cap).
        flip_prob: horizontal flip probability when not deterministic.
        seed: seed of the per-sample random sources when not deterministic.

    Returns:
        ``{"loss_reg", "loss_centerness", "loss_cls", "loss_dot_product_token"}`` as floats
        (official names; ``loss_cls`` is always 0).
    """
    sizes = (min_sizes,) if isinstance(min_sizes, int) else tuple(min_sizes)
    if deterministic and len(sizes) != 1:
        raise ValueError(f"deterministic losses need one min size, got {list(sizes)}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    config = model.config
    transforms = TrainTransforms(
        sizes,
        max_size or None,
        0.0 if deterministic else flip_prob,
        pixel_mean=config.input.pixel_mean,
        pixel_std=config.input.pixel_std,
    )
    options = DatasetOptions(
        transforms, deterministic=deterministic, max_query_len=config.language.max_query_len, seed=seed
    )
    dataset = open_dataset(detect_annotation_kind(annotations), annotations, images, model.tokenizer, options)
    if len(dataset) == 0:
        raise ValueError(f"{annotations}: no image with a usable box")
    collator = Collator(model.tokenizer, config.language.max_query_len, config.input.size_divisibility)
    criterion = GLIPCriterion(BoxCoder())
    device = next(model.parameters()).device
    chunk = batch_size or len(dataset)

    totals: dict[str, float] = {}
    counted = 0
    mode = deterministic_train_mode(model) if deterministic else _plain_train_mode(model)
    with mode, torch.no_grad():
        for start in range(0, len(dataset), chunk):
            batch = collator([dataset[index] for index in range(start, min(start + chunk, len(dataset)))])
            if batch is None:
                continue
            losses = batch_losses(model, criterion, model.anchor_generator, batch, device)
            weight = len(batch.targets)
            for name, value in losses.items():
                totals[name] = totals.get(name, 0.0) + float(value) * weight
            counted += weight
    if counted == 0:
        raise ValueError(f"{annotations}: none of the images in {images} could be read")
    return {name: total / counted for name, total in totals.items()}


@contextmanager
def _plain_train_mode(model: nn.Module) -> Iterator[nn.Module]:
    modes = [(module, module.training) for module in model.modules()]
    model.train()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
