"""The command line: detect (with a bad file in the batch), convert, models, argument errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from glip import GLIP
from glip.cli import main
from glip.processing import default_offline_vocab_dir


def _official_args(reference_dir: Path) -> list[str]:
    folder = reference_dir / "glip_tiny_parity"
    return ["--checkpoint", str(folder / "checkpoint.pth"), "--config", str(folder / "config.yaml"),
            "--text-config", str(folder / "text_config.json"), "--tokenizer", str(default_offline_vocab_dir())]


def test_detect_writes_json_and_pictures_and_reports_bad_files(reference_dir: Path, tmp_path: Path) -> None:
    good = reference_dir / "glip_tiny_parity" / "case_a_astronaut.png"
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    out = tmp_path / "out"
    code = main(["detect", str(good), str(bad), "--classes", "person, tie", "--threshold", "0.3",
                 "--min-size", "128", "--out", str(out), *_official_args(reference_dir)])
    assert code == 0
    report = json.loads((out / "detections.json").read_text())
    assert report[1]["image"].endswith("bad.png") and "bad.png" in report[1]["error"]
    assert len(report[0]["boxes"]) == len(report[0]["scores"]) == len(report[0]["phrases"]) > 0
    picture = Image.open(report[0]["picture"])
    assert picture.size == Image.open(good).size


def test_detect_caption_with_spans(reference_dir: Path, tmp_path: Path) -> None:
    good = reference_dir / "glip_tiny_parity" / "case_b_coffee_301x417.png"
    out = tmp_path / "out"
    code = main(["detect", str(good), "--caption", "a cup of coffee", "--span", "2:15", "--threshold", "0.0",
                 "--min-size", "128", "--out", str(out), *_official_args(reference_dir)])
    assert code == 0
    report = json.loads((out / "detections.json").read_text())
    assert set(report[0]["phrases"]) == {"cup of coffee"}


def test_convert_then_load(reference_dir: Path, tmp_path: Path, capsys) -> None:
    folder = reference_dir / "glip_tiny_parity"
    out = tmp_path / "converted"
    assert main(["convert", str(folder / "checkpoint.pth"), str(folder / "config.yaml"), "--text-config",
                 str(folder / "text_config.json"), "--tokenizer", str(default_offline_vocab_dir()),
                 "--out", str(out)]) == 0
    model = GLIP.from_pretrained(out)
    assert model.config.swin.embed_dim == 12


def test_models_lists_presets(capsys) -> None:
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    for name in ("glip_t_a", "glip_t_b", "glip_t_c", "glip_t", "glip_l"):
        assert name in listing


def test_argument_errors_are_clear(reference_dir: Path, tmp_path: Path, capsys) -> None:
    image = str(reference_dir / "glip_tiny_parity" / "case_a_astronaut.png")
    with pytest.raises(SystemExit, match="exactly one of --classes or --caption"):
        main(["detect", image, *_official_args(reference_dir)])
    with pytest.raises(SystemExit, match="--classes is empty"):
        main(["detect", image, "--classes", " , ", *_official_args(reference_dir)])
    with pytest.raises(SystemExit):
        main(["detect", image, "--caption", "a dog", "--span", "x:y"])
    assert main(["detect", image, "--classes", "dog", "--model", "no_such_model", "--out", str(tmp_path)]) == 2
    assert "no_such_model" in capsys.readouterr().err


def test_demo_runs_offline_with_the_bundled_nano(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["demo", "--out", str(tmp_path), "--seed", "3"]) == 0
    report = json.loads((tmp_path / "detections.json").read_text())
    assert Path(report[0]["picture"]).is_file()
    assert set(report[0]["phrases"]) <= {"circle", "square", "triangle", "star", "hexagon", "cross"}
