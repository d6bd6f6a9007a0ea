"""The DyHead tower of GLIP: per layer, fusion -> BERT layer -> dynamic convolution.

``DyConv`` (official ``rpn/vldyhead.py:DyConv``) mixes every pyramid level with its finer and
coarser neighbours through modulated deformable 3x3 convs whose offsets are predicted on the
current level (spatial awareness), weighs the two or three results with a scale attention
(official DyFuse) and ends with a dynamic ReLU (official ``layers/dyrelu.py``). With fusion
(GLIP-T, GLIP-L) each layer first runs ``VisionLanguageFusion`` and a ``TextEncoderLayer``;
without it (GLIP-T (A)) the tower is DyConv only.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glip import quirks
from glip.config import GLIPConfig
from glip.modeling.deform_conv import modulated_deform_conv2d
from glip.modeling.fusion import VisionLanguageFusion
from glip.modeling.text_layer import TextEncoderLayer

# A 3x3 kernel has 9 sampling points: (dy, dx) offsets for each, then one modulation mask value each.
_KERNEL_POINTS = 9
_OFFSET_CHANNELS = 2 * _KERNEL_POINTS


def _hard_sigmoid(x: Tensor) -> Tensor:
    # relu6(x + 3) / 6 (official ``h_sigmoid`` in ``rpn/vldyhead.py`` and ``layers/dyrelu.py``).
    return F.relu6(x + 3.0) / 6.0


class ModulatedDeformConv2d(nn.Module):
    """3x3 modulated deformable conv (DCNv2) with bias, padding 1 (official ``ModulatedDeformConv``).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: 1, or 2 to read the finer pyramid level.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.padding = 1
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.empty(out_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform(+-1/sqrt(fan_in)) weight, zero bias (official ``ModulatedDeformConv.reset_parameters``)."""
        bound = 1.0 / math.sqrt(self.weight[0].numel())
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor) -> Tensor:
        """
        Args:
            x: [B, C_in, H, W].
            offset: [B, 18, H_o, W_o] sampling offsets, (dy, dx) per kernel point, predicted on the
                pyramid level the result is for; its size may differ from this conv's output.
            mask: [B, 9, H_o, W_o] modulation in [0, 1].

        Returns:
            [B, C_out, H_out, W_out], H_out = (H + 2 - 3) // stride + 1.
        """
        out_height = (x.shape[-2] + 2 * self.padding - 3) // self.stride + 1
        out_width = (x.shape[-1] + 2 * self.padding - 3) // self.stride + 1
        # The official CUDA kernel indexes the offset/mask buffers with the output size; when the
        # offsets come from a finer level they are re-read, not resized (quirk 8).
        offset = quirks.reread_as_output_size(offset, out_height, out_width)
        mask = quirks.reread_as_output_size(mask, out_height, out_width)
        if torch.is_autocast_enabled(x.device.type):
            # Run in float32 under mixed precision, as torchvision's CUDA autocast rule for
            # deform_conv2d does (features, offsets and masks arrive in mixed dtypes).
            with torch.autocast(x.device.type, enabled=False):
                return modulated_deform_conv2d(x.float(), offset.float(), mask.float(), self.weight.float(),
                                               self.bias.float(), self.stride, self.padding)
        return modulated_deform_conv2d(x, offset, mask, self.weight, self.bias, self.stride, self.padding)


class ConvNorm(nn.Module):
    """3x3 conv (deformable or plain) followed by GroupNorm (official ``Conv3x3Norm``)."""

    def __init__(self, channels: int, stride: int, group_norm_groups: int, deformable: bool) -> None:
        super().__init__()
        self.deformable = deformable
        if deformable:
            self.conv: nn.Module = ModulatedDeformConv2d(channels, channels, stride)
        else:
            self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=stride, padding=1)
        self.norm = nn.GroupNorm(group_norm_groups, channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: ``DyConv.init_weights`` draws N(0, 0.01) for plain ``nn.Conv2d`` only;
        the deformable conv keeps its own uniform init; GroupNorm is affine identity."""
        if self.deformable:
            self.conv.reset_parameters()
        else:
            nn.init.normal_(self.conv.weight, std=0.01)
            nn.init.zeros_(self.conv.bias)
        self.norm.reset_parameters()

    def forward(self, x: Tensor, offset: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
        if self.deformable:
            return self.norm(self.conv(x, offset, mask))
        return self.norm(self.conv(x))


class DyReLU(nn.Module):
    """Dynamic ReLU: ``max(x * a1 + b1, x * a2 + b2)`` with per-sample, per-channel coefficients.

    The coefficients come from the globally average-pooled input through
    fc(C -> C/4) - ReLU - fc(-> 4C) - hard sigmoid; they start around a1 = 1, b1 = a2 = b2 = 0,
    i.e. a plain ReLU-like identity (official ``layers/dyrelu.py:DYReLU`` with K2, bias, lambda 1).
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.channels = channels
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.fc2 = nn.Linear(channels // reduction, 4 * channels)

    def reset_parameters(self) -> None:
        """PyTorch default Linear init, as in the official module."""
        self.fc1.reset_parameters()
        self.fc2.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        """
        Args:
            x: [B, C, H, W].

        Returns:
            [B, C, H, W].
        """
        pooled = x.mean(dim=(2, 3))  # [B, C]
        coefficients = _hard_sigmoid(self.fc2(F.relu(self.fc1(pooled))))  # [B, 4C]
        # [B, 4C] -> [B, 4C, 1, 1] -> 4 x [B, C, 1, 1]
        a1, b1, a2, b2 = coefficients[:, :, None, None].split(self.channels, dim=1)
        a1 = (a1 - 0.5) * 2.0 + 1.0
        a2 = (a2 - 0.5) * 2.0
        b1 = b1 - 0.5
        b2 = b2 - 0.5
        return torch.maximum(x * a1 + b1, x * a2 + b2)


class DyConv(nn.Module):
    """One dynamic-convolution step over all pyramid levels.

    For level l the output is the (scale-attention weighted) mean of: conv(level l), stride-2
    conv(level l-1), and conv(level l+1) bilinearly upsampled to level l, each conv followed by
    GroupNorm, all three modulated by the offsets/mask predicted on level l; then DyReLU.

    Args:
        channels: channels of every level.
        group_norm_groups: GroupNorm groups.
        use_deformable: modulated deformable convs with predicted offsets (else plain 3x3 convs).
        use_dyfuse: weigh the inputs with the scale attention (else a plain mean).
        use_dyrelu: DyReLU (else ReLU).
    """

    def __init__(
        self,
        channels: int,
        group_norm_groups: int = 16,
        use_deformable: bool = True,
        use_dyfuse: bool = True,
        use_dyrelu: bool = True,
    ) -> None:
        super().__init__()
        # Index 0 reads the coarser level, 1 the same level, 2 the finer level (stride 2), the
        # order of the official ``DyConv.DyConv`` list.
        self.convs = nn.ModuleList(
            ConvNorm(channels, stride, group_norm_groups, use_deformable) for stride in (1, 1, 2)
        )
        self.scale_attention = nn.Conv2d(channels, 1, kernel_size=1) if use_dyfuse else None
        self.dyrelu = DyReLU(channels) if use_dyrelu else None
        self.offset = (
            nn.Conv2d(channels, _OFFSET_CHANNELS + _KERNEL_POINTS, kernel_size=3, padding=1) if use_deformable else None
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init (``DyConv.init_weights``): convs as in ``ConvNorm``, scale attention
        N(0, 0.01) with zero bias; the offset conv and DyReLU keep the PyTorch defaults."""
        for conv in self.convs:
            conv.reset_parameters()
        if self.scale_attention is not None:
            nn.init.normal_(self.scale_attention.weight, std=0.01)
            nn.init.zeros_(self.scale_attention.bias)
        if self.offset is not None:
            self.offset.reset_parameters()
        if self.dyrelu is not None:
            self.dyrelu.reset_parameters()

    def _fuse_scales(self, candidates: list[Tensor]) -> Tensor:
        # DyFuse: per candidate a scalar weight hard_sigmoid(relu(conv1x1(global mean))).
        stacked = torch.stack(candidates)  # [K, B, C, H, W]
        if self.scale_attention is None:
            return stacked.mean(dim=0)
        weights = torch.stack(
            [F.relu(self.scale_attention(candidate.mean(dim=(2, 3), keepdim=True))) for candidate in candidates]
        )  # [K, B, 1, 1, 1]
        return (stacked * _hard_sigmoid(weights)).mean(dim=0)

    def forward(self, visual: list[Tensor]) -> list[Tensor]:
        """
        Args:
            visual: pyramid levels, finest first, each [B, C, H_l, W_l].

        Returns:
            levels with the same shapes.
        """
        outputs = []
        for level, feature in enumerate(visual):
            offset = mask = None
            if self.offset is not None:
                offset_mask = self.offset(feature)  # [B, 27, H_l, W_l]
                offset = offset_mask[:, :_OFFSET_CHANNELS]
                mask = offset_mask[:, _OFFSET_CHANNELS:].sigmoid()

            candidates = [self.convs[1](feature, offset, mask)]
            if level > 0:
                candidates.append(self.convs[2](visual[level - 1], offset, mask))
            if level < len(visual) - 1:
                coarser = self.convs[0](visual[level + 1], offset, mask)
                # Official ``F.upsample_bilinear`` = bilinear with align_corners=True.
                candidates.append(
                    F.interpolate(coarser, size=feature.shape[-2:], mode="bilinear", align_corners=True)
                )
            outputs.append(self._fuse_scales(candidates))

        if self.dyrelu is None:
            return [F.relu(output) for output in outputs]
        return [self.dyrelu(output) for output in outputs]


class DyHeadLayer(nn.Module):
    """One tower layer: fusion -> text layer -> DyConv (fusion and text layer absent without fusion)."""

    def __init__(
        self,
        fusion: VisionLanguageFusion | None,
        text_layer: TextEncoderLayer | None,
        dyconv: DyConv,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.fusion = fusion
        self.text_layer = text_layer
        self.dyconv = dyconv
        self.residual = residual

    def forward(
        self, visual: list[Tensor], text_hidden: Tensor, text_mask: Tensor | None
    ) -> tuple[list[Tensor], Tensor]:
        if self.fusion is not None:
            visual, text_hidden = self.fusion(visual, text_hidden, text_mask)
        if self.text_layer is not None:
            text_hidden = self.text_layer(text_hidden, text_mask)
        if self.residual:
            return [output + feature for output, feature in zip(self.dyconv(visual), visual)], text_hidden
        return self.dyconv(visual), text_hidden


class DyHeadTower(nn.Module):
    """The stacked DyHead layers of GLIP's grounding head (official ``VLDyHead.dyhead_tower``).

    Args:
        channels: channels of every pyramid level (FPN output = head width).
        num_layers: tower depth (official DYHEAD.NUM_CONVS).
        text_dim: width of the text hidden states.
        fusion_enabled: fusion + BERT layer before each DyConv (False for GLIP-T (A)).
        fusion_embed_dim: width of the bi-directional attention (2048 in released models).
        fusion_num_heads: its heads (8).
        fusion_dropout: attention-probability dropout of the fusion (training only).
        group_norm_groups: GroupNorm groups of the DyConv convs.
        use_dyrelu, use_deformable, use_dyfuse: DyConv parts (all on in released models).
        bert_config: ``transformers.BertConfig``-style dict of the text layers (hidden_size,
            num_attention_heads, intermediate_size, layer_norm_eps, hidden_act, dropouts);
            required when fusion is enabled.
        use_checkpoint: gradient checkpointing of the fusion steps (training only).
        residual: add each layer's (fused) input to its DyConv output (off in official models).

    Inputs: ``visual`` (5 levels [B, C, H_l, W_l], finest first), ``text_hidden`` [B, T, D],
    ``text_mask`` [B, T]. Outputs: the final levels and the final text hidden states [B, T, D]
    (unchanged input without fusion).
    """

    def __init__(
        self,
        channels: int,
        num_layers: int,
        text_dim: int,
        fusion_enabled: bool,
        fusion_embed_dim: int,
        fusion_num_heads: int,
        fusion_dropout: float = 0.1,
        group_norm_groups: int = 16,
        use_dyrelu: bool = True,
        use_deformable: bool = True,
        use_dyfuse: bool = True,
        bert_config: dict[str, Any] | None = None,
        use_checkpoint: bool = False,
        residual: bool = False,
    ) -> None:
        super().__init__()
        if fusion_enabled and bert_config is None:
            raise ValueError("bert_config is required when fusion_enabled=True (the tower's text layers)")
        layers = []
        for _ in range(num_layers):
            fusion = text_layer = None
            if fusion_enabled:
                fusion = VisionLanguageFusion(
                    vision_dim=channels,
                    text_dim=text_dim,
                    embed_dim=fusion_embed_dim,
                    num_heads=fusion_num_heads,
                    dropout=fusion_dropout,
                    # Layer scale starts at 1 / NUM_CONVS (official ``VLFuse.__init__``).
                    layer_scale_init=1.0 / num_layers,
                    use_checkpoint=use_checkpoint,
                )
                text_layer = TextEncoderLayer.from_bert_config(bert_config)
            dyconv = DyConv(channels, group_norm_groups, use_deformable, use_dyfuse, use_dyrelu)
            layers.append(DyHeadLayer(fusion, text_layer, dyconv, residual))
        self.layers = nn.ModuleList(layers)

    @classmethod
    def from_config(cls, config: GLIPConfig, text_dim: int) -> DyHeadTower:
        """The tower of a GLIP model: head, fusion and (for the text layers) BERT settings."""
        return cls(
            channels=config.head.channels,
            num_layers=config.head.num_layers,
            text_dim=text_dim,
            fusion_enabled=config.fusion.enabled,
            fusion_embed_dim=config.fusion.embed_dim,
            fusion_num_heads=config.fusion.num_heads,
            fusion_dropout=config.fusion.attention_dropout,
            group_norm_groups=config.head.group_norm_groups,
            use_dyrelu=config.head.use_dyrelu,
            use_deformable=config.head.use_deformable,
            use_dyfuse=config.head.use_dyfuse,
            # The official head builds its BERT layers from the language model's config.
            bert_config=config.language.bert,
            use_checkpoint=config.head.use_checkpoint,
            residual=config.head.residual,
        )

    def reset_parameters(self) -> None:
        """Re-initialise every layer as the official ``VLDyHead.__init__`` does."""
        for layer in self.layers:
            if layer.fusion is not None:
                layer.fusion.reset_parameters()
            if layer.text_layer is not None:
                layer.text_layer.reset_parameters()
            layer.dyconv.reset_parameters()

    def forward(
        self, visual: list[Tensor], text_hidden: Tensor, text_mask: Tensor | None = None
    ) -> tuple[list[Tensor], Tensor]:
        for layer in self.layers:
            visual, text_hidden = layer(visual, text_hidden, text_mask)
        return visual, text_hidden
