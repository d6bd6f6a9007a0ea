"""Swin Transformer image backbone (Liu et al. 2021, arXiv:2103.14030) as used by GLIP.

Matches the official ``maskrcnn_benchmark/modeling/backbone/swint.py`` with backbone
``SWINT-FPN-RETINANET``: four stages with strides 4, 8, 16, 32; the stride-4 output is returned without
normalisation, the three coarser ones through a LayerNorm each. The official irregularities that change
outputs are kept (quirk 4 of ``tests/reference/glip_tiny_parity/README.md``):

* the patch embedding pads the image at right/bottom to a multiple of the patch size;
* every block pads its map at right/bottom to a multiple of the window AFTER ``norm1``, so the padding
  tokens are zero vectors that real tokens attend to (no mask hides them);
* odd-indexed blocks roll the padded map by ``window_size // 2`` even when it is a single window (the
  Swin paper and timm skip the shift there), with ``quirks.SWIN_WINDOW_MASK_VALUE`` between regions;
* patch merging pads odd sizes with zeros.

Stage maps are kept channels-last (``[B, H, W, C]``). Instead of the official pad -> roll -> partition and
partition-reverse -> roll -> crop copies, each block moves its tokens into and out of the window layout
with one precomputed gather each (:class:`WindowLayout`), and q/k/v are read as strided views.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from glip.config import SwinConfig
from glip.quirks import SWIN_WINDOW_MASK_VALUE


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth: zero the residual branch of whole samples, rescale the kept ones.

    Same semantics as ``timm`` ``DropPath`` (used by the official block); a no-op outside training.

    Args:
        x: residual branch, ``[B, ...]``.
        rate: probability of dropping a sample's branch.
        training: whether the module is in training mode.
    """
    if rate == 0.0 or not training:
        return x
    keep_prob = 1.0 - rate
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep_prob)
    return x * keep.div_(keep_prob)


def relative_position_index(window_size: int) -> Tensor:
    """Index into the relative position bias table for every (query, key) pair of a window.

    Returns:
        ``[N, N]`` int64 with ``N = window_size**2``; entry = ``(dy + w - 1) * (2w - 1) + (dx + w - 1)``
        where ``(dy, dx)`` = query position minus key position (official ``WindowAttention.__init__``).
    """
    coords = torch.stack(
        torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    ).flatten(1)  # [2, N]
    relative = coords[:, :, None] - coords[:, None, :] + (window_size - 1)  # [2, N, N]
    return relative[0] * (2 * window_size - 1) + relative[1]


def padded_size(size: int, window_size: int) -> int:
    """``size`` rounded up to a multiple of ``window_size``.

    Written without negative floor division: the ONNX exporter traces ``//`` on sizes as a
    truncating division, which would round ``-(-size // w)`` the wrong way (glip.export)."""
    return (size + window_size - 1) // window_size * window_size


