"""Batch sharding across processes, and a 2-process torchrun run against one process."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from glip.training import TrainRecipe, train
from glip.training.distributed import ShardedBatchSampler
from training_fixtures import recipe_dict, write_recipe


def test_processes_split_the_same_global_batches() -> None:
    for epoch in range(3):
        single = list(ShardedBatchSampler(11, 4, seed=5, epoch=epoch))
        shards = [list(ShardedBatchSampler(11, 4, rank=rank, world_size=2, seed=5, epoch=epoch)) for rank in range(2)]
        assert len(single) == 2  # 11 // 4, the incomplete batch is dropped
        assert [first + second for first, second in zip(*shards)] == single
        flat = [index for batch in single for index in batch]
        assert len(set(flat)) == len(flat) and all(0 <= index < 11 for index in flat)


def test_order_depends_on_seed_and_epoch_only_and_can_start_mid_epoch() -> None:
    first = list(ShardedBatchSampler(40, 4, seed=1, epoch=0))
    assert first == list(ShardedBatchSampler(40, 4, seed=1, epoch=0))
    assert first != list(ShardedBatchSampler(40, 4, seed=1, epoch=1))
    assert first != list(ShardedBatchSampler(40, 4, seed=2, epoch=0))
    resumed = ShardedBatchSampler(40, 4, seed=1, epoch=0, start_batch=3)
    assert len(resumed) == 7 and list(resumed) == first[3:]
    assert list(ShardedBatchSampler(8, 4, shuffle=False)) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_invalid_sharding() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        ShardedBatchSampler(10, 3, world_size=2)
    with pytest.raises(ValueError, match="rank 2"):
        ShardedBatchSampler(10, 4, rank=2, world_size=2)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="needs torchrun")
def test_two_processes_match_one_with_the_same_global_batch(tmp_path: Path) -> None:
    """torchrun with 2 gloo processes x 2 images vs 1 process x 4 images: same weights after 3 steps.

    Dropout is off and all images have one size (so the per-process padding equals the global one);
    the only differences left are float rounding (all-reduce order, loss normalisation).
    """
    no_dropout = {
        "swin": {"drop_path_rate": 0.0},
        "fpn": {"drop_block_prob": 0.0},
        "fusion": {"attention_dropout": 0.0},
        "language": {"bert": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}},
    }
    recipe = recipe_dict(tmp_path / "data", tmp_path / "one", max_steps=3, batch_size=4, model_overrides=no_dropout)
    recipe["data"]["min_sizes"] = [48]
    path = write_recipe(tmp_path / "recipe.yaml", recipe)

    environment = dict(os.environ, OMP_NUM_THREADS="1")
    source = str(Path(__file__).resolve().parents[2] / "src")
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [source, environment.get("PYTHONPATH")]))
    command = [
        str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node=2",
        "-m", "glip.training.loop", str(path), "--set", f"output_dir={tmp_path / 'two'}",
    ]
    result = subprocess.run(command, env=environment, capture_output=True, timeout=400)
    assert result.returncode == 0, result.stderr.decode()[-4000:]

    train(TrainRecipe.from_yaml(path))
    one = load_file(tmp_path / "one" / "model" / "model.safetensors")
    two = load_file(tmp_path / "two" / "model" / "model.safetensors")
    assert one.keys() == two.keys()
    for name in one:
        assert torch.allclose(one[name], two[name], rtol=1e-4, atol=5e-5), (
            f"{name}: max |diff| {(one[name] - two[name]).abs().max().item():.3g}"
        )
