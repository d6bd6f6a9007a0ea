"""Deep vision-language fusion of the DyHead tower (GLIP "MHA-B" early fusion).

One fusion step lets every visual position (all pyramid levels together) attend to the text
tokens and every text token attend to all visual positions, with one shared set of attention
scores (official ``utils/fuse_helper.py:BiMultiHeadAttention`` inside
``BiAttentionBlockForCheckpoint``, called by ``rpn/vldyhead.py:VLFuse``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from glip import quirks


def text_attention_bias(text_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive bias on the text->image scores built from the text mask as the official code does.

    ``BiMultiHeadAttention.forward`` fills the zeros of the (0/1) mask with
    ``quirks.TEXT_ATTENTION_MASK_VALUE`` and adds the result to the scores, so real tokens get
    ``+1`` (a uniform shift of the row, harmless for the softmax but kept for identical rounding)
    and padded tokens get ``-9e15``.

    Args:
        text_mask: [B, T], 1 for real tokens and 0 for padding (any dtype).
        dtype: dtype of the attention scores.

    Returns:
        [B, 1, 1, T] bias, broadcastable over visual positions and heads ([B, N, h, T] scores).
    """
    mask = text_mask.to(dtype)
    bias = mask.masked_fill(mask == 0, quirks.TEXT_ATTENTION_MASK_VALUE)
    return bias[:, None, None, :]


