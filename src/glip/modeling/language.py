"""BERT language backbone (official ``language_backbone/bert_model.py:BertEncoder``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from transformers import BertConfig, BertModel


@dataclass
class TextFeatures:
    """Encoded prompt.

    Attributes:
        hidden: ``[B, T, D]`` last BERT layer, unmasked (input of the fusion tower).
        embedded: ``[B, T, D]`` the same multiplied by the attention mask (pad rows are zero).
        mask: ``[B, T]`` attention mask (1 = real token).
    """

    hidden: Tensor
    embedded: Tensor
    mask: Tensor

    @property
    def aggregate(self) -> Tensor:
        """``[B, D]`` mean of the real tokens' embeddings (official ``aggregate``)."""
        return self.embedded.sum(1) / self.mask.sum(-1, keepdim=True).to(self.embedded.dtype)


def bert_config(settings: dict[str, Any]) -> BertConfig:
    """A ``BertConfig`` with eager attention, whose softmax matches the official fp32 numbers."""
    config = BertConfig(**settings)
    config._attn_implementation = "eager"
    return config


class LanguageBackbone(nn.Module):
    """BERT without pooler; GLIP uses its last layer (official N_LAYERS = 1)."""

    def __init__(self, settings: dict[str, Any]) -> None:
        super().__init__()
        self.bert = BertModel(bert_config(settings), add_pooling_layer=False)
        self.hidden_size = int(self.bert.config.hidden_size)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> TextFeatures:
        """
        Args:
            input_ids: ``[B, T]`` token ids.
            attention_mask: ``[B, T]`` 1 for real tokens, 0 for padding.
        """
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        embedded = hidden * attention_mask.unsqueeze(-1).to(hidden.dtype)
        return TextFeatures(hidden=hidden, embedded=embedded, mask=attention_mask)


def freeze(module: nn.Module) -> None:
    """Stop gradients through ``module`` (official LANGUAGE_BACKBONE.FREEZE)."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)


__all__ = ["LanguageBackbone", "TextFeatures", "bert_config", "freeze"]
