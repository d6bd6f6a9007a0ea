"""The BERT encoder layer that follows each fusion step in the DyHead tower.

A standard post-LayerNorm BERT layer (self-attention, feed-forward) with the fp16 clamps the
released models were trained with (official ``rpn/vldyhead.py:BertEncoderLayer`` built from
``rpn/modeling_bert.py``). Sub-module names follow Hugging Face BERT (``attention.self.query``,
``output.LayerNorm``, ...) so that official checkpoint keys load unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glip import quirks

_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": F.gelu,
    "relu": F.relu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


def _clamp(hidden: Tensor) -> Tensor:
    return hidden.clamp(min=-quirks.CLAMP_VALUE, max=quirks.CLAMP_VALUE)


class TextSelfAttention(nn.Module):
    """Multi-head self-attention; scores are clamped to +-CLAMP_VALUE before the mask is added."""

    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size={hidden_size} is not divisible by num_attention_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.query = nn.Linear(hidden_size, hidden_size)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.value = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)

    def _split_heads(self, states: Tensor) -> Tensor:
        # [B, T, D] -> [B, T, heads, D/heads] -> [B, heads, T, D/heads]
        batch, length, _ = states.shape
        return states.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, hidden: Tensor, mask_bias: Tensor) -> Tensor:
        """
        Args:
            hidden: [B, T, D].
            mask_bias: [B, 1, 1, T] additive mask (0 for real tokens, a huge negative for padding).

        Returns:
            [B, T, D] attention context (before the output projection).
        """
        query = self._split_heads(self.query(hidden))
        key = self._split_heads(self.key(hidden))
        value = self._split_heads(self.value(hidden))
        scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(self.head_dim)  # [B, h, T, T]
        scores = _clamp(scores) + mask_bias
        probs = self.dropout(scores.softmax(dim=-1))
        context = torch.matmul(probs, value)  # [B, h, T, D/h]
        # [B, h, T, D/h] -> [B, T, h, D/h] -> [B, T, D]
        return context.transpose(1, 2).reshape(hidden.shape)


class TextSelfOutput(nn.Module):
    """Output projection of the attention, residual, LayerNorm."""

    def __init__(self, hidden_size: int, layer_norm_eps: float, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, context: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(context)) + residual)


class TextAttention(nn.Module):
    """Self-attention block (the attribute name ``self`` matches the BERT checkpoint keys)."""

    def __init__(
        self, hidden_size: int, num_heads: int, layer_norm_eps: float, attention_dropout: float, hidden_dropout: float
    ) -> None:
        super().__init__()
        self.self = TextSelfAttention(hidden_size, num_heads, attention_dropout)
        self.output = TextSelfOutput(hidden_size, layer_norm_eps, hidden_dropout)

    def forward(self, hidden: Tensor, mask_bias: Tensor) -> Tensor:
        return self.output(self.self(hidden, mask_bias), hidden)


class TextIntermediate(nn.Module):
    """Feed-forward expansion; clamped after the dense layer and after the activation."""

    def __init__(self, hidden_size: int, intermediate_size: int, activation: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, intermediate_size)
        self.activation = activation

    def forward(self, hidden: Tensor) -> Tensor:
        return _clamp(self.activation(_clamp(self.dense(hidden))))


class TextOutput(nn.Module):
    """Feed-forward contraction, residual, LayerNorm; clamped before and after the LayerNorm."""

    def __init__(self, intermediate_size: int, hidden_size: int, layer_norm_eps: float, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(intermediate_size, hidden_size)
        self.LayerNorm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: Tensor, residual: Tensor) -> Tensor:
        hidden = _clamp(self.dropout(self.dense(hidden)))
        return _clamp(self.LayerNorm(hidden + residual))


class TextEncoderLayer(nn.Module):
    """Post-LN BERT encoder layer with the official clamps.

    Args:
        hidden_size: token width D.
        num_heads: attention heads.
        intermediate_size: feed-forward width.
        layer_norm_eps: LayerNorm epsilon (1e-12 in BERT).
        hidden_act: "gelu" (exact erf GELU, BERT's), "gelu_new"/"gelu_pytorch_tanh" or "relu".
        hidden_dropout: dropout after the dense projections (training only).
        attention_dropout: dropout on the attention probabilities (training only).
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        intermediate_size: int,
        layer_norm_eps: float = 1e-12,
        hidden_act: str = "gelu",
        hidden_dropout: float = 0.1,
        attention_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if hidden_act not in _ACTIVATIONS:
            raise ValueError(f"hidden_act={hidden_act!r} is not supported; known: {sorted(_ACTIVATIONS)}")
        self.attention = TextAttention(hidden_size, num_heads, layer_norm_eps, attention_dropout, hidden_dropout)
        self.intermediate = TextIntermediate(hidden_size, intermediate_size, _ACTIVATIONS[hidden_act])
        self.output = TextOutput(intermediate_size, hidden_size, layer_norm_eps, hidden_dropout)

    @classmethod
    def from_bert_config(cls, bert_config: dict[str, Any]) -> TextEncoderLayer:
        """Build from a ``transformers.BertConfig``-style dict (official: the language model's config)."""
        return cls(
            hidden_size=int(bert_config["hidden_size"]),
            num_heads=int(bert_config["num_attention_heads"]),
            intermediate_size=int(bert_config["intermediate_size"]),
            layer_norm_eps=float(bert_config.get("layer_norm_eps", 1e-12)),
            hidden_act=str(bert_config.get("hidden_act", "gelu")),
            hidden_dropout=float(bert_config.get("hidden_dropout_prob", 0.1)),
            attention_dropout=float(bert_config.get("attention_probs_dropout_prob", 0.1)),
        )

    def reset_parameters(self) -> None:
        """PyTorch default init of every Linear and LayerNorm.

        The official ``BertEncoderLayer`` subclasses ``BertPreTrainedModel`` but never calls its
        weight init, so a fresh official layer carries the plain ``nn.Linear`` / ``nn.LayerNorm``
        defaults, reproduced here.
        """
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.LayerNorm)):
                module.reset_parameters()

    def forward(self, text_hidden: Tensor, text_mask: Tensor | None = None) -> Tensor:
        """
        Args:
            text_hidden: [B, T, D].
            text_mask: [B, T], 1 for real tokens, 0 for padding; None = all real.

        Returns:
            [B, T, D].
        """
        dtype = text_hidden.dtype
        if text_mask is None:
            mask_bias = text_hidden.new_zeros(text_hidden.shape[0], 1, 1, text_hidden.shape[1])
        else:
            # Hugging Face extended mask: (1 - mask) * finfo.min, [B, T] -> [B, 1, 1, T].
            mask_bias = (1.0 - text_mask.to(dtype))[:, None, None, :] * torch.finfo(dtype).min
        attention_output = self.attention(text_hidden, mask_bias)
        return self.output(self.intermediate(attention_output), attention_output)
