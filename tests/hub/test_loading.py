"""Reading a converted model folder: config errors name the file and the key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from glip.hub.loading import CONFIG_FILE, WEIGHTS_FILE, bundled_weights_dir, read_pretrained_dir


def _folder_with_config(tmp_path: Path, edit) -> Path:
    """A copy of the bundled GLIP-Nano folder (weights linked) whose config.json ``edit`` changes."""
    source = bundled_weights_dir() / "glip_nano"
    folder = tmp_path / "model"
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns(WEIGHTS_FILE))
    (folder / WEIGHTS_FILE).symlink_to(source / WEIGHTS_FILE)
    document = json.loads((folder / CONFIG_FILE).read_text())
    edit(document)
    (folder / CONFIG_FILE).write_text(json.dumps(document))
    return folder


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda d: d["config"]["fusion"].update(embed_dimm=128), "unknown key config.fusion.embed_dimm"),
        (lambda d: d["config"]["head"].update(num_layers="two"), "config.head.num_layers: expected an integer"),
        (lambda d: d["config"].update(backbone="resnet"), "config.backbone: 'resnet'"),
        (lambda d: d.pop("config"), "config: expected a mapping"),
    ],
)
def test_config_errors_name_file_and_key(tmp_path: Path, edit, named: str) -> None:
    folder = _folder_with_config(tmp_path, edit)
    with pytest.raises(ValueError) as error:
        read_pretrained_dir(folder)
    message = str(error.value)
    assert str(folder / CONFIG_FILE) in message and named in message


@pytest.mark.parametrize(("cut", "reason"), [(0, "is empty"), (100_000, "truncated")])
def test_broken_weights_file_says_why(tmp_path: Path, cut: int, reason: str) -> None:
    from glip.hub.convert import CheckpointError

    folder = _folder_with_config(tmp_path, lambda document: None)
    whole = (folder / WEIGHTS_FILE).read_bytes()
    (folder / WEIGHTS_FILE).unlink()
    (folder / WEIGHTS_FILE).write_bytes(whole[:cut])
    with pytest.raises(CheckpointError) as error:
        read_pretrained_dir(folder)
    assert str(folder / WEIGHTS_FILE) in str(error.value) and reason in str(error.value)
