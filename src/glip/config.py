"""Typed, frozen configuration of a GLIP model, nested by part.

Defaults are the official GLIP-T values (``configs/pretrain/glip_Swin_T_O365_GoldG.yaml`` merged over
``maskrcnn_benchmark/config/defaults.py``). Only switches in which released checkpoints differ exist;
dead research options of the official yacs config are not ported.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SwinConfig:
    """Swin Transformer image backbone (official ``backbone/swint.py``)."""

    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    patch_size: int = 4
    # Stochastic depth, only active in training.
    drop_path_rate: float = 0.2
    # Stages whose parameters are frozen in training (official FREEZE_CONV_BODY_AT; -1 = none,
    # 2 = patch embedding and stage 1, as in GLIP-L).
    freeze_at: int = -1

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Channels of the four stage outputs (stride 4, 8, 16, 32)."""
        return tuple(self.embed_dim * 2**i for i in range(len(self.depths)))


@dataclass(frozen=True)
class FPNConfig:
    """Feature pyramid P3-P7 over Swin stages 3-5 (official ``backbone/fpn.py``)."""

    out_channels: int = 256
    # DropBlock on the FPN outputs, training only (official FPN.DROP_PROB with block size 3).
    drop_block_prob: float = 0.3


@dataclass(frozen=True)
class LanguageConfig:
    """BERT language backbone; ``bert`` is a ``transformers.BertConfig`` dict."""

    bert: dict[str, Any] = field(default_factory=lambda: dict(BERT_BASE_UNCASED))
    # Prompts are padded to this many tokens (official MAX_QUERY_LEN, PAD_MAX=True).
    max_query_len: int = 256
    # Name or local directory of the WordPiece tokenizer.
    tokenizer: str = "bert-base-uncased"
    freeze: bool = False

    @property
    def hidden_size(self) -> int:
        return int(self.bert["hidden_size"])


@dataclass(frozen=True)
class FusionConfig:
    """Deep vision-language fusion inside the DyHead tower (official ``VLFuse``, type MHA-B)."""

    # GLIP-T (A) has no fusion: the tower is DyConv only.
    enabled: bool = True
    # Width of the bi-directional attention; hard-coded 2048 in the official ``VLFuse.init_configs``.
    embed_dim: int = 2048
    num_heads: int = 8
    attention_dropout: float = 0.1
    # Dot-product text embedding = fused hidden state of the last tower layer (True) or the BERT
    # output masked by the attention mask (False; GLIP-T (A)).
    use_fused_text_for_dot_product: bool = True


@dataclass(frozen=True)
class HeadConfig:
    """DyHead tower and ATSS-style grounding head (official ``rpn/vldyhead.py``)."""

    channels: int = 256
    num_layers: int = 6
    group_norm_groups: int = 16
    use_dyrelu: bool = True
    use_deformable: bool = True
    use_dyfuse: bool = True
    prior_prob: float = 0.01
    log_scale_init: float = 0.0
    # Channels of the unused ``cls_logits`` conv; fixes the number of score columns (labels) that
    # post-processing keeps (official ATSS.NUM_CLASSES - 1).
    num_classes: int = 80
    # Recompute the fusion blocks in backward to save memory (official DYHEAD.USE_CHECKPOINT).
    use_checkpoint: bool = True
    # Add each tower layer's input to its output (not in the official head, whose released models
    # all have it off): lets small towers pass fine-level detail such as colour to the scores.
    residual: bool = False


@dataclass(frozen=True)
class AnchorConfig:
    """One square anchor per location and level (official RPN.ANCHOR_SIZES / ANCHOR_STRIDE)."""

    sizes: tuple[int, ...] = (64, 128, 256, 512, 1024)
    strides: tuple[int, ...] = (8, 16, 32, 64, 128)


