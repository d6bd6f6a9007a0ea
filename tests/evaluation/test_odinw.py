"""ODinW: the suites as data, the published layout, a suite run with a missing data set, resumption."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from eval_fixtures import write_odinw_root
from glip.evaluation.odinw import (
    ODINW_13,
    ODINW_35,
    dataset_prompts,
    evaluate_odinw,
    select_datasets,
)
from glip.evaluation.prompts import CategoryText


def test_suites_are_the_official_configs() -> None:
    assert len(ODINW_13) == 13 and len(ODINW_35) == 35
    assert len({dataset.name for dataset in ODINW_35}) == 35
    by_name = {dataset.name: dataset for dataset in ODINW_35}
    assert {dataset.name for dataset in ODINW_13} <= set(by_name)
    # Paths of configs/odinw_35/*.yaml (DATASETS.REGISTER), below DATASET/odinw.
    assert by_name["AerialMaritimeDrone_large"].files("val") == (
        "AerialMaritimeDrone/large/valid/annotations_without_background.json", "AerialMaritimeDrone/large/valid")
    assert by_name["EgoHands_generic"].files("val")[1] == "EgoHands/generic/mini_val"
    assert by_name["pistols_export"].files("test") == (
        "pistols/export/test_annotations_without_background.json", "pistols/export")
    assert by_name["PascalVOC"].files("test")[1] == "PascalVOC/valid"
    assert by_name["pothole"].caption_prompts["pothole"] == CategoryText("holes", "there are some ", " on the road")
    assert by_name["ChessPieces_Chess_Pieces.v23-raw.coco"].categories[0] == "  "
    thirteen = {dataset.name: dataset for dataset in ODINW_13}
    assert thirteen["CottontailRabbits"].categories == ("Cottontail-Rabbit",)
    assert not any(dataset.caption_prompts for dataset in ODINW_13)
    with pytest.raises(ValueError, match="'nope' not in the ODinW-13 suite"):
        select_datasets("13", ["pothole", "nope"])


def test_user_prompts_override_the_official_ones() -> None:
    pothole = select_datasets("35", ["pothole"])[0]
    assert dataset_prompts(pothole, None)["pothole"].name == "holes"
    merged = dataset_prompts(pothole, {"pothole": CategoryText("a hole in the road"), "dog": CategoryText("x")})
    assert merged == {"pothole": CategoryText("a hole in the road")}


def test_suite_reports_a_missing_data_set_and_goes_on(tiny_model, tmp_path: Path, monkeypatch) -> None:
    root = write_odinw_root(tmp_path / "DATASET" / "odinw")
    out = tmp_path / "out"
    names = ["pothole", "Raccoon_Raccoon.v2-raw.coco", "pistols_export"]
    evaluation = evaluate_odinw(tiny_model, tmp_path / "DATASET", out, suite="13", datasets=names, batch_size=2,
                                min_size=64, max_size=96, progress=False)
    assert list(evaluation.datasets) == ["pothole", "pistols_export"]
    assert "Raccoon/Raccoon.v2-raw.coco/valid/annotations_without_background.json" in evaluation.failed[names[1]]
    report = json.loads((out / "metrics.json").read_text())
    assert report["num_datasets"] == 2 and set(report["failed"]) == {names[1]}
    per_dataset = report["datasets"]
    assert math.isclose(report["AP"], (per_dataset["pothole"]["AP"] + per_dataset["pistols_export"]["AP"]) / 2)
    for name in ("pothole", "pistols_export"):
        assert {"AP", "AP50", "per_category_AP"} <= set(json.loads((out / name / "metrics.json").read_text()))
        assert (out / name / "results.json").is_file()
    assert "| **average (2)** |" in (out / "summary.md").read_text()

    # Resumed, the finished data sets are read back without running the model.
    monkeypatch.setattr(tiny_model, "preprocess", lambda *args: pytest.fail("inference on a finished data set"))
    again = evaluate_odinw(tiny_model, root, out, suite="13", datasets=names[::2], batch_size=2, min_size=64,
                           max_size=96, resume=True, progress=False)
    assert again.datasets == evaluation.datasets and not again.failed
    with pytest.raises(ValueError, match="no category of the selected data sets is named 'unicorn'"):
        evaluate_odinw(tiny_model, root, out, datasets=["pothole"], prompts={"unicorn": CategoryText("horse")})


def test_a_broken_data_set_is_found_before_any_inference(tiny_model, tmp_path: Path, monkeypatch, caplog) -> None:
    root = write_odinw_root(tmp_path / "odinw")
    broken = root / "pistols/export/val_annotations_without_background.json"
    data = json.loads(broken.read_text())
    data["annotations"][0]["bbox"] = [1, 2, 0, 5]
    broken.write_text(json.dumps(data))
    preprocess, reported = tiny_model.preprocess, []

    def inference(*args):
        reported.append("pistols_export failed" in caplog.text)
        return preprocess(*args)

    monkeypatch.setattr(tiny_model, "preprocess", inference)
    evaluation = evaluate_odinw(tiny_model, root, tmp_path / "out", datasets=["pothole", "pistols_export"],
                                batch_size=2, min_size=64, max_size=96, progress=False)
    assert reported and all(reported)  # known before the first data set's first batch
    assert list(evaluation.datasets) == ["pothole"]
    assert "annotations[0] (id 1): field 'bbox' [1, 2, 0, 5] has width 0" in evaluation.failed["pistols_export"]
