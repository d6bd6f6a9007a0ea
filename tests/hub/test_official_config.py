"""Reading official yacs configs: defaults merged, wrong types and unsupported values named."""

from __future__ import annotations

from pathlib import Path

import pytest

from glip.hub.official_config import OfficialConfigError, glip_config_from_official, read_text_config


def test_partial_and_full_configs_agree(reference_dir: Path) -> None:
    folder = reference_dir / "glip_tiny_parity"
    partial = glip_config_from_official(folder / "config.yaml", folder / "text_config.json", 64)
    full = glip_config_from_official(folder / "config_resolved_full.yaml", folder / "text_config.json", 64)
    assert partial == full
    assert partial.swin.embed_dim == 12 and partial.head.num_layers == 2 and partial.fusion.embed_dim == 64


def test_wrong_type_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("MODEL:\n  SWINT:\n    EMBED_DIM: 'wide'\n")
    with pytest.raises(OfficialConfigError, match=r"MODEL\.SWINT\.EMBED_DIM must be a number"):
        glip_config_from_official(path)


def test_unsupported_architecture_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "resnet.yaml"
    path.write_text(
        "MODEL:\n  META_ARCHITECTURE: GeneralizedVLRCNN\n  RPN_ARCHITECTURE: VLDYHEAD\n"
        "  BACKBONE:\n    CONV_BODY: R-50-FPN-RETINANET\n"
    )
    with pytest.raises(OfficialConfigError, match="MODEL.BACKBONE.CONV_BODY"):
        glip_config_from_official(path)


def test_unreadable_config(tmp_path: Path) -> None:
    with pytest.raises(OfficialConfigError, match="nope.yaml"):
        glip_config_from_official(tmp_path / "nope.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(OfficialConfigError, match="mapping"):
        glip_config_from_official(path)


def test_text_config_defaults_to_bert_base() -> None:
    assert read_text_config(None)["hidden_size"] == 768
    assert read_text_config({"hidden_size": 32})["hidden_size"] == 32
