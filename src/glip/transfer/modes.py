"""The three ways to adapt GLIP to a new detection task, as data: what trains, and how fast.

Official ``tools/finetune.py:tuning_highlevel_override`` (what each SOLVER.TUNING_HIGHLEVEL_OVERRIDE
freezes) and the ODinW commands of the official ``README.md`` ("Full Model Fine-Tuning", "Prompt
Tuning", "Linear Probing"), which run ``configs/pretrain/glip_Swin_T_O365_GoldG.yaml``
(SOLVER.BASE_LR 1e-4, SOLVER.LANG_LR 1e-5) with SOLVER.WEIGHT_DECAY 0.05, SOLVER.IMS_PER_BATCH 4,
MODEL.BACKBONE.FREEZE_CONV_BODY_AT 2, SOLVER.MODEL_EMA 0 and an ODinW task config
(``configs/odinw_13/*.yaml``: SOLVER.WARMUP_ITERS 0):

* ``full`` (``full``): every part trains, the language model included (at the language lr), except
  the Swin patch embedding and first stage (FREEZE_CONV_BODY_AT 2); lr 1e-4, weight decay 0.05.
* ``prompt`` (``language_prompt_v2``; README: SOLVER.BASE_LR 0.05, SOLVER.WEIGHT_DECAY 0.25): only a
  table of offsets added to the language features of the fixed class prompt trains
  (:class:`glip.modeling.language.PromptOffset`); image backbone, FPN, language model, fusion tower
  and head are frozen.
* ``linear`` (``linear_prob``): image backbone, FPN, language model and fusion tower are frozen; of
  the head only the last layers train (the official name filter keeps ``bbox_pred``,
  ``centerness``, ``dot_product_projection_text``, ``head.log_scale``, ``head.bias_lang``,
  ``head.bias0``; ``cls_logits`` and ``cosine_scale`` do not exist in GLIP's dot-product head);
  lr 1e-4, weight decay 0.05.

Frozen parts also stay in evaluation mode (:meth:`glip.modeling.glip.GLIPModel.freeze_parts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from glip.modeling.language import PromptOffset
from glip.pipeline import GLIP
from glip.processing import build_class_prompts

Mode = Literal["full", "prompt", "linear"]
MODES: tuple[str, ...] = get_args(Mode)


@dataclass(frozen=True)
class ModeSettings:
    """Optimiser settings of one tuning mode (AdamW with the official parameter rules).

    Attributes:
        lr: base learning rate (SOLVER.BASE_LR).
        language_lr: learning rate of the language model when it trains (SOLVER.LANG_LR).
        weight_decay: SOLVER.WEIGHT_DECAY.
        freeze_backbone_at: Swin stages kept frozen (MODEL.BACKBONE.FREEZE_CONV_BODY_AT); other
            image backbones (GLIP-Nano's EfficientNet) ignore it.
        train_language: ``full`` only: train the language model too (official); false keeps it
            frozen, e.g. to keep GLIP-Nano's MiniLM as shipped and save CPU time.
    """

    lr: float
    language_lr: float
    weight_decay: float
    freeze_backbone_at: int = 2
    train_language: bool = True


# The official settings of each mode (sources in the module docstring).
OFFICIAL_MODES: dict[str, ModeSettings] = {
    "full": ModeSettings(lr=1e-4, language_lr=1e-5, weight_decay=0.05),
    "prompt": ModeSettings(lr=0.05, language_lr=1e-5, weight_decay=0.25, train_language=False),
    "linear": ModeSettings(lr=1e-4, language_lr=1e-5, weight_decay=0.05, train_language=False),
}

# The parameters linear probing trains (official name filter of ``tools/finetune.py``, our names:
# ``text_projection`` is the official ``dot_product_projection_text``).
LINEAR_PROBE_PARAMETERS: frozenset[str] = frozenset(
    {
        "head.bbox_pred.weight",
        "head.bbox_pred.bias",
        "head.centerness.weight",
        "head.centerness.bias",
        "head.text_projection.weight",
        "head.text_projection.bias",
        "head.log_scale",
        "head.bias_lang",
        "head.bias0",
    }
)

# The top-level parts each mode freezes whole (and keeps in evaluation mode).
FROZEN_PARTS: dict[str, tuple[str, ...]] = {
    "full": (),
    "prompt": ("backbone", "fpn", "language", "tower", "head"),
    "linear": ("backbone", "fpn", "language", "tower"),
}


def check_mode(mode: str, where: str = "mode") -> str:
    """``mode`` if it is known, else a ValueError naming ``where`` and the known modes."""
    if mode not in MODES:
        raise ValueError(f"{where}: unknown tuning mode {mode!r}; expected one of {', '.join(MODES)}")
    return mode


def apply_mode(model: GLIP, mode: str, classes: Sequence[str], names: Sequence[str] | None = None) -> None:
    """Freeze ``model`` for ``mode`` and, for prompt tuning, add the offsets of the prompt ``classes``.

    ``full`` changes nothing here: its frozen Swin stages and language model come from the config
    (``freeze_backbone_at``, ``train_language``). A prompt-tuned model tuned again on the same
    classes goes on from its offsets.

    Args:
        model: the model about to be trained (before its optimizer is made).
        mode: ``full``, ``prompt`` or ``linear``.
        classes: the class texts of the training prompt, in label order.
        names: the class names those texts stand for (what detections call them); default the texts.

    Raises:
        ValueError: unknown mode, or (prompt) a class prompt too long for one forward pass.
    """
    check_mode(mode)
    if mode == "full":
        return
    model.freeze_parts(FROZEN_PARTS[mode])
    if mode == "linear":
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in LINEAR_PROBE_PARAMETERS)
        return
    max_len = model.config.language.max_query_len
    prompts = build_class_prompts(list(classes), model.tokenizer, max_len,
                                  max_labels_per_prompt=model.config.head.num_classes)
    if len(prompts) > 1:
        raise ValueError(
            f"prompt tuning needs the prompt of all {len(classes)} classes in one piece of at most "
            f"{max_len} tokens; shorten the class texts"
        )
    existing = model.prompt_offset
    if existing is None or existing.classes != tuple(classes):
        model.prompt_offset = PromptOffset(max_len, model.language.hidden_size, classes, names)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("prompt_offset."))


__all__ = [
    "FROZEN_PARTS",
    "LINEAR_PROBE_PARAMETERS",
    "MODES",
    "Mode",
    "ModeSettings",
    "OFFICIAL_MODES",
    "apply_mode",
    "check_mode",
]
