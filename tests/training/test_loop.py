"""The training loop on a tiny random GLIP and tiny synthetic COCO + grounding data."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from glip.data import Batch, Target
from glip.pipeline import GLIP
from glip.training import NonFiniteLossError, TrainCallbacks, TrainRecipe, train, train_command
from glip.training import checkpoint as checkpoints
from glip.training.loop import _skip_reason, build_model, total_steps
from glip.training.loop import main as loop_main
from training_fixtures import recipe_dict, write_recipe

LOSS_KEYS = ("loss", "loss_reg", "loss_centerness", "loss_cls", "loss_dot_product_token", "lr", "grad_norm")


class Interrupted(Exception):
    """Stands in for a crash in the middle of a run."""


def _metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def _losses(output_dir: Path) -> list[tuple]:
    """Per-step values that must repeat exactly (no timings)."""
    return [(row["step"], *(row[key] for key in LOSS_KEYS)) for row in _metrics(output_dir)]


def test_smoke_run_logs_checkpoints_and_saves_a_loadable_model(tmp_path: Path) -> None:
    recipe = TrainRecipe.from_dict(recipe_dict(tmp_path / "data", tmp_path / "run", keep_checkpoints=2))
    summary = train(recipe)

    assert summary["steps"] == 5
    rows = _metrics(tmp_path / "run")
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5]
    for row in rows:
        assert set(LOSS_KEYS) <= set(row) and row["images_per_s"] > 0
        assert all(math.isfinite(row[key]) for key in LOSS_KEYS)
        assert row["loss_cls"] == 0.0
    # Warm-up from 0.1 x lr over 2 steps, then the step schedule (milestones 0.67, 0.89 of 5 steps).
    assert [row["lr"] for row in rows] == pytest.approx([1e-4, 5.5e-4, 1e-3, 1e-4, 1e-5])
    assert [path.name for path in checkpoints.list_checkpoints(tmp_path / "run")] == [
        "checkpoint_00000004.pth",
        "checkpoint_00000005.pth",
    ]
    assert (tmp_path / "run" / "recipe.yaml").is_file()
    assert TrainRecipe.from_yaml(tmp_path / "run" / "recipe.yaml") == recipe

    trained = GLIP.from_pretrained(tmp_path / "run" / "model")
    final = checkpoints.load_checkpoint(tmp_path / "run" / "checkpoint_00000005.pth")
    for name, value in trained.state_dict().items():
        assert torch.equal(value, final["model"][name]), name
    initial = build_model(recipe)
    assert not torch.equal(initial.head.bias0, trained.head.bias0)


def test_exact_resume_after_a_crash(tmp_path: Path) -> None:
    """Steps 1-3, crash, resume from the checkpoint of step 2: the same losses as one run."""
    data = tmp_path / "data"
    # On the CPU: CUDA kernels with atomics (deformable-conv backward) are not bit-reproducible.
    settings = {"max_steps": 6, "device": "cpu", "ema_decay": 0.9}
    train(TrainRecipe.from_dict(recipe_dict(data, tmp_path / "straight", **settings)))

    recipe = TrainRecipe.from_dict(recipe_dict(data, tmp_path / "resumed", **settings))

    def crash(step: int, metrics: dict) -> None:
        if step == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(recipe, callbacks=TrainCallbacks(on_step_end=crash))
    assert checkpoints.latest_checkpoint(tmp_path / "resumed").name == "checkpoint_00000002.pth"
    assert [row["step"] for row in _metrics(tmp_path / "resumed")] == [1, 2, 3]

    with pytest.raises(ValueError, match="already holds checkpoints"):
        train(recipe)
    # What a kill during the step-4 checkpoint write leaves; resuming clears it, and only it.
    run_dir = tmp_path / "resumed"
    (run_dir / ".checkpoint_00000004.pth.0123abcd.tmp").write_bytes(b"\0" * 100)
    (run_dir / ".latest.9_zqk2ab.tmp").write_bytes(b"")
    (run_dir / "notes.tmp").write_text("not ours")
    train(recipe, resume=True)
    assert sorted(path.name for path in run_dir.iterdir() if path.name.endswith(".tmp")) == ["notes.tmp"]
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "straight")
    for folder in ("model", "model_ema"):
        straight = load_file(tmp_path / "straight" / folder / "model.safetensors")
        resumed = load_file(tmp_path / "resumed" / folder / "model.safetensors")
        assert all(torch.equal(straight[name], resumed[name]) for name in straight), folder


def test_progress_shows_from_the_start_of_the_set_up(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    """The bar is there by default and names the set-up phase before the first step (no silence)."""
    recipe = TrainRecipe.from_dict(recipe_dict(tmp_path / "data", tmp_path / "run", max_steps=2, progress_bar=True))
    seen_during_set_up = []
    train(recipe, callbacks=TrainCallbacks(prepare_model=lambda model: seen_during_set_up.append(capfd.readouterr())))
    assert "train: building the model" in seen_during_set_up[0].err
    assert "2/2" in capfd.readouterr().err


def test_resume_without_a_checkpoint_is_an_error(tmp_path: Path) -> None:
    recipe = TrainRecipe.from_dict(recipe_dict(tmp_path / "data", tmp_path / "run"))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(recipe, resume=True)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    recipe = TrainRecipe.from_dict(recipe_dict(tmp_path / "data", tmp_path / "run"))
    calls = {"forward": 0}

    def poison(model: GLIP) -> None:
        def hook(module, inputs, outputs):
            calls["forward"] += 1
            if calls["forward"] == 3:
                outputs.box_regression[0] = outputs.box_regression[0] * math.nan
            return outputs

        model.head.register_forward_hook(hook)

    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 3 \(loss_reg=nan") as error:
        train(recipe, callbacks=TrainCallbacks(on_model_ready=poison))
    assert error.value.step == 3 and math.isnan(error.value.losses["loss_reg"])
    assert error.value.last_checkpoint == tmp_path / "run" / "checkpoint_00000002.pth"
    assert "checkpoint_00000002.pth" in str(error.value)
    assert checkpoints.latest_checkpoint(tmp_path / "run") == error.value.last_checkpoint
    assert [row["step"] for row in _metrics(tmp_path / "run")] == [1, 2]


def test_non_finite_gradient_stops_the_run(tmp_path: Path) -> None:
    recipe = TrainRecipe.from_dict(recipe_dict(tmp_path / "data", tmp_path / "run"))

    def poison(model: GLIP) -> None:
        model.head.bias0.register_hook(lambda gradient: gradient * math.inf)

    message = r"non-finite gradient norm at step 1 \(loss_reg=.*grad_norm=(inf|nan)"
    with pytest.raises(NonFiniteLossError, match=message):
        train(recipe, callbacks=TrainCallbacks(on_model_ready=poison))
    assert checkpoints.latest_checkpoint(tmp_path / "run") is None


def test_cli_entry_trains_resumes_and_reports_errors(tmp_path: Path, monkeypatch) -> None:
    path = write_recipe(tmp_path / "recipe.yaml", recipe_dict(tmp_path / "data", tmp_path / "run", max_steps=1))
    assert train_command(path, ["optimizer.lr=1e-4", "checkpoint_every=1"]) == tmp_path / "run" / "model"
    assert checkpoints.latest_checkpoint(tmp_path / "run").name == "checkpoint_00000001.pth"
    final = train_command(path, ["max_steps=2"], resume=True)
    assert isinstance(final, Path) and final == tmp_path / "run" / "model"
    assert isinstance(GLIP.from_pretrained(final), GLIP)
    assert [row["step"] for row in _metrics(tmp_path / "run")] == [1, 2]
    with pytest.raises(ValueError, match="unknown key optimizer.learning_rate"):
        train_command(path, ["optimizer.learning_rate=1"])
    path = write_recipe(
        tmp_path / "nan.yaml", recipe_dict(tmp_path / "data", tmp_path / "nan", max_steps=1, optimizer={"lr": math.inf})
    )
    with pytest.raises(ValueError, match="optimizer.lr: expected a finite number"):
        train_command(path)

    def diverge(recipe, resume=False):
        raise NonFiniteLossError(3, {"loss_reg": math.nan}, None)

    monkeypatch.setattr("glip.training.loop.train", diverge)
    with pytest.raises(NonFiniteLossError):
        train_command(tmp_path / "recipe.yaml")
    assert loop_main([str(tmp_path / "recipe.yaml")]) == 1  # python -m glip.training.loop: exit status 1


def test_epochs_bf16_ema_freezing_and_checkpointing(tmp_path: Path) -> None:
    recipe = TrainRecipe.from_dict(
        recipe_dict(
            tmp_path / "data",
            tmp_path / "run",
            max_steps=0,
            epochs=1,
            batch_size=4,
            precision="bf16",
            ema_decay=0.5,
            freeze_language=True,
            freeze_backbone_at=2,
            gradient_checkpointing=True,
            schedule={"kind": "cosine", "warmup_steps": 1},
        )
    )
    # One source; images large enough for a P7 map over 1x1: torch's CPU bf16 conv backward reads
    # uninitialised memory for the weight gradient of a 1x1 input (torch 2.14.1).
    recipe = dataclasses.replace(
        recipe, data=dataclasses.replace(recipe.data, sources=recipe.data.sources[:1], min_sizes=(160,), max_size=256)
    )
    assert total_steps(recipe, 6) == 1
    model = build_model(recipe)
    assert not any(parameter.requires_grad for parameter in model.language.parameters())
    assert not any(parameter.requires_grad for parameter in model.backbone.layers[0].parameters())
    assert all(stage.use_checkpoint for stage in model.backbone.layers)

    before = {name: value.clone() for name, value in model.state_dict().items()}
    summary = train(recipe)
    assert summary["steps"] == 1
    trained = load_file(tmp_path / "run" / "model" / "model.safetensors")
    averaged = load_file(tmp_path / "run" / "model_ema" / "model.safetensors")
    name = "head.bias0"
    assert torch.allclose(averaged[name], 0.5 * before[name] + 0.5 * trained[name])
    language = "language.bert.embeddings.word_embeddings.weight"
    assert torch.equal(trained[language], before[language])


def test_fp16_needs_a_gpu(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    recipe = TrainRecipe.from_dict(recipe_dict(tmp_path / "data", tmp_path / "run", precision="fp16"))
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        train(recipe)


# ------------------------------------------------------------------------------------------ SIGKILL

_PAUSING_RUN = """
import sys, time
from pathlib import Path
from glip.training import TrainCallbacks, TrainRecipe, train

