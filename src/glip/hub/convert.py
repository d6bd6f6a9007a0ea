"""Conversion of official GLIP checkpoints to this package's parameter names.

A pure function over state dicts: strip the DDP prefix, drop the keys listed in
:data:`DROPPED_KEYS`, apply the ordered :data:`RENAME_RULES` (the official names are kept there
for reference), then :func:`check_state_dict` lists every missing, unexpected or mis-shaped key.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

# Official checkpoints are written through the DistributedDataParallel wrapper
# (``tools/train_net.py``), so every key carries this prefix.
DDP_PREFIX = "module."

# Keys present in official files that this package does not load, each with the reason
# (``tests/hub/test_convert.py`` checks that each occurs in the official layouts and that the
# model really has no place for it). The official BERT has no pooler (``add_pooling_layer=False``),
# so a pooler in a checkpoint is an error, not a drop.
DROPPED_KEYS: tuple[tuple[str, str], ...] = (
    (r"\.position_ids$", "BERT position ids buffer written by transformers < 4.31; recomputed"),
    (r"\.relative_position_index$", "Swin buffer, recomputed from the window size"),
    (r"^rpn\.anchor_generator\.cell_anchors\.\d+$", "anchors, recomputed from sizes and strides"),
    (r"^rpn\.head\.cls_logits\.", "frozen classification conv, never used for outputs or losses"),
)

Replacement = str | Callable[[re.Match[str]], str]

# Ordered (official pattern, our name) pairs; the first match wins. Tower entries
# (``rpn.head.dyhead_tower.N``) are renamed by :func:`_rename_tower`, since their index encodes
# the layer and its role.
RENAME_RULES: tuple[tuple[str, Replacement], ...] = (
    (r"^backbone\.body\.norm(\d+)\.", lambda m: f"backbone.output_norms.{int(m[1]) - 1}."),
    (r"^backbone\.body\.", "backbone."),
    (r"^backbone\.fpn\.fpn_inner(\d+)\.", lambda m: f"fpn.lateral_convs.{int(m[1]) - 2}."),
    (r"^backbone\.fpn\.fpn_layer(\d+)\.", lambda m: f"fpn.output_convs.{int(m[1]) - 2}."),
    (r"^backbone\.fpn\.top_blocks\.", "fpn."),
    (r"^language_backbone\.body\.model\.", "language.bert."),
    (r"^rpn\.head\.dot_product_projection_text\.", "head.text_projection."),
    (r"^rpn\.head\.(bbox_pred|centerness|scales|log_scale|bias_lang|bias0)\b", r"head.\1"),
)

# Inside a fusion block (``VLFuse.b_attn``): official -> ours.
FUSION_RENAMES: tuple[tuple[str, str], ...] = (
    ("gamma_v", "vision_scale"),
    ("gamma_l", "text_scale"),
    ("layer_norm_v.", "vision_norm."),
    ("layer_norm_l.", "text_norm."),
    ("attn.v_proj.", "attention.vision_proj."),
    ("attn.l_proj.", "attention.text_proj."),
    ("attn.values_v_proj.", "attention.vision_value_proj."),
    ("attn.values_l_proj.", "attention.text_value_proj."),
    ("attn.out_v_proj.", "attention.vision_out_proj."),
    ("attn.out_l_proj.", "attention.text_out_proj."),
)

# Inside a DyConv block: official -> ours.
DYCONV_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^DyConv\.(\d+)\.conv\.", r"convs.\1.conv."),
    (r"^DyConv\.(\d+)\.bn\.", r"convs.\1.norm."),
    (r"^AttnConv\.1\.", "scale_attention."),
    (r"^relu\.fc\.0\.", "dyrelu.fc1."),
    (r"^relu\.fc\.2\.", "dyrelu.fc2."),
    (r"^offset\.", "offset."),
)

_TOWER = re.compile(r"^rpn\.head\.dyhead_tower\.(\d+)\.(.+)$")


class CheckpointError(ValueError):
    """An official checkpoint that cannot be read or does not fit the architecture."""


def _rename_tower(index: int, rest: str, fusion_enabled: bool) -> str:
    """Official tower entry ``index`` -> ``tower.layers.{i}.{role}``.

    With fusion each layer is three modules (VLFuse, BertEncoderLayer, DyConv); without it only
    DyConv (``VLDyHead.__init__``).
    """
    if not fusion_enabled:
        layer, role = index, 2
    else:
        layer, role = divmod(index, 3)
    prefix = f"tower.layers.{layer}"
    if role == 0:
        if not rest.startswith("b_attn."):
            raise KeyError(rest)
        rest = rest[len("b_attn.") :]
        for old, new in FUSION_RENAMES:
            if rest.startswith(old):
                return f"{prefix}.fusion.{new}{rest[len(old):]}"
        raise KeyError(rest)
    if role == 1:
        return f"{prefix}.text_layer.{rest}"
    for pattern, replacement in DYCONV_RENAMES:
        renamed, count = re.subn(pattern, replacement, rest)
        if count:
            return f"{prefix}.dyconv.{renamed}"
    raise KeyError(rest)


def rename_official_key(key: str, fusion_enabled: bool) -> str | None:
    """Our name for an official key (without ``module.``); ``None`` if it is dropped.

    Raises:
        KeyError: the key matches no rule.
    """
    if any(re.search(pattern, key) for pattern, _ in DROPPED_KEYS):
        return None
    tower = _TOWER.match(key)
    if tower:
        try:
            return _rename_tower(int(tower[1]), tower[2], fusion_enabled)
        except KeyError:
            raise KeyError(key) from None
    for pattern, replacement in RENAME_RULES:
        renamed, count = re.subn(pattern, replacement, key)
        if count:
            return renamed
    raise KeyError(key)


def convert_official_state_dict(
    official: Mapping[str, Tensor], fusion_enabled: bool = True, source: str = "the checkpoint"
) -> dict[str, Tensor]:
    """Rename an official state dict to this package's names.

    Args:
        official: the ``"model"`` dict of an official checkpoint (``module.`` prefix optional).
        fusion_enabled: whether the tower has VLFuse blocks (False for GLIP-T (A)).
        source: the checkpoint's file, named in errors.

    Raises:
        CheckpointError: naming every key that matches no rule.
    """
    converted: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in official.items():
        bare = key[len(DDP_PREFIX) :] if key.startswith(DDP_PREFIX) else key
        try:
            name = rename_official_key(bare, fusion_enabled)
        except KeyError:
            unknown.append(key)
            continue
        if name is not None:
            converted[name] = value
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} keys of {source} match no conversion rule (is it a GLIP checkpoint of a "
            f"supported architecture?): {unknown[:20]}{' ...' if len(unknown) > 20 else ''}"
        )
    return converted


def check_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """Strict comparison of ``state_dict`` with ``model``'s keys and shapes.

    Raises:
        CheckpointError: listing every missing, unexpected and mis-shaped key.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in sorted(set(expected) & set(state_dict))
        if tuple(state_dict[key].shape) != tuple(expected[key].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {missing}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {mismatched}")
    if problems:
        raise CheckpointError(
            f"{source} does not fit the model architecture (check the config):\n" + "\n".join(problems)
        )


# First bytes of the files a checkpoint download goes wrong into, and what they are.
_NOT_CHECKPOINT_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"version https://git-lfs", "a Git LFS pointer, not the file it points to (run `git lfs pull`)"),
    (b"<!doctype html", "an HTML page (an error or login page saved in place of the file)"),
    (b"<html", "an HTML page (an error or login page saved in place of the file)"),
)
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
_PICKLE_MAGIC = b"\x80"  # pickle protocol >= 2: PyTorch's legacy format


