"""The ``glip eval`` output contract: the files and keys of each protocol, exit codes, errors."""

from __future__ import annotations

import json
from pathlib import Path

from eval_fixtures import write_coco, write_lvis_many_categories, write_mdetr_grounding, write_odinw_root
from glip.cli import main

SMALL = ["--min-size", "64", "--max-size", "96", "--batch-size", "2"]
AP_KEYS = {"AP", "AP50", "AP75", "APs", "APm", "APl"}


def _outputs(out: Path) -> tuple[list, dict]:
    return json.loads((out / "results.json").read_text()), json.loads((out / "metrics.json").read_text())


def test_coco_and_lvis(tiny_model_args: list[str], tmp_path: Path) -> None:
    annotations, images = write_coco(tmp_path / "coco", ["cat", "traffic_light"], num_images=3)
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"traffic_light": "a lamp that controls traffic"}))
    out = tmp_path / "out_coco"
    assert main(["eval", "coco", "--annotations", str(annotations), "--images", str(images), "--out", str(out),
                 "--prompts", str(prompts), *SMALL, *tiny_model_args]) == 0
    results, metrics = _outputs(out)
    assert {"image_id", "category_id", "bbox", "score"} == set(results[0])
    assert AP_KEYS | {"per_category_AP"} <= set(metrics)

    lvis = write_lvis_many_categories(tmp_path / "lvis")
    out = tmp_path / "out_lvis"
    assert main(["eval", "lvis", "--annotations", str(lvis), "--images", str(tmp_path / "lvis"), "--out", str(out),
                 "--max-detections", "10", *SMALL, *tiny_model_args]) == 0
    results, metrics = _outputs(out)
    assert AP_KEYS | {"APr", "APc", "APf", "per_category_AP"} <= set(metrics)


def test_flickr_and_odinw(tiny_model_args: list[str], tmp_path: Path) -> None:
    annotations = write_mdetr_grounding(tmp_path / "flickr")
    out = tmp_path / "out_flickr"
    assert main(["eval", "flickr", "--annotations", str(annotations), "--images", str(tmp_path / "flickr"),
                 "--out", str(out), *SMALL, *tiny_model_args]) == 0
    results, metrics = _outputs(out)
    assert {"R@1", "R@5", "R@10"} <= set(metrics) and "phrases" in results[0]

    root = write_odinw_root(tmp_path / "odinw")
    out = tmp_path / "out_odinw"
    code = main(["eval", "odinw", "--root", str(root), "--suite", "35", "--datasets", "pothole,PascalVOC",
                 "--out", str(out), *SMALL, *tiny_model_args])
    assert code == 1  # PascalVOC is missing: reported, the run fails at the end
    report = json.loads((out / "metrics.json").read_text())
    assert set(report["datasets"]) == {"pothole"} and set(report["failed"]) == {"PascalVOC"}
    assert AP_KEYS <= set(report)


def test_errors_and_shapes(tiny_model_args: list[str], tmp_path: Path, capsys, monkeypatch) -> None:
    assert main(["eval", "coco", "--annotations", str(tmp_path / "none.json"), "--images", str(tmp_path),
                 "--out", str(tmp_path / "out"), *tiny_model_args]) == 2
    assert "none.json" in capsys.readouterr().err
    assert not (tmp_path / "out" / "metrics.json").exists()

    import glip.evaluation.shapes as shapes

    calls = []

    def fake(model, split_dir, batch_size, min_size, max_size, out):
        calls.append((min_size, max_size))
        shapes.write_report({"detection_AP": 0.25}, out / "metrics.json")
        return {"detection_AP": 0.25}

    monkeypatch.setattr(shapes, "evaluate_shapes_world", fake)
    assert main(["eval", "shapes", "--split-dir", str(tmp_path), "--out", str(tmp_path / "shapes"),
                 *tiny_model_args]) == 0
    assert json.loads((tmp_path / "shapes" / "metrics.json").read_text()) == {"detection_AP": 0.25}
    assert calls == [(None, None)]  # the evaluation resolves the model's own test size