marker = Path(sys.argv[2])

def pause(step, metrics):
    if step == int(sys.argv[3]):
        marker.write_text("checkpoint written")
        time.sleep(600)

train(TrainRecipe.from_yaml(sys.argv[1]), callbacks=TrainCallbacks(on_step_end=pause))
"""


def _environment() -> dict[str, str]:
    environment = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    source = str(Path(__file__).resolve().parents[2] / "src")
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [source, environment.get("PYTHONPATH")]))
    return environment


@pytest.mark.slow
def test_resume_after_sigkill_repeats_the_uninterrupted_run(tmp_path: Path) -> None:
    """Kill -9 a run right after its step-2 checkpoint, resume it with the CLI entry: the per-step
    losses in metrics.jsonl equal those of an uninterrupted run bit for bit."""
    data = tmp_path / "data"
    uninterrupted = write_recipe(
        tmp_path / "straight.yaml", recipe_dict(data, tmp_path / "straight", max_steps=6, device="cpu")
    )
    killed = write_recipe(tmp_path / "killed.yaml", recipe_dict(data, tmp_path / "killed", max_steps=6, device="cpu"))
    environment = _environment()
    module = [sys.executable, "-m", "glip.training.loop"]
    subprocess.run([*module, str(uninterrupted)], check=True, env=environment, capture_output=True, timeout=300)

    script = tmp_path / "pausing_run.py"
    script.write_text(_PAUSING_RUN)
    marker = tmp_path / "marker"
    process = subprocess.Popen([sys.executable, str(script), str(killed), str(marker), "2"], env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the run never reached its checkpoint"
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert checkpoints.latest_checkpoint(tmp_path / "killed").name == "checkpoint_00000002.pth"

    result = subprocess.run([*module, str(killed), "--resume"], env=environment, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    assert _losses(tmp_path / "killed") == _losses(tmp_path / "straight")


def test_batches_with_too_many_images_without_boxes_are_skipped() -> None:
    def batch(box_counts: list[int]) -> Batch:
        size = len(box_counts)
        targets = [Target(torch.zeros(count, 4), torch.zeros(count, dtype=torch.int64), torch.zeros(count, 8))
                   for count in box_counts]
        return Batch(
            images=torch.zeros(size, 3, 32, 32),
            image_sizes=[(32, 32)] * size,
            input_ids=torch.zeros(size, 8, dtype=torch.int64),
            attention_mask=torch.ones(size, 8, dtype=torch.int64),
            targets=targets,
            captions=[""] * size,
            image_ids=list(range(size)),
            original_sizes=[(32, 32)] * size,
        )

    assert _skip_reason(None, 0.1) == "no image of the batch could be read"
    assert _skip_reason(batch([1, 2]), 0.1) is None
    assert _skip_reason(batch([0, 2]), 0.1) == "1 of 2 images have no box"
    assert _skip_reason(batch([0, 2]), 0.5) is None
    assert _skip_reason(batch([0, 0]), 1.0) == "2 of 2 images have no box"