def _check_checkpoint_file(path: Path) -> None:
    """Refuse, with the reason, a file that cannot be a whole PyTorch checkpoint.

    ``torch.load`` reports these with an empty message (an empty file) or a bare ``KeyError``.
    """
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the download or copy did not complete; fetch it again")
    with open(path, "rb") as stream:
        head = stream.read(64)
    for signature, what in _NOT_CHECKPOINT_SIGNATURES:
        if head.lower().startswith(signature):
            raise CheckpointError(f"{path} is not a PyTorch checkpoint: it is {what}")
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            raise CheckpointError(
                f"{path} is truncated: a PyTorch checkpoint whose end is missing ({size} bytes); fetch it again"
            )
        return
    if not head.startswith(_PICKLE_MAGIC):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (its first bytes are {head[:16]!r})")


def read_official_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The ``"model"`` state dict of an official ``.pth`` (``model_ema`` is ignored).

    Only plain tensors are unpickled (``weights_only=True``): a file that would run code is
    refused. Empty, truncated and non-PyTorch files are refused with the reason.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    _check_checkpoint_file(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"{path} is not a plain-tensor checkpoint and was refused (it would run code when "
            f"unpickled, or is not a torch file): {str(error).splitlines()[0]}"
        ) from error
    except EOFError as error:
        raise CheckpointError(f"{path} is truncated: the file ends in the middle of the checkpoint; fetch it again") \
            from error
    except (RuntimeError, OSError, KeyError, ValueError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"cannot read checkpoint {path} (corrupt or truncated?): {reason}") from error
    if isinstance(data, dict) and isinstance(data.get("model"), Mapping):
        data = data["model"]
    if not isinstance(data, Mapping) or not all(isinstance(v, Tensor) for v in data.values()):
        raise CheckpointError(f"{path} holds no GLIP state dict (expected a dict with 'model')")
    return dict(data)


def fusion_width_from_state_dict(official: Mapping[str, Tensor]) -> int | None:
    """Fusion attention width, which the official yacs config cannot express.

    ``VLFuse.init_configs`` hard-codes it (2048); the checkpoint's first ``v_proj`` weight is
    ``[embed_dim, channels]``. ``None`` when the checkpoint has no fusion.
    """
    for key, value in official.items():
        if key.endswith("b_attn.attn.v_proj.weight"):
            return int(value.shape[0])
    return None