def shifted_window_mask(padded_height: int, padded_width: int, window_size: int, shift: int,
                        device: torch.device, dtype: torch.dtype) -> Tensor:
    """Additive mask that stops shifted windows from mixing regions that the cyclic roll brought together.

    Tokens are labelled by region (3 bands per axis: ``[0, P-w)``, ``[P-w, P-s)``, ``[P-s, P)`` of the
    padded map, as in the official ``BasicLayer.forward``); pairs with different labels get
    ``quirks.SWIN_WINDOW_MASK_VALUE`` (-100, not -inf, so such a pair keeps a tiny weight).

    Returns:
        ``[num_windows, N, N]`` with ``N = window_size**2``, windows in row-major order.
    """

    def bands(size: int) -> Tensor:
        index = torch.arange(size, device=device)
        return (index >= size - window_size).long() + (index >= size - shift).long()

    labels = bands(padded_height)[:, None] * 3 + bands(padded_width)[None, :]  # [Hp, Wp]
    windows = labels.view(padded_height // window_size, window_size, padded_width // window_size, window_size)
    windows = windows.permute(0, 2, 1, 3).reshape(-1, window_size * window_size)  # [nW, N]
    different = windows[:, None, :] != windows[:, :, None]  # [nW, N, N]
    mask = torch.zeros(different.shape, device=device, dtype=dtype)
    return mask.masked_fill_(different, SWIN_WINDOW_MASK_VALUE)


class WindowLayout(NamedTuple):
    """Where the tokens of an ``H x W`` map go when it is padded, rolled and cut into windows.

    Slots are numbered window by window (windows row-major, tokens row-major inside a window), i.e. the
    order of the official ``window_partition(torch.roll(F.pad(x), -shift))``.

    Attributes:
        source: ``[num_windows * N]`` row-major token index that fills each slot (0 for padding slots).
        padding_slots: ``[P]`` slots that hold padding, or None when the map needs none.
        slot_of_token: ``[H * W]`` slot of each token (the inverse, used to scatter results back).
    """

    source: Tensor
    padding_slots: Tensor | None
    slot_of_token: Tensor

    @classmethod
    def build(cls, height: int, width: int, window_size: int, shift: int, device: torch.device) -> WindowLayout:
        padded_height, padded_width = padded_size(height, window_size), padded_size(width, window_size)
        # torch.roll(x, -shift) moves token (y, x) to ((y - shift) mod Hp, (x - shift) mod Wp).
        rows = (torch.arange(height, device=device) - shift) % padded_height
        cols = (torch.arange(width, device=device) - shift) % padded_width
        window_index = (rows // window_size)[:, None] * (padded_width // window_size) + (cols // window_size)
        inside_index = (rows % window_size)[:, None] * window_size + (cols % window_size)
        slot_of_token = (window_index * window_size**2 + inside_index).flatten()  # [H*W]
        num_slots = padded_height * padded_width
        source = torch.zeros(num_slots, dtype=torch.long, device=device)
        source[slot_of_token] = torch.arange(height * width, device=device)
        padding_slots = None
        if num_slots != height * width:
            is_token = torch.zeros(num_slots, dtype=torch.bool, device=device)
            is_token[slot_of_token] = True
            padding_slots = (~is_token).nonzero().squeeze(1)
        return cls(source, padding_slots, slot_of_token)


class PatchEmbedding(nn.Module):
    """Non-overlapping ``patch_size`` x ``patch_size`` patches -> linear embedding -> LayerNorm."""

    def __init__(self, patch_size: int, in_channels: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, images: Tensor) -> Tensor:
        """
        Args:
            images: ``[B, 3, H, W]``, any size (padded at right/bottom to a multiple of the patch size).

        Returns:
            ``[B, ceil(H/p), ceil(W/p), C]`` channels-last, contiguous.
        """
        height, width = images.shape[-2:]
        pad_bottom = -height % self.patch_size
        pad_right = -width % self.patch_size
        if pad_bottom or pad_right:
            images = F.pad(images, (0, pad_right, 0, pad_bottom))
        x = self.proj(images).permute(0, 2, 3, 1).contiguous()  # [B, C, h, w] -> [B, h, w, C]
        return self.norm(x)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative position bias."""

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.window_size = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        # Recomputable from the window size; official checkpoints carry it, the conversion drops it.
        self.register_buffer("relative_position_index", relative_position_index(window_size), persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> Tensor:
        """Returns: ``[num_heads, N, N]`` bias added to the attention logits of every window."""
        num_tokens = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]  # [N*N, heads]
        return bias.view(num_tokens, num_tokens, self.num_heads).permute(2, 0, 1)

    def forward(self, windows: Tensor, window_mask: Tensor | None) -> Tensor:
        """
        Args:
            windows: ``[B * num_windows, N, C]`` tokens of each window (batch-major).
            window_mask: ``[num_windows, N, N]`` additive mask of shifted windows, or None.

        Returns:
            ``[B * num_windows, N, C]`` BEFORE the output projection ``proj``: it acts per token, so the
            block applies it once the padding tokens are dropped.
        """
        num_windows, num_tokens, channels = windows.shape
        head_dim = channels // self.num_heads
        # [B*nW, N, 3C] -> [3, B*nW, heads, N, head_dim] as strided views (no copy)
        qkv = self.qkv(windows).view(num_windows, num_tokens, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)
        bias = self.relative_position_bias().unsqueeze(0)  # [1, heads, N, N]
        if window_mask is not None:
            bias = bias + window_mask.unsqueeze(1)  # [nW, heads, N, N]
            if bias.shape[0] != num_windows:
                bias = bias.repeat(num_windows // bias.shape[0], 1, 1, 1)  # [B*nW, heads, N, N]
        # Official order: (q * head_dim**-0.5) @ k^T + bias (+ mask), softmax over keys, @ v.
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=bias.to(query.dtype))
        # [B*nW, heads, N, head_dim] -> [B*nW, N, C] (no copy: the kernel's output is stored token-major)
        return out.transpose(1, 2).reshape(num_windows, num_tokens, channels)


class Mlp(nn.Module):
    """Two-layer feed-forward network with exact GELU."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    """Pre-norm (shifted-)window attention + MLP, each with a residual connection."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift_size: int, mlp_ratio: float,
                 drop_path_rate: float) -> None:
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size {shift_size} must be in [0, window_size={window_size})")
        self.window_size = window_size
        self.shift_size = shift_size
        self.drop_path_rate = drop_path_rate
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, layout: WindowLayout, window_mask: Tensor | None) -> Tensor:
        """
        Args:
            x: ``[B, H, W, C]`` contiguous.
            layout: window layout of the map for this block's shift (:meth:`WindowLayout.build`).
            window_mask: ``[num_windows, N, N]`` for shifted blocks, None otherwise.

        Returns:
            ``[B, H, W, C]``.
        """
        batch, height, width, channels = x.shape
        num_tokens = self.window_size**2
        shortcut = x
        x = self.norm1(x).reshape(batch, height * width, channels)
        # Pad + roll + partition in one gather. Padding comes after norm1 (official
        # SwinTransformerBlock), so padding tokens are exact zeros.
        windows = x.index_select(1, layout.source)  # [B, nW*N, C]
        if layout.padding_slots is not None:
            windows.index_fill_(1, layout.padding_slots, 0.0)
        windows = self.attn(windows.view(-1, num_tokens, channels), window_mask)  # [B*nW, N, C]
        # Reverse partition + roll back + crop in one gather: [B, nW*N, C] -> [B, H*W, C]
        x = self.attn.proj(windows.view(batch, -1, channels).index_select(1, layout.slot_of_token))
        x = shortcut + drop_path(x.view(batch, height, width, channels), self.drop_path_rate, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, self.training)


