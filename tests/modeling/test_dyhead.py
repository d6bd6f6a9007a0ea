"""DyHead tower: shapes, padded batch == single calls, backward, init, and the pieces against
literal implementations (unfolded bi-attention, Hugging Face BERT layer, per-sample offsets)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torchvision.ops import deform_conv2d

from glip import quirks
from glip.modeling.dyhead import DyConv, DyHeadTower, ModulatedDeformConv2d
from glip.modeling.fusion import BiAttention
from glip.modeling.text_layer import TextEncoderLayer

BERT_TINY = {
    "hidden_size": 16,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "layer_norm_eps": 1e-12,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
}
CHANNELS = 32
TEXT_DIM = 16
# Levels of a 100x140 image (padded to 128x160): P3..P7, odd sizes and a 1-pixel-wide level.
LEVEL_SIZES = [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]


def _tower(fusion_enabled: bool = True, **kwargs) -> DyHeadTower:
    torch.manual_seed(0)
    return DyHeadTower(
        channels=CHANNELS,
        num_layers=2,
        text_dim=TEXT_DIM,
        fusion_enabled=fusion_enabled,
        fusion_embed_dim=24,
        fusion_num_heads=4,
        bert_config=BERT_TINY,
        **kwargs,
    )


def _visual(batch: int, seed: int = 1) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, CHANNELS, h, w, generator=generator) for h, w in LEVEL_SIZES]


@pytest.mark.parametrize("fusion_enabled", [True, False])
def test_shapes(fusion_enabled: bool) -> None:
    tower = _tower(fusion_enabled).eval()
    visual = _visual(2)
    text = torch.randn(2, 7, TEXT_DIM)
    mask = torch.ones(2, 7, dtype=torch.long)
    with torch.no_grad():
        out_visual, out_text = tower(visual, text, mask)
    assert [tuple(v.shape) for v in out_visual] == [tuple(v.shape) for v in visual]
    assert out_text.shape == text.shape
    if not fusion_enabled:
        assert torch.equal(out_text, text)
        assert all(layer.fusion is None and layer.text_layer is None for layer in tower.layers)


@pytest.mark.parametrize("fusion_enabled", [True, False])
def test_padded_batch_equals_single_calls(fusion_enabled: bool) -> None:
    tower = _tower(fusion_enabled).eval()
    lengths = [5, 9]
    padded_length = 12
    visual = _visual(2)
    generator = torch.Generator().manual_seed(2)
    texts = [torch.randn(1, n, TEXT_DIM, generator=generator) for n in lengths]
    batch_text = 5.0 * torch.randn(2, padded_length, TEXT_DIM, generator=generator)  # garbage in padding
    batch_mask = torch.zeros(2, padded_length, dtype=torch.long)
    for i, (text, n) in enumerate(zip(texts, lengths)):
        batch_text[i, :n] = text[0]
        batch_mask[i, :n] = 1

    with torch.no_grad():
        batch_visual, batch_out_text = tower(visual, batch_text, batch_mask)
        for i, (text, n) in enumerate(zip(texts, lengths)):
            single_visual, single_text = tower([v[i : i + 1] for v in visual], text, torch.ones(1, n))
            for level, (batched, single) in enumerate(zip(batch_visual, single_visual)):
                torch.testing.assert_close(batched[i : i + 1], single, atol=1e-5, rtol=1e-5, msg=f"level {level}")
            torch.testing.assert_close(batch_out_text[i : i + 1, :n], single_text, atol=1e-5, rtol=1e-5)


def test_backward_is_finite_and_checkpoint_matches() -> None:
    visual = _visual(2)
    text = torch.randn(2, 6, TEXT_DIM)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    grads = []
    for use_checkpoint in (False, True):
        # Dropout 0 so that both runs are deterministic and comparable.
        tower = _tower(fusion_dropout=0.0, use_checkpoint=use_checkpoint).train()
        for layer in tower.layers:
            layer.text_layer.apply(lambda m: setattr(m, "p", 0.0) if isinstance(m, torch.nn.Dropout) else None)
        inputs = [v.clone().requires_grad_(True) for v in visual]
        out_visual, out_text = tower(inputs, text, mask)
        loss = sum(v.square().mean() for v in out_visual) + out_text.square().mean()
        loss.backward()
        named = dict(tower.named_parameters())
        for name, param in named.items():
            assert param.grad is not None, f"{name} got no gradient"
            assert torch.isfinite(param.grad).all(), f"{name} has a non-finite gradient"
        grads.append({name: param.grad for name, param in named.items()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("fusion_enabled", [True, False])
def test_residual_tower_adds_each_layers_input(fusion_enabled: bool) -> None:
    plain = _tower(fusion_enabled).eval()
    residual = _tower(fusion_enabled, residual=True).eval()
    residual.load_state_dict(plain.state_dict())  # same weights: only the skip differs
    visual = _visual(2)
    text = torch.randn(2, 5, TEXT_DIM)
    mask = torch.ones(2, 5, dtype=torch.long)
    with torch.no_grad():
        expected_visual, expected_text = visual, text
        for layer in plain.layers:
            fused_visual, fused_text = expected_visual, expected_text
            if layer.fusion is not None:
                fused_visual, fused_text = layer.fusion(expected_visual, expected_text, mask)
                fused_text = layer.text_layer(fused_text, mask)
            expected_visual = [out + inp for out, inp in zip(layer.dyconv(fused_visual), fused_visual)]
            expected_text = fused_text
        out_visual, out_text = residual(visual, text, mask)
        plain_visual, _ = plain(visual, text, mask)
    for level, (got, want) in enumerate(zip(out_visual, expected_visual)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=f"level {level}")
    torch.testing.assert_close(out_text, expected_text)
    assert not torch.allclose(out_visual[0], plain_visual[0], atol=1e-3)


def test_training_dropout_runs() -> None:
    tower = _tower(fusion_dropout=0.5).train()
    out_visual, out_text = tower(_visual(1), torch.randn(1, 4, TEXT_DIM), torch.ones(1, 4))
    (sum(v.sum() for v in out_visual) + out_text.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in tower.parameters() if p.grad is not None)


def test_fresh_initialisation_follows_official() -> None:
    tower = _tower()
    for layer in tower.layers:
        assert torch.all(layer.fusion.vision_scale == 0.5) and torch.all(layer.fusion.text_scale == 0.5)
        attention = layer.fusion.attention
        assert torch.all(attention.vision_proj.bias == 0) and torch.all(attention.text_out_proj.bias == 0)
        for conv_norm in layer.dyconv.convs:
            bound = 1.0 / math.sqrt(CHANNELS * 9)
            assert conv_norm.conv.weight.abs().max() <= bound
            assert torch.all(conv_norm.conv.bias == 0)
        assert torch.all(layer.dyconv.scale_attention.bias == 0)
        assert layer.dyconv.scale_attention.weight.std() < 0.05

    plain = DyConv(CHANNELS, use_deformable=False)
    assert plain.offset is None
    assert 0.005 < plain.convs[0].conv.weight.std() < 0.015


def _unfolded_bi_attention(attention: BiAttention, vision: Tensor, text: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Literal order of the official computation (``BiMultiHeadAttention.forward``)."""
    batch, positions, _ = vision.shape
    tokens = text.shape[1]
    heads, head_dim = attention.num_heads, attention.head_dim

    def split(x: Tensor, length: int) -> Tensor:
        return x.view(batch, length, heads, head_dim).transpose(1, 2)

    query = split(attention.vision_proj(vision) * attention.scale, positions)
    key = split(attention.text_proj(text), tokens)
    vision_value = split(attention.vision_value_proj(vision), positions)
    text_value = split(attention.text_value_proj(text), tokens)
    scores = (query @ key.transpose(-1, -2)).clamp(-quirks.CLAMP_VALUE, quirks.CLAMP_VALUE)
    transposed = scores.transpose(-1, -2)
    transposed = (transposed - transposed.max(dim=-1, keepdim=True).values).clamp(
        -quirks.CLAMP_VALUE, quirks.CLAMP_VALUE
    )
    text_probs = transposed.softmax(dim=-1)
    bias = mask.to(scores.dtype).masked_fill(mask == 0, quirks.TEXT_ATTENTION_MASK_VALUE)[:, None, None, :]
    vision_probs = (scores + bias).softmax(dim=-1)
    vision_out = (vision_probs @ text_value).transpose(1, 2).reshape(batch, positions, -1)
    text_out = (text_probs @ vision_value).transpose(1, 2).reshape(batch, tokens, -1)
    return attention.vision_out_proj(vision_out), attention.text_out_proj(text_out)


