"""The settings of every fine-tuning run (``glip finetune --config``): a flat dataclass read from
YAML, with per-mode changes of the official settings (:mod:`.modes`)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from glip.training.recipe import Precision, RecipeError, ScheduleRecipe, apply_override, build_dataclass
from glip.transfer.fewshot import ShotUnit, copies_for
from glip.transfer.modes import MODES, OFFICIAL_MODES, ModeSettings, check_mode

logger = logging.getLogger(__name__)

# Keys of older recipe files that no longer mean anything; read with a warning, not an error.
RETIRED_KEYS = {"progress_bar": "progress is always shown (a bar per run, a line per study run)"}


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
        precision / device / num_threads / log_every: as in :class:`glip.training.TrainRecipe`
            (official ODinW runs use fp16: USE_AMP True); ``log_every`` sets how often a run's
            ``metrics.jsonl`` gets a line, not whether progress is shown (it always is).
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
            # Relative paths (``model``) are left as written: like every CLI path and the training
            # recipe, they are relative to the current directory, not to the YAML's folder.
            data = _read_yaml(path)
        for override in overrides:
            data = apply_override(data, override)
        for key, reason in RETIRED_KEYS.items():
            if isinstance(data, dict) and key in data:
                logger.warning("%s: %s is ignored: %s", where, key, reason)
                data = {name: value for name, value in data.items() if name != key}
        try:
            return build_dataclass(cls, data)
        except RecipeError as error:
            raise RecipeError(f"{where}: {error}") from None

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON writes them (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

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

    def run_length(self, shots: int | None, num_images: int) -> tuple[int, int]:
        """``(samples per epoch, optimizer steps)`` of a run on ``num_images`` annotated images of
        ``shots``-shot data (None: all the data).

        A few-shot set is repeated within an epoch as officially (:func:`.fewshot.copies_for`), and
        an epoch holds at least one batch.
        """
        samples_per_epoch = max(copies_for(shots) * num_images, self.batch_size)
        if shots is None and self.full_data_steps:
            return samples_per_epoch, self.full_data_steps
        steps = self.max_steps or max(1, math.ceil(self.epochs * samples_per_epoch / self.batch_size))
        return samples_per_epoch, steps


def _read_yaml(path: Path) -> dict[str, Any]:
    """The mapping in a recipe file; errors name the file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as error:
        raise RecipeError(f"cannot read fine-tuning recipe {path}: {error}") from error
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: invalid YAML: {error}") from error
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of settings, got {type(data).__name__}")
    return data


__all__ = ["FinetuneRecipe", "RETIRED_KEYS"]
