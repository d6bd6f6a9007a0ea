"""Conversion of official checkpoints: rename table, drop list, strict checks, safe loading."""

from __future__ import annotations

import csv
import pickle
import re
from pathlib import Path

import pytest
import torch

from glip.hub import convert
from glip.hub.convert import (
    DROPPED_KEYS,
    CheckpointError,
    check_state_dict,
    convert_official_state_dict,
    read_official_checkpoint,
    rename_official_key,
)
from glip.hub.official_config import glip_config_from_official
from glip.hub.presets import PRESETS
from glip.modeling.glip import GLIPModel

LAYOUTS = {"glip_t": "glip_t", "glip_t_a": "glip_t_a", "glip_t_b": "glip_t_b", "glip_l": "glip_l"}


def _layout(reference_dir: Path, name: str) -> list[dict[str, str]]:
    with open(reference_dir / "glip_checkpoint_layout" / f"{name}_keys.tsv") as stream:
        return list(csv.DictReader(stream, delimiter="\t"))


def _meta_state_dict(rows: list[dict[str, str]]) -> dict[str, torch.Tensor]:
    def shape(text: str) -> tuple[int, ...]:
        return () if text == "scalar" else tuple(int(part) for part in text.split("x"))

    return {row["key"]: torch.empty(shape(row["shape"]), device="meta") for row in rows}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_full_size_layout_converts_exactly(reference_dir: Path, name: str) -> None:
    """Every official key of the real presets is consumed or explicitly dropped, shapes equal."""
    rows = _layout(reference_dir, name)
    official = _meta_state_dict(rows)
    preset = PRESETS[name]
    with torch.device("meta"):
        model = GLIPModel(preset.config)
    converted = convert_official_state_dict(official, fusion_enabled=preset.config.fusion.enabled)
    check_state_dict(model, converted, f"{name} layout")
    dropped = sorted(k for k in official if rename_official_key(k.removeprefix("module."), preset.config.fusion.enabled) is None)
    # Exactly the documented droppable keys: legacy position ids, Swin index buffers, anchors,
    # the unused cls_logits conv.
    for key in dropped:
        assert re.search(r"(position_ids|relative_position_index|cell_anchors\.\d|cls_logits\.(weight|bias))$", key), key
    kinds = {row["key"]: row["kind"] for row in rows}
    assert all(kinds[k] != "param" or "cls_logits" in k for k in dropped)
    assert len(converted) + len(dropped) == len(official)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_presets_match_official_resolved_configs(reference_dir: Path, name: str) -> None:
    config = glip_config_from_official(reference_dir / "glip_checkpoint_layout" / f"{name}_config_resolved_full.yaml")
    preset = PRESETS[name].config
    assert config.swin == preset.swin
    assert config.fpn == preset.fpn
    assert config.head == preset.head
    assert config.fusion == preset.fusion
    assert config.anchors == preset.anchors
    assert config.postprocess == preset.postprocess
    assert config.language.bert == preset.language.bert


def test_unknown_key_is_named() -> None:
    with pytest.raises(CheckpointError, match="module.weird"):
        convert_official_state_dict({"module.backbone.body.norm1.weight": torch.zeros(1), "module.weird": torch.zeros(1)})


def test_checkpoint_of_unknown_layout_names_the_file(tmp_path: Path, reference_dir: Path) -> None:
    from glip.hub.loading import official_checkpoint_and_config

    path = tmp_path / "other_model.pth"
    torch.save({"model": {"module.classifier.weight": torch.zeros(2)}}, path)
    folder = reference_dir / "glip_tiny_parity"
    with pytest.raises(CheckpointError, match=r"other_model\.pth match no conversion rule.*module\.classifier"):
        official_checkpoint_and_config(path, folder / "config.yaml", folder / "text_config.json")


def test_strict_check_lists_missing_unexpected_and_shapes() -> None:
    model = torch.nn.Linear(2, 3)
    with pytest.raises(CheckpointError) as error:
        check_state_dict(model, {"weight": torch.zeros(3, 4), "extra": torch.zeros(1)}, "test.pth")
    message = str(error.value)
    assert "missing keys (1): ['bias']" in message
    assert "unexpected keys (1): ['extra']" in message
    assert "weight: checkpoint (3, 4) vs model (3, 2)" in message


