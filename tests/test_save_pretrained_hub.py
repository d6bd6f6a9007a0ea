"""save_pretrained writes a Hugging Face Hub model repo; from_pretrained reads it back wherever it lies:
copied elsewhere, inside a Hub cache (``models--org--name/snapshots/<commit>/``), by repo id offline,
and in the older layouts. No network: the Hub cache is built on disk as huggingface_hub lays it out."""

from __future__ import annotations

import hashlib
import os
import shutil
from functools import lru_cache
from pathlib import Path

import pytest
import torch

from glip import GLIP
from glip.data.shapes_world import SHAPES, render_scene, sample_scene
from glip.processing import default_offline_vocab_dir

TINY = "glip_tiny_parity"
# The folder save_pretrained writes, as the docs list it.
HUB_FILES = {"README.md", "config.json", "model.safetensors", "tokenizer/vocab.txt",
             "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@lru_cache(maxsize=None)
def _model(name: str, reference_dir: Path) -> GLIP:
    if name == "glip_nano":
        return GLIP.from_pretrained("glip_nano")
    folder = reference_dir / TINY
    return GLIP.from_official(folder / "checkpoint.pth", folder / "config.yaml", folder / "text_config.json",
                              default_offline_vocab_dir())


def _files(folder: Path) -> set[str]:
    return {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}


def _predict(model: GLIP, reference_dir: Path):
    if model.config.backbone == "efficientnet_lite0":
        return model.predict(render_scene(sample_scene(7, "test", 0)), classes=list(SHAPES), threshold=0.1)
    return model.predict(reference_dir / TINY / "case_a_astronaut.png", classes=["person", "tie"], threshold=0.2,
                         min_size=128)


def _assert_same_model(first: GLIP, second: GLIP, reference_dir: Path) -> None:
    assert first.state_dict().keys() == second.state_dict().keys()
    assert all(torch.equal(value, second.state_dict()[key]) for key, value in first.state_dict().items())
    assert second.default_threshold == first.default_threshold
    expected, got = _predict(first, reference_dir), _predict(second, reference_dir)
    assert len(expected) > 0
    assert torch.equal(expected.boxes, got.boxes) and torch.equal(expected.scores, got.scores)
    assert expected.phrases == got.phrases


@pytest.mark.parametrize("name", ["glip_nano", TINY])
def test_save_then_load_elsewhere_gives_identical_outputs(name: str, reference_dir: Path, tmp_path: Path) -> None:
    model = _model(name, reference_dir)
    saved = model.save_pretrained(tmp_path / "saved")
    assert _files(saved) == HUB_FILES
    # Moved elsewhere, as a copy or a download would be: nothing may point back at the first folder.
    (tmp_path / "elsewhere").mkdir()
    moved = Path(shutil.move(saved, tmp_path / "elsewhere" / "copy"))
    _assert_same_model(model, GLIP.from_pretrained(moved), reference_dir)


def test_the_folder_is_what_hub_tools_read(reference_dir: Path, tmp_path: Path) -> None:
    from huggingface_hub import ModelCard
    from transformers import AutoTokenizer

    model = _model(TINY, reference_dir)
    saved = model.save_pretrained(tmp_path / "repo")
    card = ModelCard.load(saved / "README.md")
    assert card.data.library_name == "glip" and card.data.pipeline_tag == "zero-shot-object-detection"
    assert f"`default_threshold`: `{model.default_threshold}`" in card.text
    tokenizer = AutoTokenizer.from_pretrained(saved, subfolder="tokenizer")
    caption = "A Person wearing a tie."
    assert tokenizer(caption)["input_ids"] == model.tokenizer(caption)["input_ids"]


def _blob_name(data: bytes) -> str:
    """A cache blob's name: git's sha1 of the file (huggingface_hub uses sha256 for LFS files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _as_hub_cache(folder: Path, cache: Path, repo_id: str, commit: str) -> Path:
    """Lay ``folder`` out as huggingface_hub's cache does after a download: blobs, refs/main, and a
    snapshot of relative symlinks into the blobs. Returns the snapshot folder."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    for name in sorted(_files(folder)):
        data = (folder / name).read_bytes()
        blob = repo / "blobs" / _blob_name(data)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_loads_from_a_hub_cache_by_folder_and_by_repo_id_offline(reference_dir: Path, tmp_path: Path,
                                                                  monkeypatch) -> None:
    import huggingface_hub
    from huggingface_hub import constants

    model = _model(TINY, reference_dir)
    saved = model.save_pretrained(tmp_path / "saved")
    cache, commit = tmp_path / "hub", "0123456789abcdef0123456789abcdef01234567"
    snapshot = _as_hub_cache(saved, cache, "someone/glip-tiny", commit)
    # huggingface_hub itself reads the cache we built: one repo, one revision, every file.
    (repo_info,) = huggingface_hub.scan_cache_dir(cache).repos
    assert repo_info.repo_id == "someone/glip-tiny" and repo_info.nb_files == len(HUB_FILES)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for source in (snapshot, snapshot.parents[1], "someone/glip-tiny"):
        _assert_same_model(model, GLIP.from_pretrained(source), reference_dir)
    with pytest.raises(FileNotFoundError, match="someone/not-cached.*reachable Hub repo"):
        GLIP.from_pretrained("someone/not-cached")
    with pytest.raises(FileNotFoundError, match="neither a model directory nor a preset"):
        GLIP.from_pretrained(Path("someone/glip-tiny"))  # a Path is a local folder, never a repo id


def test_saving_into_a_repo_clone_keeps_its_files_and_replaces_the_model(reference_dir: Path, tmp_path: Path) -> None:
    model = _model(TINY, reference_dir)
    clone = tmp_path / "clone"
    (clone / ".git").mkdir(parents=True)
    (clone / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (clone / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    (clone / "README.md").write_text("# My card\n")
    # A stale prompt-tuning pair from an earlier save would turn the new model into a tuned one.
    (clone / "prompt_tuning.json").write_text("{}")
    (clone / "prompt_tuning.safetensors").write_bytes(b"stale")
    model.save_pretrained(clone)
    assert _files(clone) == HUB_FILES | {".git/HEAD", ".gitattributes"}
    assert (clone / "README.md").read_text() == "# My card\n"
    assert not list(tmp_path.glob(".clone*")), "no staging or backup folder left behind"
    assert GLIP.from_pretrained(clone).prompt_offset is None


def test_a_card_written_by_a_save_is_refreshed_by_the_next(reference_dir: Path, tmp_path: Path) -> None:
    model = _model(TINY, reference_dir)
    for steps in (100, 200):  # a training run saving its model again and again
        model.save_pretrained(tmp_path / "run", metadata={"trained_steps": steps})
        assert f"`trained_steps`: `{steps}`" in (tmp_path / "run" / "README.md").read_text()


def test_older_layouts_still_load(reference_dir: Path, tmp_path: Path) -> None:
    model = _model(TINY, reference_dir)
    saved = model.save_pretrained(tmp_path / "saved")
    # Earlier versions: tokenizer/vocab.txt alone, no model card.
    for name in ("README.md", "tokenizer/tokenizer_config.json", "tokenizer/special_tokens_map.json"):
        (saved / name).unlink()
    _assert_same_model(model, GLIP.from_pretrained(saved), reference_dir)
    # A folder laid out by hand with vocab.txt at its root.
    (saved / "tokenizer" / "vocab.txt").rename(saved / "vocab.txt")
    (saved / "tokenizer").rmdir()
    loaded = GLIP.from_pretrained(saved)
    assert Path(loaded.config.language.tokenizer) == saved
    _assert_same_model(model, loaded, reference_dir)