class BiAttention(nn.Module):
    """Bi-directional multi-head attention between visual positions and text tokens.

    The scores ``q_vision . k_text`` are computed once. Text->image (visual output): softmax over
    the text tokens with padded tokens masked out. Image->text (text output): softmax of the
    transposed scores over ALL visual positions, without any mask (official behaviour: image
    padding is not masked either, quirk 6 of the data card).

    Args:
        vision_dim: channels of the visual features.
        text_dim: width of the text hidden states.
        embed_dim: width of the attention (2048 in the released models).
        num_heads: attention heads; ``embed_dim`` must be divisible by it.
        dropout: dropout on both attention probability maps (training only).
    """

    def __init__(self, vision_dim: int, text_dim: int, embed_dim: int, num_heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.scale = self.head_dim**-0.5
        self.dropout = dropout

        self.vision_proj = nn.Linear(vision_dim, embed_dim)
        self.text_proj = nn.Linear(text_dim, embed_dim)
        self.vision_value_proj = nn.Linear(vision_dim, embed_dim)
        self.text_value_proj = nn.Linear(text_dim, embed_dim)
        self.vision_out_proj = nn.Linear(embed_dim, vision_dim)
        self.text_out_proj = nn.Linear(embed_dim, text_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights, zero biases (official ``BiMultiHeadAttention._reset_parameters``)."""
        for linear in (
            self.vision_proj,
            self.text_proj,
            self.vision_value_proj,
            self.text_value_proj,
            self.vision_out_proj,
            self.text_out_proj,
        ):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, vision: Tensor, text: Tensor, text_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """
        Args:
            vision: [B, N, vision_dim], all pyramid positions of an image in one sequence.
            text: [B, T, text_dim].
            text_mask: [B, T], 1 for real tokens, 0 for padding; None = all real.

        Returns:
            (vision update [B, N, vision_dim], text update [B, T, text_dim]).

        The official computation (project the N visual positions to queries and values, attend
        per head, project back) is regrouped so that no [N, embed_dim] tensor is formed: every
        per-head projection of the visual side is folded into a small [T, vision_dim] matrix
        (matrix products are associative). With N ~ 22k positions and embed_dim 2048 in GLIP-T
        this halves the work; outputs equal the official ones up to float rounding.
        """
        batch, num_positions, vision_dim = vision.shape
        num_tokens = text.shape[1]
        heads, head_dim = self.num_heads, self.head_dim

        key = self.text_proj(text).view(batch, num_tokens, heads, head_dim)  # [B, T, h, d]
        text_value = self.text_value_proj(text).view(batch, num_tokens, heads, head_dim)  # [B, T, h, d]
        # Official projection weights are [embed_dim, in] = [h * d, in]: split the rows by head.
        query_weight = self.vision_proj.weight.view(heads, head_dim, vision_dim)
        query_bias = self.vision_proj.bias.view(heads, head_dim)
        value_weight = self.vision_value_proj.weight.view(heads, head_dim, vision_dim)
        value_bias = self.vision_value_proj.bias.view(heads, head_dim)
        out_weight = self.vision_out_proj.weight.view(vision_dim, heads, head_dim)

        # Scores (scale * query) . key with query = W_q x + b_q:
        #   x . (scale * W_q^T key) + scale * b_q . key.
        score_matrix = torch.einsum("hdc,bthd->bcht", query_weight, key * self.scale)  # [B, C, h, T]
        score_bias = torch.einsum("hd,bthd->bht", query_bias, key * self.scale)  # [B, h, T]
        scores = torch.baddbmm(
            score_bias.reshape(batch, 1, heads * num_tokens),
            vision,
            score_matrix.reshape(batch, vision_dim, heads * num_tokens),
        )  # [B, N, h*T]
        scores = scores.view(batch, num_positions, heads, num_tokens).clamp(
            min=-quirks.CLAMP_VALUE, max=quirks.CLAMP_VALUE
        )

        # Image->text: each token's distribution over all N visual positions. The official code
        # first subtracts the max and clamps again at -50000; softmax is invariant to the shift
        # and anything below -50000 underflows to probability 0 either way, so that step is omitted.
        text_probs = F.dropout(scores.softmax(dim=1), p=self.dropout, training=self.training)  # [B, N, h, T]
        # Text->image: each position's distribution over the tokens, padded tokens masked.
        if text_mask is not None:
            # The official mask is float32, so fp16 scores are promoted (-9e15 does not fit fp16).
            bias = text_attention_bias(text_mask, torch.promote_types(scores.dtype, torch.float32))
            scores = scores + bias  # + [B, 1, 1, T]
        vision_probs = F.dropout(scores.softmax(dim=-1).to(text_probs.dtype), p=self.dropout, training=self.training)  # [B, N, h, T]

        # Visual update: probs @ text values, then the output projection, folded per head into
        # [T, C] matrices: sum_h probs_h @ (value_h @ W_out_h^T) + b_out.
        value_out = torch.einsum("bthd,chd->bhtc", text_value, out_weight)  # [B, h, T, C]
        vision_update = torch.baddbmm(
            self.vision_out_proj.bias,
            vision_probs.reshape(batch, num_positions, heads * num_tokens),
            value_out.reshape(batch, heads * num_tokens, vision_dim),
        )  # [B, N, C]

        # Text update: probs^T @ (W_v x + b_v) = (probs^T @ x) W_v^T + (probs mass) b_v.
        attended = torch.bmm(
            text_probs.reshape(batch, num_positions, heads * num_tokens).transpose(1, 2), vision
        ).view(batch, heads, num_tokens, vision_dim)  # [B, h, T, C]
        mass = text_probs.sum(dim=1)  # [B, h, T]; 1 except after dropout
        text_context = torch.einsum("bhtc,hdc->bthd", attended, value_weight)
        text_context = text_context + mass.transpose(1, 2)[..., None] * value_bias  # [B, T, h, d]
        text_update = self.text_out_proj(text_context.reshape(batch, num_tokens, self.embed_dim))
        return vision_update, text_update


class VisionLanguageFusion(nn.Module):
    """One fusion step of the tower: layer-normalise both inputs, attend, add scaled updates.

    The residual is added to the NORMALISED inputs, ``vision_out = LN(vision) + scale * update``
    (official ``BiAttentionBlockForCheckpoint.single_attention_call``); the scales ("layer scale",
    official ``gamma_v`` / ``gamma_l``) start at ``layer_scale_init`` = 1 / number of tower layers.

    Args:
        vision_dim: channels of the pyramid features.
        text_dim: width of the text hidden states.
        embed_dim: width of the bi-directional attention.
        num_heads: attention heads.
        dropout: attention-probability dropout (training only).
        layer_scale_init: initial value of both per-channel residual scales.
        use_checkpoint: recompute this step in backward instead of storing its activations
            (official DYHEAD.USE_CHECKPOINT; only active when training with gradients).
    """

    def __init__(
        self,
        vision_dim: int,
        text_dim: int,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.1,
        layer_scale_init: float = 1.0,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.layer_scale_init = layer_scale_init
        self.use_checkpoint = use_checkpoint
        self.vision_norm = nn.LayerNorm(vision_dim)
        self.text_norm = nn.LayerNorm(text_dim)
        self.attention = BiAttention(vision_dim, text_dim, embed_dim, num_heads, dropout)
        self.vision_scale = nn.Parameter(torch.empty(vision_dim))
        self.text_scale = nn.Parameter(torch.empty(text_dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: default LayerNorms, Xavier attention, constant layer scales."""
        self.vision_norm.reset_parameters()
        self.text_norm.reset_parameters()
        self.attention.reset_parameters()
        nn.init.constant_(self.vision_scale, self.layer_scale_init)
        nn.init.constant_(self.text_scale, self.layer_scale_init)

    def _fuse(self, vision: Tensor, text: Tensor, text_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        vision = self.vision_norm(vision)
        text = self.text_norm(text)
        vision_update, text_update = self.attention(vision, text, text_mask)
        return vision + self.vision_scale * vision_update, text + self.text_scale * text_update

    def forward(
        self, visual: list[Tensor], text_hidden: Tensor, text_mask: Tensor | None = None
    ) -> tuple[list[Tensor], Tensor]:
        """
        Args:
            visual: pyramid levels, each [B, C, H_l, W_l].
            text_hidden: [B, T, D].
            text_mask: [B, T], 1 for real tokens, 0 for padding.

        Returns:
            (fused levels with the input shapes, fused text hidden states [B, T, D]).
        """
        sizes = [feature.shape[-2:] for feature in visual]
        # Each level [B, C, H, W] -> [B, H*W, C] (row-major positions), levels concatenated in order.
        vision = torch.cat([feature.flatten(2).transpose(1, 2) for feature in visual], dim=1)  # [B, N, C]

        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            vision, text_hidden = checkpoint(self._fuse, vision, text_hidden, text_mask, use_reentrant=False)
        else:
            vision, text_hidden = self._fuse(vision, text_hidden, text_mask)

        # [B, N, C] -> [B, C, N] -> per level [B, C, H_l, W_l]
        vision = vision.transpose(1, 2)
        chunks = vision.split([height * width for height, width in sizes], dim=2)
        fused = [chunk.reshape(*chunk.shape[:2], *size) for chunk, size in zip(chunks, sizes)]
        return fused, text_hidden