@dataclass(frozen=True)
class PostProcessConfig:
    """Detection decoding (official ``rpn/inference.py:ATSSPostProcessor``)."""

    score_threshold: float = 0.05
    pre_nms_top_n: int = 1000
    nms_threshold: float = 0.6
    detections_per_image: int = 100
    # How token scores are combined into one score per phrase: "MEAN" (README test command) or "MAX".
    score_aggregation: str = "MEAN"
    # NMS across labels too (not official: ``ml_nms`` is per label). A model that gives several
    # labels to one object (GLIP-Nano on similar shapes) keeps only the best of them.
    class_agnostic_nms: bool = False

    def __post_init__(self) -> None:
        check_fraction("postprocess.score_threshold", self.score_threshold)
        check_fraction("postprocess.nms_threshold", self.nms_threshold, open_low=True)
        check_int("postprocess.pre_nms_top_n", self.pre_nms_top_n, minimum=1)
        check_int("postprocess.detections_per_image", self.detections_per_image, minimum=1)
        if self.score_aggregation not in ("MEAN", "MAX"):
            raise ValueError(f"postprocess.score_aggregation must be 'MEAN' or 'MAX', got {self.score_aggregation!r}")


@dataclass(frozen=True)
class InputConfig:
    """Image preprocessing: BGR 0-255 input normalised with Caffe-style statistics."""

    pixel_mean: tuple[float, float, float] = (103.53, 116.28, 123.675)
    pixel_std: tuple[float, float, float] = (57.375, 57.12, 58.395)
    min_size_test: int = 800
    # 0 = no cap in the config (the official demo path; evaluation uses 1333). ``GLIP`` still caps
    # the longer side at 1333 * min_size / 800 then (``processing.default_max_size``).
    max_size_test: int = 0
    size_divisibility: int = 32

    def __post_init__(self) -> None:
        check_int("input.min_size_test", self.min_size_test, minimum=1)
        check_int("input.max_size_test", self.max_size_test, minimum=0)
        check_int("input.size_divisibility", self.size_divisibility, minimum=0)


@dataclass(frozen=True)
class GLIPConfig:
    # Image backbone: "swin" (every official model) or "efficientnet_lite0" (GLIP-Nano, whose
    # ImageNet weights make CPU training short); ``swin`` is read only for "swin".
    backbone: str = "swin"
    swin: SwinConfig = field(default_factory=SwinConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    postprocess: PostProcessConfig = field(default_factory=PostProcessConfig)
    input: InputConfig = field(default_factory=InputConfig)

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"config.backbone: {self.backbone!r} is not one of {BACKBONES}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GLIPConfig:
        """Build from a nested dict (as written by :meth:`to_dict`); unknown keys are errors."""
        from glip.plain import from_plain  # one parser for every typed configuration of the package

        return from_plain(cls, data, "config")

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> GLIPConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read GLIP config {path}: {error}") from error
        return cls.from_dict(data)


# User text quoted in error messages is cut to this many characters.
QUOTE_LIMIT = 80


def shorten(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``repr`` of user text for a message, cut to ``limit`` characters + "..." (a 1000-word class
    name must not make a 7000-character error)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def check_fraction(name: str, value: Any, open_low: bool = False) -> None:
    """Raise unless ``value`` is a real number in ``[0, 1]`` (``(0, 1]`` if ``open_low``); the
    message names the option ``name``."""
    # numbers.Real admits numpy's scalars too, without importing numpy (the CLI's start-up reads this module).
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    inside = (0 < value if open_low else 0 <= value) and value <= 1  # False for NaN
    if not inside:
        raise ValueError(f"{name} must be in {'(0' if open_low else '[0'}, 1], got {value!r}")


def check_int(name: str, value: Any, minimum: int) -> None:
    """Raise unless ``value`` is an integer >= ``minimum``; the message names the option ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


BACKBONES: tuple[str, ...] = ("swin", "efficientnet_lite0")

_SECTIONS: dict[str, type] = {
    "SwinConfig": SwinConfig,
    "FPNConfig": FPNConfig,
    "LanguageConfig": LanguageConfig,
    "FusionConfig": FusionConfig,
    "HeadConfig": HeadConfig,
    "AnchorConfig": AnchorConfig,
    "PostProcessConfig": PostProcessConfig,
    "InputConfig": InputConfig,
}

# transformers.BertConfig() defaults, i.e. bert-base-uncased.
BERT_BASE_UNCASED: dict[str, Any] = {
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
    "position_embedding_type": "absolute",
}