def test_checkpoint_of_other_architecture_is_refused(reference_dir: Path) -> None:
    """The no-fusion checkpoint cannot load into the fusion architecture, with the keys named."""
    official = read_official_checkpoint(reference_dir / "glip_tiny_a_parity" / "checkpoint.pth")
    config = glip_config_from_official(
        reference_dir / "glip_tiny_parity" / "config.yaml",
        reference_dir / "glip_tiny_parity" / "text_config.json",
        fusion_embed_dim=64,
    )
    with torch.device("meta"):
        model = GLIPModel(config)
    with pytest.raises(CheckpointError, match="dyhead_tower"):
        check_state_dict(model, convert_official_state_dict(official, fusion_enabled=True), "glip_tiny_a checkpoint")
    # Converted as the architecture it is, it still does not fit the fusion model.
    with pytest.raises(CheckpointError, match="missing keys"):
        check_state_dict(model, convert_official_state_dict(official, fusion_enabled=False), "glip_tiny_a checkpoint")


class _Exploit:
    def __reduce__(self):
        return (print, ("this would run code",))


def test_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    with open(path, "wb") as stream:
        pickle.dump({"model": _Exploit()}, stream)
    with pytest.raises(CheckpointError, match="refused"):
        read_official_checkpoint(path)


def test_non_checkpoint_files_get_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        read_official_checkpoint(tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        read_official_checkpoint(garbage)
    plain = tmp_path / "plain.pth"
    torch.save({"something": 1}, plain)
    with pytest.raises(CheckpointError, match="no GLIP state dict"):
        read_official_checkpoint(plain)


@pytest.mark.parametrize(("pattern", "reason"), DROPPED_KEYS)
def test_each_dropped_key_is_official_and_unconsumed(
    reference_dir: Path, monkeypatch: pytest.MonkeyPatch, pattern: str, reason: str
) -> None:
    """A documented drop matches keys of a real official checkpoint, and without it strict loading
    fails naming them: the drop list holds exactly what the model has no place for."""
    assert reason
    official = _meta_state_dict(_layout(reference_dir, "glip_t"))
    matched = [key for key in official if re.search(pattern, key.removeprefix("module."))]
    assert matched, f"{pattern} matches no key of the official GLIP-T checkpoint"
    monkeypatch.setattr(convert, "DROPPED_KEYS", tuple(drop for drop in DROPPED_KEYS if drop[0] != pattern))
    with torch.device("meta"):
        model = GLIPModel(PRESETS["glip_t"].config)
    with pytest.raises(CheckpointError) as error:
        check_state_dict(model, convert_official_state_dict(official), "glip_t layout")
    assert all(".".join(key.split(".")[-2:]) in str(error.value) for key in matched[:5])


def _whole_checkpoint(path: Path, legacy: bool = False) -> bytes:
    torch.save({"model": {"backbone.body.norm1.weight": torch.zeros(256)}}, path,
               _use_new_zipfile_serialization=not legacy)
    return path.read_bytes()


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("empty.pth", lambda whole: b"", "is empty"),
        ("cut.pth", lambda whole: whole[: len(whole) // 2], "is truncated"),
        ("text.pth", lambda whole: b"hello, this is no checkpoint", "not a PyTorch checkpoint"),
        ("lfs.pth", lambda whole: b"version https://git-lfs.github.com/spec/v1\noid sha256:0\n", "Git LFS pointer"),
        ("page.pth", lambda whole: b"<!DOCTYPE html><html>404</html>", "HTML page"),
    ],
)
def test_broken_checkpoint_files_say_why(tmp_path: Path, name: str, make, reason: str) -> None:
    """An empty or cut download used to give a blank reason (or a bare KeyError)."""
    path = tmp_path / name
    path.write_bytes(make(_whole_checkpoint(tmp_path / "whole.pth")))
    with pytest.raises(CheckpointError) as error:
        read_official_checkpoint(path)
    assert str(path) in str(error.value) and reason in str(error.value)


def test_truncated_legacy_checkpoint_says_why(tmp_path: Path) -> None:
    whole = _whole_checkpoint(tmp_path / "legacy.pth", legacy=True)
    assert read_official_checkpoint(tmp_path / "legacy.pth")
    path = tmp_path / "cut.pth"
    path.write_bytes(whole[:-40])
    with pytest.raises(CheckpointError, match=r"cut\.pth.*(truncated|corrupt)"):
        read_official_checkpoint(path)
