"""A prompt-tuned model saved as what was tuned: the prompt offsets and the name of their base.

Prompt tuning trains only a ``[max_query_len, D]`` table of offsets (:mod:`.modes`); the rest of the
network is the starting model, bit for bit. So a prompt-tuned run's ``model/`` folder holds

* ``prompt_tuning.safetensors``: the offsets (one tensor, ``offset``);
* ``prompt_tuning.json``: the class texts of the tuned prompt (``classes``), the class names
  they stand for (``class_names``), and ``base``: the starting model (a preset name, or the
  absolute path of a model directory) with a fingerprint of its weights.

``GLIP.from_pretrained(folder)`` loads the base and adds the offsets (the hub's loader hands such a
folder to :func:`read_base_model`); a base whose weights no longer match the fingerprint is an
error, since offsets tuned on other weights would silently detect worse. A few hundred kilobytes
instead of the whole network (120 MB for GLIP-Nano with its MiniLM).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors.torch import save
from torch import Tensor

from glip.files import temporary_directory_for
from glip.hub import loading

if TYPE_CHECKING:  # the hub's loader imports this module while it loads the pipeline
    from glip.pipeline import GLIP

OFFSET_KEY = "prompt_offset.offset"
# Version 1 files (``save_pretrained`` of a prompt-tuned model) sit beside the whole network.
VERSION = 2


def weights_fingerprint(state_dict: Mapping[str, Tensor]) -> str:
    """``sha256:<hex>`` of every tensor but the prompt offsets: names, shapes and values.

    Floating tensors are hashed as float32, so a checkpoint stored in fp16 and the fp32 model
    loaded from it give the same fingerprint.
    """
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        if key == OFFSET_KEY:
            continue
        tensor = state_dict[key].detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor.float()
        tensor = tensor.contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.numpy().tobytes())
    return "sha256:" + digest.hexdigest()


def is_prompt_tuned_dir(directory: str | Path) -> bool:
    """True for a folder of offsets and a base reference (no ``model.safetensors`` of its own)."""
    directory = Path(directory)
    return (directory / loading.PROMPT_TUNING_FILE).is_file() and not (directory / loading.WEIGHTS_FILE).exists()


def base_reference(model: str | Path) -> str:
    """How a prompt-tuned folder names its base: a preset by name, a directory by absolute path;
    a prompt-tuned folder by its own base (its offsets are replaced, not stacked)."""
    kind, path, preset = loading.resolve(model)
    if kind != "dir":
        assert preset is not None
        return preset.name
    assert path is not None
    if is_prompt_tuned_dir(path):
        return str(read_info(path)["base"]["model"])
    return str(path.resolve())


def save_prompt_tuned(model: GLIP, directory: str | Path, base: str, class_names: Sequence[str]) -> Path:
    """Write ``model``'s offsets and the reference to ``base`` into ``directory`` (replaced whole).

    Args:
        model: a prompt-tuned model (``model.prompt_offset`` set) whose other weights are ``base``'s.
        base: :func:`base_reference` of the model it was tuned from.
        class_names: the class names the tuned prompt's texts stand for, in label order.

    Raises:
        ValueError: the model has no prompt offsets, or names and texts differ in number.
    """
    if model.prompt_offset is None:
        raise ValueError("save_prompt_tuned: the model has no prompt offsets (tune it with mode 'prompt')")
    classes = list(model.prompt_offset.classes)
    if len(class_names) != len(classes):
        raise ValueError(f"save_prompt_tuned: {len(class_names)} class names for {len(classes)} tuned class texts")
    state = model.state_dict()
    info = {
        "format": loading.PROMPT_TUNING_FORMAT,
        "version": VERSION,
        "classes": classes,
        "class_names": list(class_names),
        "base": {"model": base, "fingerprint": weights_fingerprint(state)},
    }
    directory = Path(directory)
    staging = temporary_directory_for(directory)
    try:
        # Bytes written by Python, not safetensors' save_file, which creates its files owner-only (0600).
        offsets = {"offset": state[OFFSET_KEY].detach().cpu().contiguous()}
        (staging / loading.PROMPT_TUNING_WEIGHTS).write_bytes(save(offsets, metadata={"format": "pt"}))
        (staging / loading.PROMPT_TUNING_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def read_info(directory: str | Path) -> dict[str, Any]:
    """``prompt_tuning.json`` of a prompt-tuned folder, with its ``base`` checked; errors name the file."""
    path = Path(directory) / loading.PROMPT_TUNING_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read prompt tuning: {error}") from error
    base = info.get("base") if isinstance(info, dict) else None
    if (not isinstance(base, dict) or not isinstance(base.get("model"), str)
            or not isinstance(base.get("fingerprint"), str)):
        raise ValueError(f"{path}: without model.safetensors beside it, a prompt-tuning file needs "
                         "\"base\": {\"model\": preset or directory, \"fingerprint\": ...}")
    return info


def read_base_model(directory: str | Path) -> tuple[Any, dict[str, Tensor], dict[str, Any]]:
    """Config, state dict and metadata of the base a prompt-tuned folder was tuned from (the
    hub loader then adds the folder's offsets).

    Raises:
        ValueError: the base is missing, or its weights are not those the offsets were tuned on.
    """
    directory = Path(directory)
    base = read_info(directory)["base"]
    try:
        kind, path, preset = loading.resolve(base["model"])
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{directory}: its base model is missing: {error}") from error
    if kind == "hub":
        assert preset is not None
        state_dict, _ = loading.preset_state_dict(preset)
        config, metadata = preset.config, {}
    else:
        assert path is not None
        config, state_dict, metadata = loading.read_pretrained_dir(path)
    if preset is not None:
        metadata = {"default_threshold": preset.default_threshold, **metadata}
    found = weights_fingerprint(state_dict)
    if found != base["fingerprint"]:
        raise ValueError(f"{directory}: its prompt offsets were tuned on base model {base['model']} with weights "
                         f"{base['fingerprint']}, but that model's weights are now {found}; load the offsets "
                         "onto the model they were tuned on")
    return config, state_dict, {**metadata, "prompt_tuned_from": base["model"]}


__all__ = [
    "VERSION",
    "base_reference",
    "is_prompt_tuned_dir",
    "read_base_model",
    "read_info",
    "save_prompt_tuned",
    "weights_fingerprint",
]