class PatchMerging(nn.Module):
    """Concatenate each 2x2 neighbourhood (4C channels), LayerNorm, project to 2C: halves the resolution."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """
        Args:
            x: ``[B, H, W, C]``; odd sizes are zero-padded at right/bottom.

        Returns:
            ``[B, ceil(H/2), ceil(W/2), 2C]``.
        """
        batch, height, width, channels = x.shape
        if height % 2 or width % 2:
            x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
            height, width = height + height % 2, width + width % 2
        # Official channel order is (row 0, col 0), (row 1, col 0), (row 0, col 1), (row 1, col 1):
        # [B, H/2, 2(row), W/2, 2(col), C] -> [B, H/2, W/2, col, row, C] -> [B, H/2, W/2, 4C]
        x = x.view(batch, height // 2, 2, width // 2, 2, channels).permute(0, 1, 3, 4, 2, 5)
        x = x.reshape(batch, height // 2, width // 2, 4 * channels)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """``depth`` blocks alternating regular and shifted windows, then (except the last stage) patch merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float,
                 drop_path_rates: list[float], downsample: bool, use_checkpoint: bool) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, 0 if index % 2 == 0 else self.shift_size, mlp_ratio,
                      drop_path_rates[index])
            for index in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """
        Args:
            x: ``[B, H, W, C]`` contiguous.

        Returns:
            The stage output ``[B, H, W, C]`` and the input of the next stage ``[B, ceil(H/2), ceil(W/2), 2C]``
            (the output itself for the last stage).
        """
        height, width = x.shape[1:3]
        window = self.window_size
        # Layouts and mask depend on the map size only: computed once for all blocks of the stage.
        layouts = {shift: WindowLayout.build(height, width, window, shift, x.device)
                   for shift in {block.shift_size for block in self.blocks}}
        window_mask = shifted_window_mask(padded_size(height, window), padded_size(width, window), window,
                                          self.shift_size, x.device, x.dtype)
        for block in self.blocks:
            mask = window_mask if block.shift_size else None
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, layouts[block.shift_size], mask, use_reentrant=False)
            else:
                x = block(x, layouts[block.shift_size], mask)
        return x, (self.downsample(x) if self.downsample is not None else x)


