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
