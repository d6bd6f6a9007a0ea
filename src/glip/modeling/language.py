"""BERT language backbone (official ``language_backbone/bert_model.py:BertEncoder``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
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


class PromptOffset(nn.Module):
    """Learned offsets added to the language features of one fixed prompt (GLIP prompt tuning).

    Official ``rpn/vldyhead.py:VLDyHeadModule.forward`` with DYHEAD.FUSE_CONFIG.ADD_LINEAR_LAYER
    (``SOLVER.TUNING_HIGHLEVEL_OVERRIDE language_prompt_v2``): row ``t`` of a zero-initialised table
    (``tunable_linear.weight``, ``[1000, D]``) is added to the BERT output of token ``t``, both to
    the input of the fusion tower (``hidden``) and to the features the dot product scores against
    (``embedded``); everything else stays frozen. The offsets belong to token positions, so they
    mean something only for the prompt they were tuned on: :attr:`classes` (its class texts, in
    label order). Differences from the official code: the table has ``max_query_len`` rows (the
    official rows past the token limit are never read), and padding rows of ``embedded`` stay zero
    (officially they receive their offsets too, which no loss or score ever reads).

    Args:
        max_len: rows of the table (the model's ``max_query_len``).
        dim: width of the language features.
        classes: the class texts of the tuned prompt, in label order.
    """

    def __init__(self, max_len: int, dim: int, classes: Sequence[str], names: Sequence[str] | None = None) -> None:
        super().__init__()
        if isinstance(classes, str) or not classes:
            raise ValueError("a prompt offset needs the non-empty list of class texts it is tuned for")
        if names is not None and len(names) != len(classes):
            raise ValueError(f"{len(names)} class names for {len(classes)} tuned class texts")
        self.offset = nn.Parameter(torch.zeros(max_len, dim))
        self.classes: tuple[str, ...] = tuple(classes)
        # What detections call each class (a descriptive text's class name); the texts by default.
        self.names: tuple[str, ...] = tuple(names) if names is not None else self.classes

    def forward(self, text: TextFeatures) -> TextFeatures:
        """``text`` with row ``t`` of the table added to token ``t`` (``[B, T, D]``, ``T <= max_len``)."""
        length = text.hidden.shape[1]
        if length > self.offset.shape[0]:
            raise ValueError(f"prompt of {length} tokens is longer than the {self.offset.shape[0]} tuned offsets")
        hidden = text.hidden + self.offset[:length].unsqueeze(0).to(text.hidden.dtype)  # [T, D] -> [1, T, D]
        embedded = hidden * text.mask.unsqueeze(-1).to(hidden.dtype)
        return TextFeatures(hidden=hidden, embedded=embedded, mask=text.mask)


def freeze(module: nn.Module) -> None:
    """Stop gradients through ``module`` (official LANGUAGE_BACKBONE.FREEZE)."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)


__all__ = ["LanguageBackbone", "PromptOffset", "TextFeatures", "bert_config", "freeze"]
