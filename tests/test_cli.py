"""The command line: detect (good and bad images, exit statuses, Ctrl-C, the output lock), convert,
models, the demo's detections, argument errors."""

from __future__ import annotations

import fcntl
import json
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from glip import GLIP
from glip.cli import main
from glip.cli_support import LOCK_FILE
from glip.processing import default_offline_vocab_dir


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _official_args(reference_dir: Path) -> list[str]:
    folder = reference_dir / "glip_tiny_parity"
    return ["--checkpoint", str(folder / "checkpoint.pth"), "--config", str(folder / "config.yaml"),
            "--text-config", str(folder / "text_config.json"), "--tokenizer", str(default_offline_vocab_dir())]


def _detect(reference_dir: Path, images: list[Path | str], out: Path, *extra: str) -> int:
    return main(["detect", *map(str, images), "--classes", "person, tie", "--threshold", "0.3",
                 "--min-size", "64", "--out", str(out), *extra, *_official_args(reference_dir)])


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _decompression_bomb(path: Path) -> Path:
    """A 57-byte PNG declaring 30000 x 30000 pixels: PIL refuses it at open (DecompressionBombError)."""
    header = struct.pack(">IIBBBBB", 30000, 30000, 1, 0, 0, 0, 0)  # 1-bit grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IEND", b""))
    return path


def test_detect_keeps_good_images_beside_bad_ones_and_exits_1(reference_dir: Path, tmp_path: Path,
                                                              capsys) -> None:
    folder = reference_dir / "glip_tiny_parity"
    good = [folder / "case_a_astronaut.png", folder / "case_c_camera_gray.png"]
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_text("not an image")
    bomb = _decompression_bomb(tmp_path / "bomb.png")
    missing = tmp_path / "missing.jpg"
    url = "https://example.com/dog.jpg"
    out = tmp_path / "out"
    assert _detect(reference_dir, [good[0], missing, corrupt, bomb, url, good[1]], out) == 1
    report = json.loads((out / "detections.json").read_text())
    assert [entry["image"] for entry in report] == [str(good[0]), str(missing), str(corrupt), str(bomb), url,
                                                    str(good[1])]
    for entry, image in ((report[0], good[0]), (report[5], good[1])):
        assert "error" not in entry
        assert len(entry["boxes"]) == len(entry["scores"]) == len(entry["phrases"]) > 0
        assert Image.open(entry["picture"]).size == Image.open(image).size
    for entry in report[1:5]:
        assert "boxes" not in entry and entry["error"]
    assert "missing.jpg" in report[1]["error"] and "corrupt.png" in report[2]["error"]
    assert "bomb.png" in report[3]["error"]
    assert report[4]["error"].endswith("URLs are not supported: download the image first")
    assert "(2 images, 4 failed)" in capsys.readouterr().out


def test_detect_takes_a_folder_and_exits_0_when_every_image_succeeds(reference_dir: Path, tmp_path: Path) -> None:
    source = reference_dir / "glip_tiny_parity" / "case_a_astronaut.png"
    for folder in ("photos/a", "photos/b"):  # the same file name twice: both pictures are kept
        (tmp_path / folder).mkdir(parents=True)
        shutil.copy(source, tmp_path / folder / "shot.PNG")
    (tmp_path / "photos" / "notes.txt").write_text("not an image, not an input")
    out = tmp_path / "out"
    assert _detect(reference_dir, [tmp_path / "photos"], out) == 0
    report = json.loads((out / "detections.json").read_text())
    assert [entry["image"] for entry in report] == [str(tmp_path / f"photos/{name}/shot.PNG") for name in "ab"]
    assert len({entry["picture"] for entry in report}) == 2
    assert all(Path(entry["picture"]).is_file() for entry in report)


def test_detect_caption_with_spans(reference_dir: Path, tmp_path: Path) -> None:
    good = reference_dir / "glip_tiny_parity" / "case_b_coffee_301x417.png"
    out = tmp_path / "out"
    code = main(["detect", str(good), "--caption", "a cup of coffee", "--span", "2:15", "--threshold", "0.0",
                 "--min-size", "64", "--out", str(out), *_official_args(reference_dir)])
    assert code == 0
    report = json.loads((out / "detections.json").read_text())
    assert set(report[0]["phrases"]) == {"cup of coffee"}