@pytest.mark.parametrize(
    ("vision_dim", "embed_dim", "num_heads", "score_gain"),
    [(32, 64, 8, 1.0), (16, 64, 2, 1.0), (16, 32, 4, 3e3)],
    ids=["channels>head_dim", "channels<head_dim", "clamped_scores"],
)
def test_bi_attention_matches_unfolded_official_order(
    vision_dim: int, embed_dim: int, num_heads: int, score_gain: float
) -> None:
    torch.manual_seed(0)
    attention = BiAttention(vision_dim, TEXT_DIM, embed_dim, num_heads, dropout=0.0).double().eval()
    with torch.no_grad():
        # Large gains push scores past +-CLAMP_VALUE, exercising the clamps.
        attention.vision_proj.weight.mul_(score_gain)
        attention.text_proj.weight.mul_(score_gain)
        attention.vision_proj.bias.normal_()
        attention.vision_value_proj.bias.normal_()
    vision = torch.randn(2, 50, vision_dim, dtype=torch.float64)
    text = torch.randn(2, 7, TEXT_DIM, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        expected = _unfolded_bi_attention(attention, vision, text, mask)
        actual = attention(vision, text, mask)
    if score_gain > 1:
        assert expected[0].abs().max() > 0  # sanity: the clamped case still produces output
    for got, want in zip(actual, expected):
        torch.testing.assert_close(got, want, atol=1e-9 * score_gain, rtol=1e-9)


def test_text_layer_matches_transformers_bert_layer() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        hidden_size=16, num_attention_heads=2, intermediate_size=32, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, attn_implementation="eager",
    )
    hf_layer = transformers.models.bert.modeling_bert.BertLayer(config).eval()
    layer = TextEncoderLayer.from_bert_config(config.to_dict()).eval()
    # Same parameter names: the official checkpoint keys load unchanged.
    layer.load_state_dict(hf_layer.state_dict())
    hidden = torch.randn(2, 6, 16)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    extended = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    with torch.no_grad():
        expected = hf_layer(hidden, attention_mask=extended)[0]
        actual = layer(hidden, mask)
    # Padded rows attend to real tokens only in both; compare all rows.
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_text_layer_clamps_activations() -> None:
    layer = TextEncoderLayer(16, 2, 32, hidden_dropout=0.0, attention_dropout=0.0).eval()
    with torch.no_grad():
        layer.intermediate.dense.weight.fill_(1e6)
        out = layer(torch.randn(1, 4, 16) * 1e3, torch.ones(1, 4))
    assert torch.isfinite(out).all()


