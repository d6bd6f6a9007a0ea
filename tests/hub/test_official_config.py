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


def test_official_key_list_is_the_official_dumps(reference_dir: Path) -> None:
    """official_keys.txt holds exactly the keys of the official full dumps (empty sections open)."""
    import yaml

    from glip.hub.official_config import OFFICIAL_DEFAULTS, official_keys

    def keys(tree: dict, prefix: str = "") -> set[str]:
        found: set[str] = set()
        for key, value in tree.items():
            if isinstance(value, dict):
                found |= keys(value, f"{prefix}{key}.") if value else {f"{prefix}{key}.*"}
            else:
                found.add(prefix + key)
        return found

    from glip.hub.official_config import RUNTIME_KEYS

    values, sections = official_keys()
    listed = (set(values) - set(RUNTIME_KEYS)) | {section + "*" for section in sections}
    for dump in sorted(reference_dir.glob("*/*config_resolved_full.yaml")):
        assert keys(yaml.safe_load(dump.read_text())) == listed, dump
    assert set(OFFICIAL_DEFAULTS) <= values


def test_official_configs_have_no_unknown_key(reference_dir: Path) -> None:
    configs = sorted(reference_dir.glob("*/*config_resolved_full.yaml")) + sorted(reference_dir.glob("*/config.yaml"))
    assert len(configs) == 8
    for path in configs:
        text_config = path.parent / "text_config.json"
        glip_config_from_official(path, text_config if text_config.is_file() else None, 64)


def test_unknown_keys_are_all_named_with_suggestions(tmp_path: Path, reference_dir: Path) -> None:
    """Misspelt keys used to convert silently with the default preprocessing."""
    import yaml

    folder = reference_dir / "glip_tiny_parity"
    tree = yaml.safe_load((folder / "config.yaml").read_text())
    tree["INPUT"]["PIXEL_STDD"] = [57.4, 57.1, 58.4]
    tree["INPUT"]["MIN_SIZE_TESTT"] = 600
    tree["MODEL"]["BACKBONE"]["CONV_BODYY"] = tree["MODEL"]["BACKBONE"].pop("CONV_BODY")
    path = tmp_path / "typos.yaml"
    path.write_text(yaml.safe_dump(tree))
    with pytest.raises(OfficialConfigError) as error:
        glip_config_from_official(path, folder / "text_config.json", 64)
    message = str(error.value)
    assert str(path) in message
    for typo, meant in [("INPUT.PIXEL_STDD", "INPUT.PIXEL_STD"), ("INPUT.MIN_SIZE_TESTT", "INPUT.MIN_SIZE_TEST"),
                        ("MODEL.BACKBONE.CONV_BODYY", "MODEL.BACKBONE.CONV_BODY")]:
        assert f"{typo} (did you mean {meant}?)" in message


def test_section_given_a_value_and_open_sections(tmp_path: Path) -> None:
    path = tmp_path / "section.yaml"
    path.write_text("MODEL:\n  SWINT: 5\n")
    with pytest.raises(OfficialConfigError, match=r"MODEL\.SWINT \(a section, not a value\)"):
        glip_config_from_official(path)
    # Sections the official config leaves open (DATASETS.REGISTER) take any keys, as in yacs.
    from glip.hub.official_config import check_known_keys

    check_known_keys(["DATASETS.REGISTER.my_set.ann_file", "MODEL.SPEC.anything"], "test")
    # The official training script sets these before saving its config.yml.
    check_known_keys(["local_rank", "num_gpus"], "test")
