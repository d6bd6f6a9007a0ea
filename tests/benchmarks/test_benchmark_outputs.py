"""Benchmark scripts print their table and write results files only when asked (``--write`` or
``--out``): a trial run must not overwrite the committed figures in benchmarks/results/."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import nano_training_report  # noqa: E402
import results_io  # noqa: E402

FILES = ("glip_nano_shapes.json", "glip_nano_shapes.md")


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    """A finished training run's metrics.jsonl and its Shapes-world evaluation."""
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(
        {"step": step, "loss": 1.0 / step, "images_per_s": 3.0 + step}) for step in (1, 2, 3)) + "\n")
    (run / "eval" / "metrics.json").write_text(json.dumps(
        {"detection_AP": 0.71, "pairs_AP": 0.52, "held_out_pairs_AP": 0.31, "grounding_R@1": 0.83}))
    return run


def _stamps() -> dict[str, tuple[int, int] | None]:
    """Size and modification time of the committed results files (None: absent)."""
    paths = {name: results_io.RESULTS_DIR / name for name in FILES}
    return {name: (path.stat().st_size, path.stat().st_mtime_ns) if path.exists() else None
            for name, path in paths.items()}


def test_a_plain_run_prints_and_leaves_the_committed_results_alone(run_dir: Path, capsys) -> None:
    before = _stamps()
    nano_training_report.main(["--run", str(run_dir)])
    captured = capsys.readouterr()
    assert "| shape detection AP@[.5:.95] | 0.710 | >= 0.70 |" in captured.out
    assert "not written: pass --write" in captured.err
    assert _stamps() == before


def test_out_writes_elsewhere_and_write_replaces_the_results(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _stamps()
    nano_training_report.main(["--run", str(run_dir), "--out", str(tmp_path / "elsewhere")])
    assert sorted(path.name for path in (tmp_path / "elsewhere").iterdir()) == sorted(FILES)
    assert json.loads((tmp_path / "elsewhere" / FILES[0]).read_text())["steps"] == 3
    assert _stamps() == before

    # --write targets benchmarks/results/ (pointed at a scratch folder here).
    monkeypatch.setattr(results_io, "RESULTS_DIR", tmp_path / "results")
    nano_training_report.main(["--run", str(run_dir), "--write"])
    assert sorted(path.name for path in (tmp_path / "results").iterdir()) == sorted(FILES)
    with pytest.raises(SystemExit):
        nano_training_report.main(["--run", str(run_dir), "--write", "--out", str(tmp_path)])


def test_ablation_variants_differ_only_as_the_paper_says(tmp_path: Path) -> None:
    import shapes_ablation

    plan = shapes_ablation.Plan(tmp_path / "work", tmp_path / "data", 100, 60, 30, (1000, 1001), "0,1,2")
    sources = {key: shapes_ablation.variant_sources(plan, variant)
               for key, variant in shapes_ablation.VARIANTS.items()}
    kinds = {key: [source["kind"] for source in value] for key, value in sources.items()}
    assert kinds["A"] == kinds["B"] == ["coco", "coco"]  # shapes + named pairs: detection data only
    assert sources["C"][:2] == sources["B"] and kinds["C"] == ["coco", "coco", "grounding"]
    assert sources["T"][:3] == sources["C"] and sources["T"][3]["annotations"] == str(plan.pseudo_labels)
    gold = [source for value in sources.values() for source in value if source["annotations"] != str(plan.pseudo_labels)]
    assert all(source["annotations"].startswith(str(plan.data)) for source in gold)
    fusion = {key: variant.fusion for key, variant in shapes_ablation.VARIANTS.items()}
    assert fusion == {"A": False, "B": True, "C": True, "T": True}


def test_ablation_table_gives_mean_and_spread_over_test_seeds() -> None:
    import shapes_ablation

    shapes = {seed: {"detection_AP": ap, "pairs_AP": 0.5, "held_out_pairs_AP": 0.2, "grounding_R@1": 0.8}
              for seed, ap in ((1000, 0.8), (1001, 0.9))}
    study = {"runs": [{"variant": "names", "mode": None, "shots": "0", "seed": None, "AP": 0.1},
                      *[{"variant": "names", "mode": "full", "shots": "1", "seed": seed, "AP": ap}
                        for seed, ap in ((0, 0.2), (1, 0.4))]]}
    described = {"runs": [{"variant": "descriptive", "mode": None, "shots": "0", "seed": None, "AP": 0.15}]}
    row = shapes_ablation.summarise(shapes_ablation.VARIANTS["B"], shapes, {"fewshot": study, "descriptive": described},
                                    600.0)
    assert row["detection_AP"]["mean"] == pytest.approx(0.85) and row["detection_AP"]["std"] == pytest.approx(0.0707, abs=1e-4)
    assert (row["zero_shot_names"], row["zero_shot_descriptive"]) == (pytest.approx(10.0), pytest.approx(15.0))
    assert row["full_1shot"]["mean"] == pytest.approx(30.0) and row["prompt_5shot"] is None
    plan = shapes_ablation.Plan(Path("w"), Path("d"), 100, 60, 30, (1000, 1001), "0,1")
    table = shapes_ablation.markdown([row], plan)
    assert "| Nano-B |" in table and "0.850 ± 0.071" in table and "30.0 ± 14.1" in table and "n/a" in table