class SwinBackbone(nn.Module):
    """Swin Transformer returning the outputs of its four stages.

    Input contract: ``images`` ``[B, 3, H, W]`` normalised BGR 0-255 images (see ``quirks.BGR_PIXEL_MEAN``),
    zero-padded at right/bottom to a common size (a multiple of 32 in GLIP). Output: four maps
    ``[B, C_i, ceil(H / 2**(i+2)), ceil(W / 2**(i+2))]`` with ``C_i = embed_dim * 2**i`` (strides 4, 8, 16, 32).

    Args:
        embed_dim: channels of the first stage.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window_size: side of the attention windows (7 for GLIP-T, 12 for GLIP-L).
        mlp_ratio: MLP hidden width / channels.
        patch_size: side of the patches of the first embedding.
        drop_path_rate: stochastic depth of the last block, linearly increasing from 0 (training only).
        use_checkpoint: recompute blocks in backward to save memory (training only; no effect on outputs).
    """

    def __init__(self, embed_dim: int, depths: tuple[int, ...], num_heads: tuple[int, ...], window_size: int,
                 mlp_ratio: float = 4.0, patch_size: int = 4, drop_path_rate: float = 0.0,
                 use_checkpoint: bool = False) -> None:
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {depths} and num_heads {num_heads} must have the same length")
        self.out_channels: tuple[int, ...] = tuple(embed_dim * 2**index for index in range(len(depths)))
        self.frozen_stages = -1
        self.patch_embed = PatchEmbedding(patch_size, 3, embed_dim)
        # Plain Python (not torch.linspace) so the model can be built on the meta device.
        total = sum(depths)
        rates = [drop_path_rate * index / max(total - 1, 1) for index in range(total)]
        self.layers = nn.ModuleList()
        for index, (depth, heads) in enumerate(zip(depths, num_heads)):
            first = sum(depths[:index])
            self.layers.append(SwinStage(
                self.out_channels[index], depth, heads, window_size, mlp_ratio, rates[first:first + depth],
                downsample=index < len(depths) - 1, use_checkpoint=use_checkpoint))
        # SWINT-FPN-RETINANET: the stride-4 output has no norm (official ``norm0`` is an Identity).
        self.output_norms = nn.ModuleList(nn.LayerNorm(channels) for channels in self.out_channels[1:])

    @classmethod
    def from_config(cls, config: SwinConfig, use_checkpoint: bool = False) -> SwinBackbone:
        backbone = cls(config.embed_dim, config.depths, config.num_heads, config.window_size, config.mlp_ratio,
                       config.patch_size, config.drop_path_rate, use_checkpoint)
        backbone.freeze_stages(config.freeze_at)
        return backbone

    def forward(self, images: Tensor) -> list[Tensor]:
        """
        Args:
            images: ``[B, 3, H, W]``.

        Returns:
            Four maps ``[B, C_i, H_i, W_i]`` at strides 4, 8, 16, 32.
        """
        x = self.patch_embed(images)  # [B, H/4, W/4, C]
        outputs = []
        for index, stage in enumerate(self.layers):
            stage_output, x = stage(x)
            if index > 0:
                stage_output = self.output_norms[index - 1](stage_output)
            outputs.append(stage_output.permute(0, 3, 1, 2).contiguous())  # [B, H, W, C] -> [B, C, H, W]
        return outputs

    def freeze_stages(self, freeze_at: int) -> None:
        """Freeze the first parts of the backbone (official FREEZE_CONV_BODY_AT / ``_freeze_stages``).

        ``freeze_at`` < 0: nothing; >= 0: the patch embedding; >= 2: also stages ``0 .. freeze_at - 2``
        (so 2 freezes the patch embedding and the first stage, as GLIP-L does). Frozen parts get
        ``requires_grad=False`` and stay in eval mode (no stochastic depth) through :meth:`train`.
        The output norms are never frozen.
        """
        self.frozen_stages = freeze_at
        for module in self._frozen_modules():
            module.eval()
            for parameter in module.parameters():
                parameter.requires_grad_(False)

    def train(self, mode: bool = True) -> SwinBackbone:
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.patch_embed, *self.layers[: max(self.frozen_stages - 1, 0)]]
