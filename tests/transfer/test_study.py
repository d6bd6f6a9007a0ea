"""``glip finetune run`` and ``glip finetune study`` on tiny data: outputs, resume, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from glip.cli import main
from glip.pipeline import GLIP
from glip.transfer import CocoSplit
from transfer_fixtures import PROMPTS


@pytest.fixture()
def config(model_dir: Path, tmp_path: Path) -> Path:
    """A recipe of one step per run on 64 px images."""
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "model": str(model_dir), "batch_size": 2, "max_steps": 1, "min_sizes": [64], "max_size": 0,
        "num_workers": 0, "num_threads": 1, "progress_bar": False, "eval_batch_size": 4, "device": "cpu",
    }))
    return path


@pytest.fixture()
def prompts_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(PROMPTS))
    return path


def _split_args(train: CocoSplit, test: CocoSplit | None = None) -> list[str]:
    args = ["--train", str(train.annotations), "--train-images", str(train.images)]
    if test is not None:
        args += ["--test", str(test.annotations), "--test-images", str(test.images)]
    return args


def test_run_saves_a_prompt_tuned_model_with_the_descriptive_prompt(
    config: Path, prompts_file: Path, train_split: CocoSplit, test_split: CocoSplit, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    code = main(["finetune", "run", "--mode", "prompt", "--shots", "2", "--seed", "1", "--config", str(config),
                 "--prompts", str(prompts_file), "--out", str(out), *_split_args(train_split, test_split)])
    assert code == 0
    captured = capsys.readouterr()
    assert "test AP" in captured.out
    # The recipe turns the progress bar off (progress_bar: false); the run's bar shows anyway.
    assert "prompt tuning" in captured.err and "1/1" in captured.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["AP"] <= 1.0
    trained_on = json.loads((out / "train.json").read_text())
    assert trained_on["few_shot"]["shots"] == 2
    assert [c["name"] for c in trained_on["categories"]] == [PROMPTS["heart"], "arrow", PROMPTS["crescent"]]
    model = GLIP.from_pretrained(out / "model")
    assert model.prompt_offset is not None
    assert model.prompt_offset.classes == (PROMPTS["heart"], "arrow", PROMPTS["crescent"])


def test_study_writes_the_table_and_resumes(
    config: Path, prompts_file: Path, train_split: CocoSplit, test_split: CocoSplit, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "study"
    args = ["finetune", "study", "--config", str(config), "--shots", "0,1,full", "--seeds", "0,1",
            "--modes", "linear,prompt", "--prompts", str(prompts_file), "--out", str(out),
            *_split_args(train_split, test_split)]
    assert main(args) == 0
    progress = capsys.readouterr().err
    assert "run 1/18: zero-shot evaluation, prompts=class names" in progress
    assert "run 3/18: mode=linear shots=1 seed=0 prompts=class names" in progress
    assert "run 18/18 done in " in progress and "0 runs left" in progress
    assert "run 18/18 prompt all seed 1" in progress, "each run's bar is named after it"
    report = json.loads((out / "study.json").read_text())
    assert report["complete"] and report["format"] == "glip-transfer-study"
    # 2 zero-shot evaluations (names, descriptive) + 2 variants x 2 modes x 2 shot settings x 2 seeds.
    assert len(report["runs"]) == 2 + 16
    assert [(row["mode"], row["variant"]) for row in report["table"]] == [
        ("linear", "names"), ("linear", "descriptive"), ("prompt", "names"), ("prompt", "descriptive")]
    for row in report["table"]:
        assert set(row["cells"]) == {"0", "1", "full"}
        assert row["cells"]["1"]["n"] == 2 and row["cells"]["0"]["n"] == 1
    markdown = (out / "study.md").read_text()
    assert "| tuning | prompt | zero-shot | 1-shot | full data |" in markdown
    assert "| prompt tuning | with descriptive prompts |" in markdown and " ± " in markdown
    assert not list(out.glob("runs/*/model")), "run models are removed unless --keep-models"
    assert len(list(out.glob("runs/*/metrics.json"))) == 16

    # Resuming a finished study runs nothing; starting over in the same folder is refused.
    assert main(args + ["--resume"]) == 0
    assert "run " not in capsys.readouterr().err
    assert len(json.loads((out / "study.json").read_text())["runs"]) == 18
    assert main(args) == 2
    assert "already holds a study" in capsys.readouterr().err
    assert main(args + ["--resume", "--set", "max_steps=3", "--set", "num_threads=2"]) == 2
    error = capsys.readouterr().err
    assert "settings differ from those of" in error and error.rstrip().endswith("in: recipe.max_steps")


def test_bad_input_fails_before_training_and_names_the_culprit(
    config: Path, train_split: CocoSplit, test_split: CocoSplit, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "study"

    def study(*extra: str, train: CocoSplit = train_split, test: CocoSplit = test_split) -> str:
        assert main(["finetune", "study", "--config", str(config), "--out", str(out), *_split_args(train, test),
                     *extra]) == 2
        return capsys.readouterr().err

    assert "class 'crescent' has 8 boxes, fewer than k=9" in study("--shots", "0,9")
    assert "--modes: unknown tuning mode 'probe'" in study("--modes", "full,probe")
    assert "--shots: 'two'" in study("--shots", "0,two")
    missing = CocoSplit(tmp_path / "missing.json", train_split.images)
    assert "--train: annotation file" in study(train=missing) and "missing.json" in study(train=missing)
    malformed = tmp_path / "malformed.json"
    malformed.write_text('{"images": [')
    assert "malformed.json" in study(train=CocoSplit(malformed, train_split.images))
    other = json.loads(test_split.annotations.read_text())
    other["categories"][0]["name"] = "moon"
    other_file = tmp_path / "other.json"
    other_file.write_text(json.dumps(other))
    assert "differ from those of the training file" in study(test=CocoSplit(other_file, test_split.images))
    assert not out.exists(), "nothing is written before the inputs are checked"
    with pytest.raises(SystemExit):
        main(["finetune", "run", "--mode", "probe", "--out", str(out), *_split_args(train_split)])
    assert "invalid choice: 'probe'" in capsys.readouterr().err
