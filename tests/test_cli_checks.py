"""What the command line checks before any work: image inputs (folders, globs), flag ranges, output
folders that cannot be written; and how it reports errors (flags, not Python arguments)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from glip.cli import main
from glip.cli_detect import expand_image_inputs
from glip.cli_support import UsageError, cli_message, ensure_writable_dir


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


# ---- image inputs ------------------------------------------------------------------------------


def test_folders_recurse_on_image_extensions_in_any_case_sorted(tmp_path: Path) -> None:
    names = ["b.PNG", "a.jpg", "sub/c.jpeg", "sub/deeper/d.WebP", "e.tif", "f.TIFF", "g.bmp", "notes.txt",
             "h.json", "old.detections.jpg"]
    for name in names:
        _touch(tmp_path / "photos" / name)
    found = expand_image_inputs([str(tmp_path / "photos")])
    expected = ["a.jpg", "b.PNG", "e.tif", "f.TIFF", "g.bmp", "sub/c.jpeg", "sub/deeper/d.WebP"]
    assert found == [str(tmp_path / "photos" / name) for name in expected]


def test_glob_patterns_are_expanded_and_files_kept_in_order(tmp_path: Path) -> None:
    for name in ("x/2.jpg", "x/1.jpg", "x/3.png", "x/y/4.jpg", "x/readme.md"):
        _touch(tmp_path / name)
    single = _touch(tmp_path / "single.png")
    found = expand_image_inputs([str(single), str(tmp_path / "x" / "*.jpg"), str(tmp_path / "x" / "**" / "*.jpg"),
                                 "https://example.com/a.jpg", str(tmp_path / "missing.jpg")])
    assert found == [str(single), str(tmp_path / "x/1.jpg"), str(tmp_path / "x/2.jpg"), str(tmp_path / "x/y/4.jpg"),
                     "https://example.com/a.jpg", str(tmp_path / "missing.jpg")]


def test_a_folder_or_pattern_without_images_is_a_usage_error(tmp_path: Path, capsys) -> None:
    _touch(tmp_path / "empty" / "notes.txt")
    with pytest.raises(UsageError, match="holds no images"):
        expand_image_inputs([str(tmp_path / "empty")])
    with pytest.raises(UsageError, match="matches no image file"):
        expand_image_inputs([str(tmp_path / "*.jpg")])
    # Before any model loading: the model named here does not exist.
    assert main(["detect", str(tmp_path / "empty"), "--classes", "dog", "--model", "nothing",
                 "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("glip: error: folder ") and "holds no images" in error


# ---- flag ranges ---------------------------------------------------------------------------------

_DETECT = ["detect", "a.jpg", "--classes", "dog"]
_COCO = ["eval", "coco", "--annotations", "a.json", "--images", "i", "--out", "o"]


@pytest.mark.parametrize(("argv", "flag"), [
    ([*_DETECT, "--threshold", "1.5"], "--threshold"),
    ([*_DETECT, "--threshold", "-0.1"], "--threshold"),
    ([*_DETECT, "--threshold", "nan"], "--threshold"),
    ([*_DETECT, "--nms-threshold", "0"], "--nms-threshold"),
    ([*_DETECT, "--max-detections", "0"], "--max-detections"),
    ([*_DETECT, "--min-size", "0"], "--min-size"),
    ([*_DETECT, "--min-size", "2.5"], "--min-size"),
    ([*_DETECT, "--max-size", "-1"], "--max-size"),
    (["detect", "a.jpg", "--caption", "a dog", "--span", "5:2"], "--span"),
    (["detect", "a.jpg", "--caption", "a dog", "--span", "-1:2"], "--span"),
    (["detect", "a.jpg", "--caption", "a dog", "--span", "x:y"], "--span"),
    (["demo", "--threshold", "2"], "--threshold"),
    ([*_COCO, "--batch-size", "0"], "--batch-size"),
    ([*_COCO, "--min-size", "-800"], "--min-size"),
    ([*_COCO, "--save-every", "0"], "--save-every"),
    (["synth", "--out", "o", "--images", "0", "--seed", "1"], "--images"),
    (["synth", "--out", "o", "--images", "2", "--seed", "-1"], "--seed"),
    (["pseudo-label", "--captions", "c", "--images", "i", "--out", "o.json", "--threshold", "7"], "--threshold"),
])
def test_numeric_flags_are_range_checked_by_argparse(argv: list[str], flag: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"error: argument {flag}: " in last, last


# ---- output folders --------------------------------------------------------------------------------


def test_ensure_writable_dir_refuses_a_path_under_a_file(tmp_path: Path) -> None:
    blocker = _touch(tmp_path / "file.txt")
    with pytest.raises(UsageError, match=r"--out .*file.txt/out: cannot be a folder, .*file.txt is a file"):
        ensure_writable_dir(blocker / "out", "--out")
    with pytest.raises(UsageError, match="it is a file"):
        ensure_writable_dir(blocker, "--out")
    assert ensure_writable_dir(tmp_path / "new" / "deeper", "--out") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checked, not created
    if os.geteuid() != 0:  # root writes through chmod, so this part only means something for other users
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            with pytest.raises(UsageError, match="cannot write in"):
                ensure_writable_dir(locked / "out", "--out")
        finally:
            locked.chmod(0o700)


@pytest.fixture
def no_model_loading(monkeypatch):
    """Loading a model or a recipe fails the test: the output check must come first."""
    from glip.pipeline import GLIP

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the output folder was checked")

    monkeypatch.setattr(GLIP, "from_pretrained", classmethod(refuse))
    monkeypatch.setattr(GLIP, "from_official", classmethod(refuse))


def test_unwritable_out_is_refused_before_any_work(tmp_path: Path, no_model_loading, capsys) -> None:
    blocked = str(_touch(tmp_path / "file.txt") / "out")
    image = str(_touch(tmp_path / "image.png"))
    model = ["--model", "glip_nano"]
    commands = [
        ["detect", image, "--classes", "dog", *model, "--out", blocked],
        ["demo", "--out", blocked],
        ["eval", "coco", "--annotations", "a.json", "--images", "i", *model, "--out", blocked],
        ["eval", "shapes", "--split-dir", "s", *model, "--out", blocked],
        ["convert", "c.pth", "c.yaml", "--out", blocked],
        ["synth", "--out", blocked, "--images", "1", "--seed", "0"],
        ["pseudo-label", "--captions", "c.json", "--images", "i", *model, "--out", f"{blocked}/labels.json"],
        ["finetune", "run", "--mode", "full", "--train", "t.json", "--train-images", "i", "--out", blocked],
    ]
    for argv in commands:
        assert main(argv) == 2, argv
        error = capsys.readouterr().err
        assert error.startswith("glip: error: --out ") and "file.txt is a file" in error, (argv, error)
    assert not any(path.name == "out" for path in tmp_path.rglob("*"))


def _recipe(path: Path, output_dir: Path) -> Path:
    """A valid recipe naming ``output_dir`` (its data is never read: training is replaced)."""
    path.write_text(f"output_dir: {output_dir}\nmax_steps: 1\ndata:\n  sources:\n"
                    "  - {kind: coco, annotations: a.json, images: images}\n")
    return path


def test_train_refuses_an_unwritable_output_dir_before_training(tmp_path: Path, monkeypatch, capsys) -> None:
    blocker = _touch(tmp_path / "file.txt")
    recipe = _recipe(tmp_path / "recipe.yaml", blocker / "run")

    def refuse(*args, **kwargs):
        raise AssertionError("training started before the output folder was checked")

    monkeypatch.setattr("glip.training.loop.train_command", refuse)
    assert main(["train", str(recipe)]) == 2
    assert "output_dir (of the recipe)" in capsys.readouterr().err


def test_train_ends_by_naming_the_final_model(tmp_path: Path, monkeypatch, capsys) -> None:
    recipe = _recipe(tmp_path / "recipe.yaml", tmp_path / "run")
    calls = []

    def fake_train_command(config, overrides, resume):
        calls.append((Path(config), list(overrides), resume))
        return tmp_path / "run" / "model"

    monkeypatch.setattr("glip.training.loop.train_command", fake_train_command)
    assert main(["train", str(recipe), "--set", "max_steps=3", "--resume"]) == 0
    assert calls == [(recipe, ["max_steps=3"], True)]
    assert capsys.readouterr().out.strip() == f"final model: {tmp_path / 'run' / 'model'} (use it with --model " \
                                              f"{tmp_path / 'run' / 'model'})"


# ---- error messages ------------------------------------------------------------------------------


def test_messages_name_flags_not_python_arguments() -> None:
    cases = {
        "out_dir x exists and is not empty; pass overwrite=True or choose another folder": "pass --overwrite or",
        "no noun phrase found in caption 'zz'; pass spans=[(start, end), ...]": "pass --span START:END",
        "give exactly one of classes= (detection) or caption= (grounding)": "one of --classes (detection) or --caption",
        "load it with GLIP.from_official(path, config) using x.yaml": "with --checkpoint PTH --config YAML using",
        "or GLIP.from_pretrained(<converted dir>). Cause": "or --model <converted dir>. Cause",
    }
    for message, expected in cases.items():
        assert expected in cli_message(ValueError(message))
    assert cli_message(KeyError("unknown model preset 'x'")) == "unknown model preset 'x'"


def test_long_messages_are_cut_to_one_line() -> None:
    message = cli_message(ValueError("class " + "word " * 1000 + "\nneeds too many tokens"))
    assert "\n" not in message and len(message) < 500 and message.endswith("-v shows all)")


def test_synth_into_a_full_folder_names_the_overwrite_flag(tmp_path: Path, capsys) -> None:
    _touch(tmp_path / "split" / "something.txt")
    assert main(["synth", "--out", str(tmp_path / "split"), "--images", "1", "--seed", "0"]) == 2
    error = capsys.readouterr().err
    assert "--overwrite" in error and "overwrite=True" not in error and error.count("\n") == 1


def test_verbose_shows_the_traceback(tmp_path: Path, capsys) -> None:
    _touch(tmp_path / "split" / "something.txt")
    assert main(["synth", "--out", str(tmp_path / "split"), "--images", "1", "--seed", "0", "-v"]) == 2
    error = capsys.readouterr().err
    assert "Traceback" in error and error.strip().splitlines()[-1].startswith("glip: error: ")


# ---- defaults from the model -----------------------------------------------------------------------


def test_eval_leaves_the_resize_to_the_model(tmp_path: Path, monkeypatch) -> None:
    """``glip eval`` passes None, so GLIP-Nano is evaluated at its own 224 (800 made its AP 0.28)."""
    import glip.evaluation.coco
    import glip.evaluation.shapes
    from glip.pipeline import GLIP

    seen = {}

    def fake_evaluate(model, annotations, images, **options):
        seen.update(options, model=model)
        return SimpleNamespace(metrics={"AP": 0.5})

    def fake_shapes(model, split_dir, **options):
        seen.update(options, model=model)
        return {"detection_AP": 0.5}

    monkeypatch.setattr(glip.evaluation.coco, "evaluate_detection", fake_evaluate)
    monkeypatch.setattr(glip.evaluation.shapes, "evaluate_shapes_world", fake_shapes)
    for protocol in (["coco", "--annotations", "a.json", "--images", "i"], ["shapes", "--split-dir", "s"]):
        seen.clear()
        assert main(["eval", *protocol, "--model", "glip_nano", "--out", str(tmp_path / "eval")]) == 0
        assert seen["min_size"] is None and seen["max_size"] is None, protocol
        assert seen["model"].config.input.min_size_test == 224
    assert GLIP.from_pretrained("glip_nano").config.input.min_size_test == 224


def test_help_states_the_model_defaults(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["eval", "coco", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default: the model's test size, 800 for official presets, 224 for glip_nano" in text


# ---- Ctrl-C ----------------------------------------------------------------------------------------


def test_ctrl_c_in_eval_and_train_is_one_line_and_exit_130(tmp_path: Path, monkeypatch, capsys) -> None:
    import glip.cli
    import glip.evaluation.coco

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(glip.cli, "load_model_from_args", lambda args: None)
    monkeypatch.setattr(glip.evaluation.coco, "evaluate_detection", interrupt)
    monkeypatch.setattr("glip.training.loop.train_command", interrupt)
    out = tmp_path / "eval"
    recipe = _recipe(tmp_path / "recipe.yaml", tmp_path / "run")
    for argv, where in (
        (["eval", "coco", "--model", "m", "--annotations", "a.json", "--images", "i", "--out", str(out)],
         f"{out / 'partial'} (go on with --resume)"),
        (["train", str(recipe)], f"{tmp_path / 'run'} (go on with --resume)"),
    ):
        try:
            code = main(argv)
        except KeyboardInterrupt:  # escaping main would also stop pytest's whole session
            pytest.fail("KeyboardInterrupt escaped glip.cli.main")
        assert code == 130
        assert capsys.readouterr().err == f"glip: interrupted; partial results kept in {where}\n"
