"""Optimizer parameter groups, the learning-rate schedule and the weight EMA.

Official ``solver/build.py`` (``make_optimizer``, ``make_lr_scheduler``), ``solver/lr_scheduler.py``
and ``utils/ema.py``.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from glip import quirks
from glip.training.recipe import OptimizerRecipe, ScheduleRecipe

# Parameters of these modules are "norm" parameters for the weight-decay factor. The official rule
# tests the parameter NAME for "norm"/"Norm"; by name it misses the DyConv GroupNorms (officially
# named ``DyConv.k.bn``), which are norms here. This matters only when the factor is not 1 (no
# official config changes it).
NORM_LAYERS: tuple[type[nn.Module], ...] = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


def parameter_groups(
    model: nn.Module,
    *,
    lr: float,
    language_lr: float,
    weight_decay: float,
    backbone_lr_factor: float = 1.0,
    bias_lr_factor: float = 2.0,
    bias_weight_decay: float = 0.0,
    norm_weight_decay_factor: float = 1.0,
) -> list[dict[str, Any]]:
    """Trainable parameters grouped by learning rate and weight decay, with the official rules.

    Per parameter (``make_optimizer``), in this order: lr = ``language_lr`` for the BERT language
    backbone (``language.``), ``lr * backbone_lr_factor`` for the Swin body (``backbone.``), else
    ``lr``; if the name contains "bias" (as officially, this also catches Swin's
    ``relative_position_bias_table`` and the head's ``bias_lang`` / ``bias0``): lr x
    ``bias_lr_factor`` and weight decay = ``bias_weight_decay``; weight decay of normalisation
    layers x ``norm_weight_decay_factor``. Frozen parameters are left out. The official code makes
    one group per parameter; parameters with equal settings share a group here (same updates).

    Args:
        model: the unwrapped model (our parameter names).

    Returns:
        ``[{"name", "params", "lr", "weight_decay"}]`` in order of first appearance.
    """
    norm_parameters = {
        id(parameter)
        for module in model.modules()
        if isinstance(module, NORM_LAYERS)
        for parameter in module.parameters(recurse=False)
    }
    groups: dict[str, dict[str, Any]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if name.startswith("language."):
            part, group_lr = "language", language_lr
        elif name.startswith("backbone."):
            part, group_lr = "backbone", lr * backbone_lr_factor
        else:
            part, group_lr = "base", lr
        group_decay = weight_decay
        is_bias = "bias" in name
        if is_bias:
            group_lr *= bias_lr_factor
            group_decay = bias_weight_decay
        is_norm = id(parameter) in norm_parameters
        if is_norm:
            group_decay *= norm_weight_decay_factor
        key = part + (".norm" if is_norm else "") + (".bias" if is_bias else "")
        group = groups.setdefault(key, {"name": key, "params": [], "lr": group_lr, "weight_decay": group_decay})
        group["params"].append(parameter)
    return list(groups.values())


def build_optimizer(model: nn.Module, recipe: OptimizerRecipe) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups` (official SOLVER.OPTIMIZER ADAMW)."""
    groups = parameter_groups(
        model,
        lr=recipe.lr,
        language_lr=recipe.language_lr,
        weight_decay=recipe.weight_decay,
        backbone_lr_factor=recipe.backbone_lr_factor,
        bias_lr_factor=recipe.bias_lr_factor,
        bias_weight_decay=recipe.bias_weight_decay,
        norm_weight_decay_factor=recipe.norm_weight_decay_factor,
    )
    if not groups:
        raise ValueError("the model has no trainable parameter (everything is frozen)")
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=recipe.betas, eps=recipe.eps)


def resolve_milestones(milestones: Sequence[float], max_steps: int) -> tuple[int, ...]:
    """Milestone steps: a value below 1 is a fraction of ``max_steps`` (rounded, as official
    ``make_lr_scheduler``), a value of 1 or more an absolute step."""
    steps = []
    for milestone in milestones:
        if milestone < 1:
            steps.append(round(milestone * max_steps))
        elif float(milestone).is_integer():
            steps.append(int(milestone))
        else:
            raise ValueError(f"schedule milestone {milestone}: below 1 (a fraction) or a whole step number")
    if steps != sorted(steps):
        raise ValueError(f"schedule milestones must increase, got steps {steps}")
    return tuple(steps)