def test_detect_ctrl_c_keeps_finished_images_and_exits_130(reference_dir: Path, tmp_path: Path, monkeypatch,
                                                           capsys) -> None:
    real_predict = GLIP.predict_encoded
    calls = []

    def predict_then_interrupt(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real_predict(self, *args, **kwargs)

    monkeypatch.setattr(GLIP, "predict_encoded", predict_then_interrupt)
    folder = reference_dir / "glip_tiny_parity"
    out = tmp_path / "out"
    images = [folder / "case_a_astronaut.png", folder / "case_b_coffee_301x417.png", folder / "case_c_camera_gray.png"]
    try:
        code = _detect(reference_dir, images, out)
    except KeyboardInterrupt:  # escaping main would also stop pytest's whole session
        pytest.fail("KeyboardInterrupt escaped glip.cli.main")
    assert code == 130
    report = json.loads((out / "detections.json").read_text())
    assert [entry["image"] for entry in report] == [str(images[0])]
    assert Path(report[0]["picture"]).is_file()
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == f"glip: interrupted; partial results kept in {out / 'detections.json'}"


def test_detect_refuses_an_output_folder_another_run_holds(reference_dir: Path, tmp_path: Path, capsys) -> None:
    image = reference_dir / "glip_tiny_parity" / "case_a_astronaut.png"
    out = tmp_path / "out"
    out.mkdir()
    with open(out / LOCK_FILE, "w") as lock:
        lock.write("4242\n")
        lock.flush()
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        assert _detect(reference_dir, [image], out) == 2
        error = capsys.readouterr().err
        assert f"--out {out} is in use by another glip run (pid 4242)" in error
        assert not (out / "detections.json").exists()
    assert _detect(reference_dir, [image], out) == 0
    assert (out / "detections.json").is_file()


def test_convert_then_load(reference_dir: Path, tmp_path: Path, capsys) -> None:
    folder = reference_dir / "glip_tiny_parity"
    out = tmp_path / "converted"
    assert main(["convert", str(folder / "checkpoint.pth"), str(folder / "config.yaml"), "--text-config",
                 str(folder / "text_config.json"), "--tokenizer", str(default_offline_vocab_dir()),
                 "--out", str(out)]) == 0
    assert f"--model {out}" in capsys.readouterr().out
    model = GLIP.from_pretrained(out)
    assert model.config.swin.embed_dim == 12


def test_models_lists_presets(capsys) -> None:
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    for name in ("glip_nano", "glip_t_a", "glip_t_b", "glip_t_c", "glip_t", "glip_l"):
        assert name in listing


def test_flag_combination_errors_are_one_line_with_exit_2(reference_dir: Path, tmp_path: Path, capsys) -> None:
    image = str(reference_dir / "glip_tiny_parity" / "case_a_astronaut.png")
    out = ["--out", str(tmp_path)]
    cases = [
        (["detect", image, *out, *_official_args(reference_dir)], "give exactly one of --classes or --caption"),
        (["detect", image, "--classes", " , ", *out, *_official_args(reference_dir)], "--classes is empty"),
        (["detect", image, "--classes", "dog", "--span", "0:3", *out, "--model", "x"], "--span needs --caption"),
        (["detect", image, "--classes", "dog", *out], "give --model NAME_OR_DIR or --checkpoint PTH --config YAML"),
        (["detect", image, "--classes", "dog", "--model", "no_such_model", *out], "no_such_model"),
    ]
    for argv, expected in cases:
        assert main(argv) == 2, argv
        error = capsys.readouterr().err
        assert error.startswith("glip: error: ") and expected in error and error.count("\n") == 1, error


def test_demo_finds_every_object_of_the_scene(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["demo", "--out", str(tmp_path)]) == 0  # the default scene: what `glip demo` shows
    report = json.loads((tmp_path / "detections.json").read_text())[0]
    assert Path(report["picture"]).is_file()
    truth = json.loads((tmp_path / "scene" / "detection.json").read_text())
    names = {category["id"]: category["name"] for category in truth["categories"]}
    objects = [(names[item["category_id"]], item["bbox"]) for item in truth["annotations"]]
    assert objects
    detections = list(zip(report["phrases"], report["boxes"]))
    for name, (x, y, width, height) in objects:
        best = max((_iou((x, y, x + width, y + height), box) for phrase, box in detections if phrase == name),
                   default=0.0)
        assert best >= 0.5, f"no {name} detected at {(x, y, width, height)}: {detections}"
    assert len(detections) <= 2 * len(objects), detections


def _iou(first: tuple[float, ...], second: list[float]) -> float:
    width = max(0.0, min(first[2], second[2]) - max(first[0], second[0]))
    height = max(0.0, min(first[3], second[3]) - max(first[1], second[1]))
    union = (first[2] - first[0]) * (first[3] - first[1]) + (second[2] - second[0]) * (second[3] - second[1])
    return width * height / (union - width * height)


def test_class_agnostic_nms_flag_overrides_the_models_default(tmp_path: Path, monkeypatch) -> None:
    # At a low threshold GLIP-Nano scores several labels per shape: its default class-agnostic NMS
    # keeps one box per place, --no-class-agnostic-nms (the official per-label NMS) keeps them all.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    counts = {}
    for flag in ("--class-agnostic-nms", "--no-class-agnostic-nms"):
        out = tmp_path / flag.strip("-")
        assert main(["demo", "--out", str(out), "--threshold", "0.05", flag]) == 0
        counts[flag] = len(json.loads((out / "detections.json").read_text())[0]["scores"])
    assert counts["--class-agnostic-nms"] < counts["--no-class-agnostic-nms"], counts
    default = tmp_path / "default"
    assert main(["demo", "--out", str(default), "--threshold", "0.05"]) == 0
    assert len(json.loads((default / "detections.json").read_text())[0]["scores"]) == counts["--class-agnostic-nms"]


def test_dtype_flag_sets_the_models_compute_dtype() -> None:
    import torch

    from glip.cli import build_parser, load_model_from_args

    args = build_parser().parse_args(["detect", "x.png", "--classes", "a", "--model", "glip_nano", "--dtype", "bf16"])
    assert load_model_from_args(args).inference_dtype == torch.bfloat16
    args = build_parser().parse_args(["detect", "x.png", "--classes", "a", "--model", "glip_nano"])
    assert load_model_from_args(args).inference_dtype == torch.float32
    with pytest.raises(SystemExit):
        build_parser().parse_args(["detect", "x.png", "--classes", "a", "--model", "glip_nano", "--dtype", "int8"])
