"""Every deliberate match to the official GLIP computation, named in one place.

The official code (github ``microsoft/GLIP`` @ 9dda955) has conventions that a clean
reimplementation would not choose. Official checkpoints were trained with them, so we keep them
to reproduce the official outputs; each is named here with where it comes from and which test
pins it (``tests/parity`` compares against tensors produced by the official code).
"""

from __future__ import annotations

import math

import torch

# Legacy Detectron "+1" box convention: a box [x1, x2] covers x2 - x1 + 1 pixels. Used by the
# anchor generator, box coder, box clipping, IoU in NMS and ATSS (official ``TO_REMOVE = 1`` in
# ``rpn/vldyhead.py:BoxCoder``, ``structures/bounding_box.py``, ``structures/boxlist_ops.py``).
# Pinned by tests/parity (anchors, candidates, detections).
TO_REMOVE: float = 1.0

# Input images are BGR in 0-255, normalised with Caffe statistics (official INPUT.TO_BGR255,
# INPUT.PIXEL_MEAN / PIXEL_STD, ``engine/predictor_glip.py:GLIPDemo.build_transform``).
BGR_PIXEL_MEAN: tuple[float, float, float] = (103.53, 116.28, 123.675)
BGR_PIXEL_STD: tuple[float, float, float] = (57.375, 57.12, 58.395)

# Clamps against fp16 overflow/underflow that the released models were trained with
# (FUSE_CONFIG.CLAMP_* flags, ``utils/fuse_helper.py``, ``rpn/modeling_bert.py``,
# ``rpn/vldyhead.py``): attention scores, BERT-layer activations and dot-product logits are clamped
# to +-50000. Pinned by tests/parity (tower and head outputs).
CLAMP_VALUE: float = 50000.0

# Text-to-image attention masks padded text tokens with this additive value
# (``BiMultiHeadAttention.forward``), not with -inf.
TEXT_ATTENTION_MASK_VALUE: float = -9e15

# Swin shifted-window attention mask value (``backbone/swint.py``).
SWIN_WINDOW_MASK_VALUE: float = -100.0

# Box coder: regression weights and the clamp of dw/dh (``rpn/vldyhead.py:BoxCoder``).
BOX_CODER_WEIGHTS: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
BOX_CODER_SCALE_CLAMP: float = math.log(1000.0 / 16)

# Positive maps are row-normalised with this epsilon (``create_positive_map``).
POSITIVE_MAP_EPS: float = 1e-6

# The prompt of a class list: every name followed by " . " (``GLIPDemo.compute_prediction``),
# so the caption ends with a space.
CLASS_SEPARATOR: str = " . "


def reread_as_output_size(buffer: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Re-read each sample's deformable-conv offset (or mask) buffer as if it had the output size.

    In the DyHead tower (``rpn/vldyhead.py:DyConv.forward``) the offsets and masks predicted on
    pyramid level l also drive the conv that reads the coarser level l+1, whose output is smaller.
    The official CUDA kernel (``csrc/cuda/deform_conv_cuda.cu``, per sample ``offset[b]``,
    ``mask[b]``) indexes them with the OUTPUT size, i.e. it reads the first C*height*width values
    of the sample's row-major (C, H, W) buffer as a (C, height, width) array: the offsets are not
    spatially resized. Released checkpoints were trained with it, so we keep it; pinned by
    tests/parity/test_tower_parity.py (DyConv outputs) and tests/modeling/test_dyhead.py.

    Args:
        buffer: [B, C, H, W] offsets (C = 18) or sigmoid mask (C = 9) predicted on one level.
        height: output height of the conv that consumes them.
        width: output width of that conv.

    Returns:
        [B, C, height, width]; ``buffer`` itself when the sizes already agree.
    """
    batch, channels, in_height, in_width = buffer.shape
    if (in_height, in_width) == (height, width):
        return buffer
    needed = channels * height * width
    if needed > channels * in_height * in_width:
        raise ValueError(
            f"offset buffer of size {in_height}x{in_width} is smaller than the conv output {height}x{width}"
        )
    # [B, C, H, W] -> [B, C*H*W] -> first C*height*width values -> [B, C, height, width]
    return buffer.reshape(batch, -1)[:, :needed].reshape(batch, channels, height, width)


# Training: a background anchor's token target is a 1 at this index, a "no object" token
# (official ``rpn/loss.py:ATSSLossComputation.prepare_targets``: ``unmatched_labels[-1] = 1`` on
# the 256-wide positive map, MAX_QUERY_LEN 256). The token focal loss only keeps the tokens of the
# attention mask, so this target counts only for a caption that fills all 256 tokens; otherwise a
# background anchor has all-zero targets. Pinned by tests/parity/test_loss_parity.py.
NO_OBJECT_TOKEN_INDEX: int = 255


def background_token_targets(num_tokens: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """The token targets of a background anchor: ``[num_tokens]`` zeros with a 1 at
    :data:`NO_OBJECT_TOKEN_INDEX` when the text is that long (a shorter padding leaves no such
    column, and the official target there is masked out anyway)."""
    targets = torch.zeros(num_tokens, dtype=dtype, device=device)
    if NO_OBJECT_TOKEN_INDEX < num_tokens:
        targets[NO_OBJECT_TOKEN_INDEX] = 1
    return targets


# Training prompts of detection data join class names with ". " and put nothing after the last
# name ("person. flag. rocket"; official DATASETS.SEPARATION_TOKENS ". " of the pre-training configs,
# ``data/datasets/od_to_grounding.py``), unlike the demo's " . " after every name (CLASS_SEPARATOR).
# Pinned by tests/parity/test_train_inputs_parity.py.
TRAIN_CLASS_SEPARATOR: str = ". "


def cosine_schedule_progress(step: int, warmup_steps: int, max_steps: int) -> float:
    """Progress through the cosine learning-rate decay after the warm-up.

    The official ``solver/lr_scheduler.py:WarmupCosineAnnealingLR`` divides the steps after the
    warm-up by ALL ``max_steps`` (not ``max_steps - warmup_steps``), so the cosine reaches
    ``(1 + cos(pi * (max - warmup) / max)) / 2`` at the end instead of 0: the last lr stays above
    the floor. Recipes tuned on official runs keep this; pinned by tests/training/test_optim.py.
    """
    return (step - warmup_steps) / max_steps