@dataclass
class WarmupSchedule:
    """Learning-rate factor of one parameter group at a step (a ``LambdaLR`` function).

    ``step`` counts optimizer steps already taken; the ``step``-th update uses ``base_lr x
    factor(step)``. Warm-up (steps ``< warmup_steps``): ``warmup_factor x (1 - a) + a`` with
    ``a = step / warmup_steps``. ``kind == "step"``: warm-up x ``gamma ** (milestones passed)``
    (official WarmupMultiStepLR). ``kind == "cosine"``: warm-up alone during the warm-up, then
    ``min_factor + (1 - min_factor) x (1 + cos(pi x progress)) / 2`` (official
    WarmupCosineAnnealingLR, ``min_factor = min_lr / base_lr``; see
    :func:`glip.quirks.cosine_schedule_progress`).

    A plain object, not a closure, so that ``LambdaLR.state_dict`` stores its fields.
    """

    kind: str
    max_steps: int
    warmup_steps: int
    warmup_factor: float
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    min_factor: float = 0.0

    def __call__(self, step: int) -> float:
        warmup = 1.0
        if step < self.warmup_steps:
            progress = step / self.warmup_steps
            warmup = self.warmup_factor * (1 - progress) + progress
        if self.kind == "step":
            return warmup * self.gamma ** bisect_right(self.milestones, step)
        if self.kind != "cosine":
            raise ValueError(f"unknown schedule kind {self.kind!r}")
        if step < self.warmup_steps:
            return warmup
        progress = quirks.cosine_schedule_progress(step, self.warmup_steps, self.max_steps)
        return self.min_factor + (1 - self.min_factor) * (1 + math.cos(math.pi * progress)) / 2


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: ScheduleRecipe, max_steps: int) -> LambdaLR:
    """One :class:`WarmupSchedule` per parameter group (the cosine floor ``min_lr`` is absolute, so
    its factor differs per group)."""
    milestones = resolve_milestones(recipe.milestones, max_steps) if recipe.kind == "step" else ()
    functions = []
    for group in optimizer.param_groups:
        base_lr = group.get("initial_lr", group["lr"])
        functions.append(
            WarmupSchedule(
                kind=recipe.kind,
                max_steps=max_steps,
                warmup_steps=recipe.warmup_steps,
                warmup_factor=recipe.warmup_factor,
                milestones=milestones,
                gamma=recipe.gamma,
                min_factor=recipe.min_lr / base_lr if base_lr > 0 else 0.0,
            )
        )
    return LambdaLR(optimizer, functions)


def load_scheduler_state(scheduler: LambdaLR, state: dict[str, Any]) -> None:
    """Restore a scheduler's position (steps taken) but keep its current schedule functions.

    ``LambdaLR.load_state_dict`` would also bring back the saved :class:`WarmupSchedule` fields;
    here the recipe of the resumed run decides (e.g. a longer ``max_steps`` stretches the remaining
    schedule). The groups' learning rates are then recomputed for the restored step, with the same
    expression as ``LambdaLR``, so an unchanged recipe resumes bit for bit.
    """
    scheduler.load_state_dict({**state, "lr_lambdas": [None] * len(scheduler.lr_lambdas)})
    learning_rates = [
        base_lr * schedule(scheduler.last_epoch) for base_lr, schedule in zip(scheduler.base_lrs, scheduler.lr_lambdas)
    ]
    for group, learning_rate in zip(scheduler.optimizer.param_groups, learning_rates):
        group["lr"] = learning_rate
    scheduler._last_lr = learning_rates


class ModelEma:
    """Exponential moving average of a model's state (official ``utils/ema.py:ModelEma``).

    After each optimizer step, every floating-point entry of the state dict (parameters and
    buffers) becomes ``decay x ema + (1 - decay) x current``; other entries are copied. Only the
    averaged tensors are kept (no second model); :meth:`copy_to` loads them into a model.

    Args:
        model: the unwrapped model.
        decay: e.g. 0.999 (official SOLVER.MODEL_EMA).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow: dict[str, Tensor] = {key: value.detach().clone() for key, value in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for key, value in model.state_dict().items():
            average = self.shadow[key]
            if average.is_floating_point():
                average.mul_(self.decay).add_(value.detach(), alpha=1.0 - self.decay)
            else:
                average.copy_(value)

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        unexpected = sorted(set(state) - set(self.shadow))
        if missing or unexpected:
            raise KeyError(f"EMA state does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        for key, value in state.items():
            self.shadow[key].copy_(value)

    def copy_to(self, model: nn.Module) -> None:
        """Load the averaged weights into ``model`` (e.g. a copy for evaluation)."""
        model.load_state_dict(self.shadow, strict=True)