def test_reread_as_output_size_is_per_sample_row_major() -> None:
    buffer = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    reread = quirks.reread_as_output_size(buffer, 2, 3)
    for sample in range(2):
        assert torch.equal(reread[sample], buffer[sample].flatten()[: 3 * 2 * 3].view(3, 2, 3))
    assert quirks.reread_as_output_size(buffer, 4, 5) is buffer
    with pytest.raises(ValueError, match="smaller than the conv output"):
        quirks.reread_as_output_size(buffer, 5, 5)


def test_deform_conv_on_coarser_level_rereads_each_sample() -> None:
    torch.manual_seed(0)
    conv = ModulatedDeformConv2d(8, 4)
    finer = torch.randn(2, 27, 6, 7)  # offsets + mask logits predicted on the finer level
    offset, mask = finer[:, :18], finer[:, 18:].sigmoid()
    coarser = torch.randn(2, 8, 3, 4)
    with torch.no_grad():
        batched = conv(coarser, offset, mask)
        for sample in range(2):
            # The CUDA kernel's view of this sample's buffers: first C*3*4 values, row-major.
            sample_offset = offset[sample].flatten()[: 18 * 12].view(1, 18, 3, 4)
            sample_mask = mask[sample].flatten()[: 9 * 12].view(1, 9, 3, 4)
            expected = deform_conv2d(
                coarser[sample : sample + 1], sample_offset, conv.weight, conv.bias, padding=1, mask=sample_mask
            )
            torch.testing.assert_close(batched[sample : sample + 1], expected)


def test_half_precision_fusion_masks_padding_without_overflow() -> None:
    """The -9e15 text mask does not fit fp16: it is applied in float32 as the official code does."""
    from glip.modeling.fusion import BiAttention

    attention = BiAttention(16, 8, 32, 4, 0.0)
    vision, text = torch.randn(2, 20, 16), torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    reference = attention(vision, text, mask)
    half = attention.half()(vision.half(), text.half(), mask)
    for low, high in zip(half, reference):
        assert low.dtype == torch.float16 and torch.isfinite(low).all()
        torch.testing.assert_close(low.float(), high, atol=2e-2, rtol=2e-2)
