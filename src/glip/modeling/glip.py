"""The GLIP network: Swin -> FPN, BERT, VL-DyHead tower, grounding head.

Official ``modeling/detector/generalized_vl_rcnn.py:GeneralizedVLRCNN`` with the
``rpn/vldyhead.py`` head. ``forward`` takes tensors and returns raw per-level predictions; image
loading, prompts and decoding live in :mod:`glip.processing` and :mod:`glip.modeling.postprocess`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import Tensor, nn

from glip.config import GLIPConfig
from glip.modeling.anchors import AnchorGenerator
from glip.modeling.dyhead import DyHeadTower
from glip.modeling.efficientnet import EfficientNetLiteBackbone
from glip.modeling.fpn import FPN
from glip.modeling.head import GroundingHead, HeadOutputs
from glip.modeling.language import LanguageBackbone, PromptOffset, TextFeatures, freeze
from glip.modeling.swin import SwinBackbone


@dataclass
class GLIPOutput(HeadOutputs):
    """Raw predictions (see :class:`HeadOutputs`) plus the fused features they came from.

    Attributes:
        visual: per level ``[B, C, H_l, W_l]`` tower outputs.
        text_embedding: ``[B, T, D]`` text features the dot product used.
    """

    visual: list[Tensor] | None = None
    text_embedding: Tensor | None = None


class GLIPModel(nn.Module):
    """GLIP as a tensor-to-tensor network.

    Inputs are BGR 0-255 normalised images zero-padded to a multiple of 32 ``[B, 3, H, W]`` and
    a tokenised prompt ``[B, T]``; outputs are per-level box deltas, centerness logits and
    region-token logits (:class:`GLIPOutput`).
    """

    def __init__(self, config: GLIPConfig) -> None:
        super().__init__()
        self.config = config
        if config.backbone == "efficientnet_lite0":
            self.backbone = EfficientNetLiteBackbone(input_is_bgr=True)
        else:
            self.backbone = SwinBackbone.from_config(config.swin)
        self.fpn = FPN.from_config(config.fpn, in_channels=self.backbone.out_channels[1:])
        self.language = LanguageBackbone(config.language.bert)
        text_dim = self.language.hidden_size
        if config.head.channels != config.fpn.out_channels:
            raise ValueError(
                f"head.channels ({config.head.channels}) must equal fpn.out_channels "
                f"({config.fpn.out_channels}), as in every released GLIP model"
            )
        self.tower = DyHeadTower.from_config(config, text_dim=text_dim)
        self.head = GroundingHead(
            channels=config.head.channels,
            text_dim=text_dim,
            num_levels=len(config.anchors.strides),
            prior_prob=config.head.prior_prob,
            log_scale_init=config.head.log_scale_init,
        )
        # The anchors the head's boxes are coded against: the network's, so that training and
        # decoding need nothing but the model (no parameters: not in the state dict).
        self.anchor_generator = AnchorGenerator.from_config(config.anchors)
        if config.language.freeze:
            freeze(self.language)
        if config.backbone == "swin" and config.swin.freeze_at >= 0:
            self.backbone.freeze_stages(config.swin.freeze_at)
        # Prompt tuning (glip.transfer): offsets added to the text features of a fixed prompt.
        self.prompt_offset: PromptOffset | None
        self.register_module("prompt_offset", None)
        # Top-level parts frozen for transfer learning (see ``freeze_parts``).
        self.frozen_parts: tuple[str, ...] = ()

    def train(self, mode: bool = True) -> GLIPModel:
        super().train(mode)
        if self.config.language.freeze:
            # A frozen language backbone runs as in inference: no dropout.
            self.language.eval()
        for name in self.frozen_parts:
            self.get_submodule(name).eval()
        return self

    def freeze_parts(self, names: Iterable[str]) -> None:
        """Stop the gradients of the named parts (e.g. ``"backbone"``, ``"tower"``) and keep them in
        evaluation mode during training: a frozen part is a fixed function (no batch-norm statistics
        updates, dropout, drop path or DropBlock). The official fine-tuning only turns gradients
        off (``tools/finetune.py``), which leaves a frozen Swin's drop path active.
        """
        names = tuple(names)
        for name in names:
            try:
                part = self.get_submodule(name)
            except AttributeError:
                raise ValueError(f"freeze_parts: the model has no part {name!r}") from None
            freeze(part)
            part.eval()
        self.frozen_parts = tuple(dict.fromkeys(self.frozen_parts + names))

    def encode_image(self, images: Tensor) -> list[Tensor]:
        """``[B, 3, H, W]`` -> FPN levels P3..P7, each ``[B, C, H_l, W_l]``."""
        stages = self.backbone(images)
        # The stride-4 stage is not used by the FPN (official SWINT-FPN-RETINANET).
        return self.fpn(stages[1:])

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> TextFeatures:
        """``[B, T]`` token ids and mask -> BERT features (cacheable for a fixed prompt), plus the
        tuned offsets of a prompt-tuned model."""
        text = self.language(input_ids, attention_mask)
        if self.prompt_offset is not None:
            text = self.prompt_offset(text)
        return text

    def fuse_and_predict(self, visual: list[Tensor], text: TextFeatures) -> GLIPOutput:
        """Fusion tower then head, for FPN levels and text features of the same batch size."""
        fused_visual, fused_text = self.tower(visual, text.hidden, text.mask)
        # GLIP-T (A) scores against the masked BERT output; fused models against the tower's
        # final text state (official USE_FUSED_FEATURES_DOT_PRODUCT).
        if self.config.fusion.enabled and self.config.fusion.use_fused_text_for_dot_product:
            text_embedding = fused_text
        else:
            text_embedding = text.embedded
        outputs = self.head(fused_visual, text_embedding)
        return GLIPOutput(
            box_regression=outputs.box_regression,
            centerness=outputs.centerness,
            dot_product_logits=outputs.dot_product_logits,
            visual=fused_visual,
            text_embedding=text_embedding,
        )

    def forward(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> GLIPOutput:
        """
        Args:
            images: ``[B, 3, H, W]`` normalised, zero-padded images.
            input_ids: ``[B, T]`` prompt token ids.
            attention_mask: ``[B, T]`` 1 for real tokens.
        """
        return self.fuse_and_predict(self.encode_image(images), self.encode_text(input_ids, attention_mask))
