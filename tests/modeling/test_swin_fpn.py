"""Unit tests of the Swin backbone and the FPN (shapes, batching, masks, freezing, training-only parts)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from glip.config import FPNConfig, SwinConfig
from glip.modeling.fpn import FPN, drop_block
from glip.modeling.swin import (
    SwinBackbone,
    WindowAttention,
    WindowLayout,
    relative_position_index,
    shifted_window_mask,
)
from glip.quirks import SWIN_WINDOW_MASK_VALUE


def tiny_swin(window_size: int = 7, **kwargs) -> SwinBackbone:
    torch.manual_seed(0)
    return SwinBackbone(embed_dim=12, depths=(2, 2, 2, 2), num_heads=(2, 4, 8, 16), window_size=window_size,
                        **kwargs).eval()


@pytest.mark.parametrize(("height", "width"), [(45, 70), (64, 32), (33, 97)])
def test_swin_output_shapes_on_odd_sizes(height: int, width: int) -> None:
    backbone = tiny_swin()
    with torch.no_grad():
        outputs = backbone(torch.randn(2, 3, height, width))
    assert backbone.out_channels == (12, 24, 48, 96)
    assert len(outputs) == 4
    size = (height, width)
    size = tuple(-(-side // 4) for side in size)  # patch embedding pads to /4
    for output, channels in zip(outputs, backbone.out_channels):
        assert output.shape == (2, channels, *size)
        assert output.is_contiguous()
        assert torch.isfinite(output).all()
        size = tuple(-(-side // 2) for side in size)  # patch merging pads odd sizes


def test_swin_batch_equals_single_calls() -> None:
    backbone = tiny_swin()
    images = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        batched = backbone(images)
        singles = [backbone(images[index : index + 1]) for index in range(2)]
    for level, output in enumerate(batched):
        for index in range(2):
            torch.testing.assert_close(output[index : index + 1], singles[index][level], atol=1e-5, rtol=0)


def test_swin_padded_batch_equals_single_call_with_same_padding() -> None:
    """Images of different sizes, zero-padded to one size (as GLIP batches them), equal single calls on the
    same padded images. (A single call on the UNPADDED image differs: windows see the padding.)"""
    backbone = tiny_swin()
    small, large = torch.randn(3, 70, 90), torch.randn(3, 96, 128)
    batch = torch.zeros(2, 3, 96, 128)
    batch[0, :, :70, :90] = small
    batch[1] = large
    with torch.no_grad():
        batched = backbone(batch)
        single_small = backbone(F.pad(small, (0, 128 - 90, 0, 96 - 70))[None])
    for level, output in enumerate(batched):
        torch.testing.assert_close(output[:1], single_small[level], atol=1e-5, rtol=0)


def test_swin_window_12_builds_and_runs() -> None:
    backbone = SwinBackbone.from_config(
        SwinConfig(embed_dim=12, depths=(2, 2, 4, 2), num_heads=(1, 2, 4, 8), window_size=12,
                   drop_path_rate=0.0)
    ).eval()
    attention = backbone.layers[0].blocks[1].attn
    assert attention.relative_position_bias_table.shape == (23 * 23, 1)
    assert attention.relative_position_index.shape == (144, 144)
    assert backbone.layers[2].blocks[3].shift_size == 6
    with torch.no_grad():
        outputs = backbone(torch.randn(1, 3, 100, 160))
    assert [tuple(output.shape[-2:]) for output in outputs] == [(25, 40), (13, 20), (7, 10), (4, 5)]


def test_swin_state_dict_names() -> None:
    keys = set(tiny_swin().state_dict())
    assert not any(key.endswith("relative_position_index") for key in keys)
    for key in [
        "patch_embed.proj.weight", "patch_embed.norm.bias",
        "layers.0.blocks.1.norm1.weight", "layers.0.blocks.1.attn.qkv.weight",
        "layers.0.blocks.1.attn.proj.bias", "layers.3.blocks.0.attn.relative_position_bias_table",
        "layers.2.blocks.0.norm2.weight", "layers.2.blocks.0.mlp.fc1.weight", "layers.2.blocks.0.mlp.fc2.bias",
        "layers.2.downsample.reduction.weight", "layers.2.downsample.norm.weight",
        "output_norms.0.weight", "output_norms.2.bias",
    ]:
        assert key in keys, key
    assert not any(key.startswith(("layers.3.downsample", "output_norms.3")) for key in keys)
    assert "layers.0.downsample.reduction.bias" not in keys


def test_relative_position_index_matches_definition() -> None:
    window = 3
    index = relative_position_index(window)
    positions = [(row, col) for row in range(window) for col in range(window)]
    for query, (query_row, query_col) in enumerate(positions):
        for key, (key_row, key_col) in enumerate(positions):
            expected = (query_row - key_row + window - 1) * (2 * window - 1) + (query_col - key_col + window - 1)
            assert index[query, key] == expected


@pytest.mark.parametrize(("height", "width", "window"), [(14, 21, 7), (7, 7, 7), (24, 12, 12)])
def test_shifted_window_mask_matches_slice_construction(height: int, width: int, window: int) -> None:
    shift = window // 2
    labels = torch.zeros(height, width)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for rows in bands:
        for cols in bands:
            labels[rows, cols] = label
            label += 1
    windows = labels.view(height // window, window, width // window, window).permute(0, 2, 1, 3)
    windows = windows.reshape(-1, window * window)
    expected = torch.where(windows[:, None, :] != windows[:, :, None], SWIN_WINDOW_MASK_VALUE, 0.0)
    mask = shifted_window_mask(height, width, window, shift, torch.device("cpu"), torch.float32)
    torch.testing.assert_close(mask, expected, atol=0, rtol=0)


@pytest.mark.parametrize(("height", "width", "window", "shift"), [(10, 15, 7, 3), (3, 3, 7, 3), (14, 7, 7, 0),
                                                                  (13, 26, 12, 6)])
def test_window_layout_equals_pad_roll_partition(height: int, width: int, window: int, shift: int) -> None:
    x = torch.randn(2, height, width, 5)
    padded = F.pad(x, (0, 0, 0, -width % window, 0, -height % window))
    rolled = torch.roll(padded, shifts=(-shift, -shift), dims=(1, 2))
    rows, cols = rolled.shape[1] // window, rolled.shape[2] // window
    expected = rolled.view(2, rows, window, cols, window, 5).permute(0, 1, 3, 2, 4, 5).reshape(2, -1, 5)
    layout = WindowLayout.build(height, width, window, shift, x.device)
    windows = x.view(2, -1, 5).index_select(1, layout.source)
    if layout.padding_slots is not None:
        windows[:, layout.padding_slots] = 0.0
    torch.testing.assert_close(windows, expected, atol=0, rtol=0)
    torch.testing.assert_close(windows.index_select(1, layout.slot_of_token), x.view(2, -1, 5), atol=0, rtol=0)


@pytest.mark.parametrize("shifted", [False, True])
def test_window_attention_matches_explicit_computation(shifted: bool) -> None:
    """Forward and gradients (including the relative position bias table) against the textbook formula."""
    torch.manual_seed(0)
    attention = WindowAttention(dim=8, num_heads=2, window_size=3)
    with torch.no_grad():
        attention.relative_position_bias_table.normal_()
    batch, num_windows = 2, 4
    windows = torch.randn(batch * num_windows, 9, 8, requires_grad=True)
    mask = shifted_window_mask(6, 6, 3, 1, windows.device, windows.dtype) if shifted else None

    def explicit(x: torch.Tensor) -> torch.Tensor:
        qkv = attention.qkv(x).view(-1, 9, 3, 2, 4).permute(2, 0, 3, 1, 4)
        query, key, value = qkv[0] * 4**-0.5, qkv[1], qkv[2]
        logits = query @ key.transpose(-2, -1)  # [B*nW, heads, N, N]
        table = attention.relative_position_bias_table
        logits = logits + table[attention.relative_position_index.view(-1)].view(9, 9, 2).permute(2, 0, 1)
        if mask is not None:
            logits = (logits.view(batch, num_windows, 2, 9, 9) + mask[None, :, None]).view(-1, 2, 9, 9)
        return (logits.softmax(-1) @ value).transpose(1, 2).reshape(-1, 9, 8)

    results = []
    for function in (explicit, lambda x: attention(x, mask)):
        attention.zero_grad()
        windows.grad = None
        out = function(windows)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out, windows.grad, attention.relative_position_bias_table.grad.clone()))
    for expected, actual in zip(*results):
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_shifted_blocks_shift_even_when_map_is_smaller_than_window() -> None:
    """Official quirk: a 3x3 map (padded to one 7x7 window) is still rolled by 3 in odd blocks."""
    backbone = tiny_swin()
    block = backbone.layers[0].blocks[1]
    assert block.shift_size == 3
    x = torch.randn(1, 3, 3, 12)
    mask = shifted_window_mask(7, 7, 7, 3, x.device, x.dtype)
    assert (mask != 0).any()
    with torch.no_grad():
        shifted = block(x, WindowLayout.build(3, 3, 7, 3, x.device), mask)
        unshifted = block(x, WindowLayout.build(3, 3, 7, 0, x.device), None)
    assert not torch.allclose(shifted, unshifted)


def test_drop_path_is_training_only() -> None:
    with_drop = tiny_swin(drop_path_rate=0.5)
    without = tiny_swin(drop_path_rate=0.0)
    without.load_state_dict(with_drop.state_dict())
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for expected, actual in zip(without(images), with_drop(images)):
            torch.testing.assert_close(actual, expected, atol=0, rtol=0)
        with_drop.train()
        torch.manual_seed(1)
        trained = with_drop(images)
    assert not torch.allclose(trained[3], without(images)[3])


def test_gradient_checkpointing_gives_same_outputs_and_gradients() -> None:
    plain = tiny_swin().train()
    checkpointed = tiny_swin(use_checkpoint=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    images = torch.randn(1, 3, 64, 64)
    results = []
    for backbone in (plain, checkpointed):
        outputs = backbone(images)
        sum(output.square().mean() for output in outputs).backward()
        results.append((outputs, backbone.layers[0].blocks[1].attn.qkv.weight.grad))
    for expected, actual in zip(results[0][0], results[1][0]):
        torch.testing.assert_close(actual, expected)
    torch.testing.assert_close(results[1][1], results[0][1])


@pytest.mark.parametrize(("freeze_at", "frozen"), [(-1, []), (0, ["patch_embed"]), (1, ["patch_embed"]),
                                                   (2, ["patch_embed", "layers.0"]),
                                                   (3, ["patch_embed", "layers.0", "layers.1"])])
def test_freeze_stages_follows_official_semantics(freeze_at: int, frozen: list[str]) -> None:
    backbone = tiny_swin(drop_path_rate=0.2)
    backbone.freeze_stages(freeze_at)
    backbone.train()
    for name, parameter in backbone.named_parameters():
        is_frozen = any(name.startswith(prefix + ".") for prefix in frozen)
        assert parameter.requires_grad != is_frozen, name
    for name, module in backbone.named_modules():
        is_frozen = any(name == prefix or name.startswith(prefix + ".") for prefix in frozen)
        if name:
            assert module.training != is_frozen, name


def test_from_config_applies_freeze_at() -> None:
    backbone = SwinBackbone.from_config(SwinConfig(embed_dim=12, depths=(2, 2, 2, 2), num_heads=(2, 4, 8, 16),
                                                   freeze_at=2))
    assert not backbone.layers[0].blocks[0].attn.qkv.weight.requires_grad
    assert backbone.layers[1].blocks[0].attn.qkv.weight.requires_grad


def tiny_fpn(drop_block_prob: float = 0.0) -> FPN:
    torch.manual_seed(0)
    return FPN.from_config(FPNConfig(out_channels=16, drop_block_prob=drop_block_prob), in_channels=(8, 12, 20))


def fpn_inputs(batch: int, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    return [torch.randn(batch, channels, *size) for channels, size in zip((8, 12, 20), sizes)]


def test_fpn_output_shapes_on_odd_sizes() -> None:
    fpn = tiny_fpn().eval()
    with torch.no_grad():
        levels = fpn(fpn_inputs(2, [(13, 9), (7, 5), (4, 3)]))
    assert [tuple(level.shape) for level in levels] == [
        (2, 16, 13, 9), (2, 16, 7, 5), (2, 16, 4, 3), (2, 16, 2, 2), (2, 16, 1, 1)
    ]


def test_fpn_batch_equals_single_calls() -> None:
    fpn = tiny_fpn().eval()
    features = fpn_inputs(2, [(12, 16), (6, 8), (3, 4)])
    with torch.no_grad():
        batched = fpn(features)
        singles = [fpn([feature[index : index + 1] for feature in features]) for index in range(2)]
    for level, output in enumerate(batched):
        for index in range(2):
            torch.testing.assert_close(output[index : index + 1], singles[index][level], atol=1e-5, rtol=0)


def test_fpn_top_down_uses_nearest_upsampling_and_p6_from_p5() -> None:
    fpn = tiny_fpn().eval()
    features = fpn_inputs(1, [(5, 7), (3, 4), (2, 2)])
    with torch.no_grad():
        levels = fpn(features)
        merged5 = fpn.lateral_convs[2](features[2])
        merged4 = fpn.lateral_convs[1](features[1]) + F.interpolate(merged5, size=(3, 4), mode="nearest")
        merged3 = fpn.lateral_convs[0](features[0]) + F.interpolate(merged4, size=(5, 7), mode="nearest")
        p5 = fpn.output_convs[2](merged5)
        p6 = fpn.p6(p5)
        expected = [fpn.output_convs[0](merged3), fpn.output_convs[1](merged4), p5, p6, fpn.p7(F.relu(p6))]
    for actual, wanted in zip(levels, expected):
        torch.testing.assert_close(actual, wanted)


def test_fpn_drop_block_is_training_only() -> None:
    features = fpn_inputs(2, [(12, 16), (6, 8), (3, 4)])
    plain = tiny_fpn(0.0).eval()
    dropping = tiny_fpn(0.3)
    with torch.no_grad():
        expected = plain(features)
        for actual, wanted in zip(dropping.eval()(features), expected):
            torch.testing.assert_close(actual, wanted, atol=0, rtol=0)
        torch.manual_seed(3)
        trained = dropping.train()(features)
    assert not torch.allclose(trained[0], expected[0])
    # P5 is never dropped (official FPN.forward drops only the merged maps below the top level).
    torch.testing.assert_close(trained[2], expected[2], atol=0, rtol=0)


def test_drop_block_zeroes_square_blocks_and_rescales() -> None:
    torch.manual_seed(0)
    x = torch.ones(2, 4, 20, 20)
    out = drop_block(x, drop_prob=0.3)
    zeros = out[:, 0] == 0
    # The same positions are dropped in every channel.
    assert torch.equal(out == 0, zeros[:, None].expand_as(out))
    assert zeros.any()
    # Every dropped position lies in a fully dropped 3x3 square (cropped at the border).
    padded = F.pad(zeros.float()[:, None], (1, 1, 1, 1), value=1.0)
    square = -F.max_pool2d(-padded, kernel_size=3, stride=1)  # 1 where a whole 3x3 square is dropped
    covered = F.max_pool2d(square, kernel_size=3, stride=1, padding=1)[:, 0] > 0
    assert covered[zeros].all()
    kept = out[out != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, zeros.numel() / (~zeros).sum().item()))
    assert drop_block(x, drop_prob=0.0) is x
