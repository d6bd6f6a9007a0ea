"""Each tuning mode freezes exactly what the official one freezes and trains the rest."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from glip.pipeline import GLIP
from glip.training import RecipeError
from glip.transfer import ClassPrompts, CocoSplit, FinetuneRecipe
from glip.transfer.finetune import finetune
from glip.transfer.modes import LINEAR_PROBE_PARAMETERS, OFFICIAL_MODES, apply_mode
from transfer_fixtures import tiny_model

CLASSES = ["heart", "arrow", "crescent"]


def _trainable(model: GLIP) -> set[str]:
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


def test_linear_probing_trains_exactly_the_last_head_layers() -> None:
    model = tiny_model()
    apply_mode(model, "linear", CLASSES)
    assert _trainable(model) == set(LINEAR_PROBE_PARAMETERS)
    model.train()
    assert not any(getattr(model, part).training for part in ("backbone", "fpn", "language", "tower"))
    assert model.head.training


def test_prompt_tuning_trains_only_the_offsets() -> None:
    model = tiny_model()
    apply_mode(model, "prompt", CLASSES)
    assert _trainable(model) == {"prompt_offset.offset"}
    assert model.prompt_offset is not None and model.prompt_offset.classes == tuple(CLASSES)
    assert model.prompt_offset.offset.shape == (64, 32)  # max_query_len x language width
    model.train()
    assert not any(getattr(model, part).training for part in ("backbone", "fpn", "language", "tower", "head"))


def test_full_tuning_changes_nothing_itself() -> None:
    model = tiny_model()
    before = _trainable(model)
    apply_mode(model, "full", CLASSES)
    assert _trainable(model) == before == {name for name, _ in model.named_parameters()}


def test_unknown_mode_is_named() -> None:
    with pytest.raises(ValueError, match="unknown tuning mode 'probe'; expected one of full, prompt, linear"):
        apply_mode(tiny_model(), "probe", CLASSES)


def _expected_trainable(mode: str, names: set[str]) -> set[str]:
    """Official: full trains all but the Swin patch embedding and first stage (FREEZE_CONV_BODY_AT 2)."""
    if mode == "full":
        return {name for name in names if not name.startswith(("backbone.patch_embed.", "backbone.layers.0."))}
    return set(LINEAR_PROBE_PARAMETERS) if mode == "linear" else {"prompt_offset.offset"}


@pytest.mark.parametrize("mode", ["full", "prompt", "linear"])
def test_a_run_keeps_frozen_weights_bit_identical_and_moves_the_trained_ones(
    mode: str, recipe: FinetuneRecipe, model_dir: Path, train_split: CocoSplit, tmp_path: Path
) -> None:
    """Two optimizer steps: every frozen parameter and every buffer untouched, the trained ones moved."""
    result = finetune(recipe, mode, train_split, tmp_path / "run", shots=1, seed=0)
    assert result.steps == 2 and result.metrics is None and result.train_boxes == {
        "heart": 1, "arrow": 1, "crescent": 1}
    assert not list((tmp_path / "run").glob("checkpoint_*.pth")), "the resumable checkpoint is removed"

    before = load_file(model_dir / "model.safetensors")
    if mode == "prompt":
        # Only the offsets are saved; loading checks that the rest is the starting model, bit for bit.
        assert sorted(path.name for path in result.model_dir.iterdir()) == [
            "prompt_tuning.json", "prompt_tuning.safetensors"]
        assert GLIP.from_pretrained(result.model_dir).prompt_offset.offset.abs().sum() > 0
        return
    after = load_file(result.model_dir / "model.safetensors")
    assert set(after) == set(before), "model.safetensors keeps the architecture's keys"
    parameters = {name for name, _ in GLIP.from_pretrained(model_dir).named_parameters()}
    trained = _expected_trainable(mode, parameters)
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    assert moved == trained, f"frozen tensors changed: {sorted(moved - trained)[:5]}"


def test_recipe_files_and_their_errors(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    shipped = FinetuneRecipe.from_yaml(root / "configs" / "shapes_transfer.yaml", ["max_steps=40"])
    assert shipped.model == "glip_nano" and shipped.max_steps == 40 and shipped.batch_size == 4
    assert shipped.mode_settings("full").train_language is False
    assert shipped.mode_settings("prompt") == OFFICIAL_MODES["prompt"]
    assert OFFICIAL_MODES["prompt"].lr == 0.05 and OFFICIAL_MODES["prompt"].weight_decay == 0.25
    prompts = ClassPrompts.from_file(root / "configs" / "shapes_transfer_prompts.json")
    assert set(prompts.texts) == {"heart", "arrow", "crescent"}

    path = tmp_path / "recipe.yaml"
    for text, message in [
        ("max_step: 3\n", "unknown key max_step"),
        ("modes: {prompt: {lr: fast}}\n", "modes.prompt.lr: expected a number"),
        ("modes: {probe: {lr: 0.1}}\n", "modes.probe: unknown tuning mode"),
        ("modes: {linear: {train_language: true}}\n", "modes.linear.train_language: only full"),
        ("max_steps: 10\nepochs: 2\n", "give exactly one of max_steps or epochs"),
    ]:
        path.write_text(text)
        with pytest.raises(RecipeError, match=message) as error:
            FinetuneRecipe.from_yaml(path)
        assert str(path) in str(error.value)


def test_a_retired_progress_switch_is_warned_about_not_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Progress is always shown now; recipe files that still turn the bar off keep loading."""
    path = tmp_path / "recipe.yaml"
    path.write_text("progress_bar: false\nmax_steps: 7\n")
    with caplog.at_level("WARNING", logger="glip.transfer.recipe"):
        recipe = FinetuneRecipe.from_yaml(path)
    assert recipe.max_steps == 7 and "progress_bar is ignored" in caplog.text and str(path) in caplog.text


def test_full_data_runs_take_their_own_step_budget(
    recipe: FinetuneRecipe, train_split: CocoSplit, tmp_path: Path
) -> None:
    """``full_data_steps`` sets the length of a full-data run and leaves k-shot runs at ``max_steps``."""
    longer = dataclasses.replace(recipe, full_data_steps=3)
    assert finetune(longer, "prompt", train_split, tmp_path / "full", shots=None, seed=0).steps == 3
    assert finetune(longer, "prompt", train_split, tmp_path / "one", shots=1, seed=0).steps == recipe.max_steps
