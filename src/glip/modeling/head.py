"""ATSS-style grounding head: box regression, centerness and region-token logits.

Official ``rpn/vldyhead.py:VLDyHead`` (after the tower), with USE_DOT_PRODUCT_TOKEN_LOSS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glip.quirks import CLAMP_VALUE


@dataclass
class HeadOutputs:
    """Per-level raw predictions (levels P3..P7).

    Attributes:
        box_regression: ``[B, 4, H_l, W_l]`` box deltas (after the level's ``Scale``).
        centerness: ``[B, 1, H_l, W_l]`` centerness logits.
        dot_product_logits: ``[B, H_l*W_l, T]`` region-token logits, locations row-major.
    """

    box_regression: list[Tensor]
    centerness: list[Tensor]
    dot_product_logits: list[Tensor]


class Scale(nn.Module):
    """A learnable scalar per level (FCOS)."""

    def __init__(self, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([init_value]))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class GroundingHead(nn.Module):
    """Scores every location against every prompt token, and regresses a box per location.

    ``logit = <visual, proj(normalize(text) / 2)> / exp(log_scale) + normalize(text) . bias_lang
    + bias0``; visual features are not normalised (official).
    """

    def __init__(
        self,
        channels: int,
        text_dim: int,
        num_levels: int = 5,
        prior_prob: float = 0.01,
        log_scale_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.bbox_pred = nn.Conv2d(channels, 4, kernel_size=1)
        self.centerness = nn.Conv2d(channels, 1, kernel_size=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))
        self.text_projection = nn.Linear(text_dim, channels)
        self.log_scale = nn.Parameter(torch.tensor([log_scale_init]))
        self.bias_lang = nn.Parameter(torch.zeros(text_dim))
        # Focal-loss prior: every token starts with probability ``prior_prob``.
        self.bias0 = nn.Parameter(torch.tensor([-math.log((1 - prior_prob) / prior_prob)]))
        for conv in (self.bbox_pred, self.centerness):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def project_text(self, text_embedding: Tensor) -> tuple[Tensor, Tensor]:
        """Token projections ``[B, T, C]`` and per-token biases ``[B, T]``."""
        normalized = F.normalize(text_embedding, p=2, dim=-1)
        tokens = self.text_projection(normalized / 2.0)
        bias = torch.matmul(normalized, self.bias_lang) + self.bias0
        return tokens, bias

    def forward(self, visual: list[Tensor], text_embedding: Tensor) -> HeadOutputs:
        """
        Args:
            visual: per level ``[B, C, H_l, W_l]`` tower outputs.
            text_embedding: ``[B, T, D]`` text features for the dot product.
        """
        tokens, token_bias = self.project_text(text_embedding)
        temperature = self.log_scale.exp()
        box_regression, centerness, logits = [], [], []
        for level, feature in enumerate(visual):
            box_regression.append(self.scales[level](self.bbox_pred(feature)))
            centerness.append(self.centerness(feature))
            # (B, C, H, W) -> (B, HW, C)
            queries = feature.flatten(2).transpose(1, 2)
            logit = torch.matmul(queries, tokens.transpose(-1, -2)) / temperature
            logit = logit + token_bias.unsqueeze(1)
            logits.append(logit.clamp(-CLAMP_VALUE, CLAMP_VALUE))
        return HeadOutputs(box_regression, centerness, logits)
