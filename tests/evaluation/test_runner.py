"""The shared evaluation loop: batches, partial saves, resumption, fingerprints, atomic files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from glip.evaluation.runner import (
    PARTIAL_DIR,
    RunOptions,
    finished_metrics,
    fingerprint_digest,
    run_batches,
)
from glip.files import write_json_atomic

KEYS = [f"image-{index}" for index in range(10)]
FINGERPRINT = {"protocol": "test", "model": "abc"}


class Predictor:
    """Doubles each index; raises at the ``fail_at``-th call (an interrupted run)."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.fail_at = fail_at
        self.batches: list[list[int]] = []

    def __call__(self, indices: list[int]) -> list[dict]:
        if self.fail_at is not None and len(self.batches) + 1 == self.fail_at:
            raise KeyboardInterrupt
        self.batches.append(indices)
        return [{"value": 2 * index, "score": 0.1 * index} for index in indices]


def test_results_come_back_in_item_order() -> None:
    predictor = Predictor()
    results = run_batches(KEYS, predictor, FINGERPRINT, RunOptions(batch_size=4, progress=False))
    assert [result["value"] for result in results] == [2 * index for index in range(10)]
    assert predictor.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path: Path) -> None:
    options = RunOptions(batch_size=3, out=tmp_path, save_every=1, progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_batches(KEYS, Predictor(fail_at=3), FINGERPRINT, options)
    partial = json.loads((tmp_path / PARTIAL_DIR / "rank0-of-1.json").read_text())
    assert [key for key, _ in partial["results"]] == KEYS[:6]

    resumed = Predictor()
    results = run_batches(KEYS, resumed, FINGERPRINT, RunOptions(batch_size=3, out=tmp_path, resume=True,
                                                                 progress=False))
    assert resumed.batches == [[6, 7, 8], [9]]
    assert results == run_batches(KEYS, Predictor(), FINGERPRINT, RunOptions(batch_size=3, progress=False))


def test_resume_refuses_partials_of_another_run(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        run_batches(KEYS, Predictor(fail_at=2), FINGERPRINT, RunOptions(3, tmp_path, save_every=1, progress=False))
    with pytest.raises(ValueError, match=r"rank0-of-1.json was made by another run \(different model\)"):
        run_batches(KEYS, Predictor(), {**FINGERPRINT, "model": "xyz"}, RunOptions(3, tmp_path, resume=True))
    with pytest.raises(ValueError, match="different batch_size"):
        run_batches(KEYS, Predictor(), FINGERPRINT, RunOptions(4, tmp_path, resume=True))
    # Without --resume the old partial results are discarded and everything runs.
    fresh = Predictor()
    run_batches(KEYS, fresh, FINGERPRINT, RunOptions(3, tmp_path, progress=False))
    assert len(fresh.batches) == 4


def test_finished_runs_are_recognised_by_their_fingerprint(tmp_path: Path) -> None:
    options = RunOptions(2, tmp_path, resume=True)
    assert finished_metrics(FINGERPRINT, options) is None
    write_json_atomic(tmp_path / "metrics.json", {"AP": 0.5, "fingerprint": fingerprint_digest(FINGERPRINT, options)})
    assert finished_metrics(FINGERPRINT, options)["AP"] == 0.5
    assert finished_metrics({**FINGERPRINT, "model": "other"}, options) is None
    assert finished_metrics(FINGERPRINT, RunOptions(4, tmp_path, resume=True)) is None
    assert finished_metrics(FINGERPRINT, RunOptions(2, tmp_path, resume=False)) is None


def test_json_files_are_atomic_and_valid(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "m.json", {"AP": math.nan, "x": [1.5, math.inf]}, indent=2)
    assert json.loads((tmp_path / "m.json").read_text()) == {"AP": None, "x": [1.5, None]}
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "m.json", {"bad": object()})
    assert json.loads((tmp_path / "m.json").read_text())["AP"] is None  # the old file is intact
    assert [path.name for path in tmp_path.iterdir()] == ["m.json"]  # no temp file left
