"""``torchrun`` with 2 gloo processes on the CPU gives the numbers and files of one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from eval_fixtures import write_coco, write_mdetr_grounding
from glip.cli import main

BIN = Path(sys.executable).parent


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun", path=str(BIN)) is None or not (BIN / "glip").is_file(),
                    reason="needs torchrun and the glip script")
def test_two_processes_match_one(tiny_model_args: list[str], tmp_path: Path) -> None:
    """5 images in batches of 2: process 0 runs batches 0 and 2, process 1 batch 1; grounding too."""
    annotations, images = write_coco(tmp_path / "coco", ["cat", "dog", "traffic_light"], num_images=5)
    grounding = write_mdetr_grounding(tmp_path / "flickr")
    jobs = {
        "coco": ["coco", "--annotations", str(annotations), "--images", str(images)],
        "flickr": ["flickr", "--annotations", str(grounding), "--images", str(tmp_path / "flickr")],
    }
    small = ["--min-size", "64", "--max-size", "96", "--batch-size", "2"]
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    for name, arguments in jobs.items():
        one, two = tmp_path / f"{name}_one", tmp_path / f"{name}_two"
        assert main(["eval", *arguments, "--out", str(one), *small, *tiny_model_args]) == 0
        command = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "--no-python", str(BIN / "glip"),
                   "eval", *arguments, "--out", str(two), *small, *tiny_model_args]
        result = subprocess.run(command, env=environment, capture_output=True, timeout=300)
        assert result.returncode == 0, result.stderr.decode()[-4000:]
        # Whole batches are sharded, so every batch (and its padding) is the one-process batch.
        for file in ("metrics.json", "results.json"):
            assert json.loads((one / file).read_text()) == json.loads((two / file).read_text()), f"{name}: {file}"
        assert sorted(path.name for path in two.iterdir()) == sorted(path.name for path in one.iterdir())


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun", path=str(BIN)) is None or not (BIN / "glip").is_file(),
                    reason="needs torchrun and the glip script")
def test_a_failure_on_one_process_stops_both(tiny_model_args: list[str], tmp_path: Path) -> None:
    annotations, images = write_coco(tmp_path / "coco", ["cat", "dog"], num_images=4)
    (images / "img_2.png").write_bytes(b"not a png")  # batch 1 of 2 images: process 1's
    command = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "--no-python", str(BIN / "glip"),
               "eval", "coco", "--annotations", str(annotations), "--images", str(images), "--out",
               str(tmp_path / "out"), "--min-size", "64", "--batch-size", "2", *tiny_model_args]
    result = subprocess.run(command, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, timeout=300)
    errors = result.stderr.decode()
    assert result.returncode != 0
    assert "img_2.png" in errors and "failed on another process" in errors
    assert not (tmp_path / "out" / "metrics.json").exists()
