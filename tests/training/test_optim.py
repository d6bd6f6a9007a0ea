"""Parameter groups (official ``make_optimizer`` rules), the schedule, and the weight EMA."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from glip.config import GLIPConfig
from glip.hub import loading
from glip.hub.convert import DDP_PREFIX, read_official_checkpoint, rename_official_key
from glip.modeling.glip import GLIPModel
from glip.processing import default_offline_vocab_dir
from glip.training.optim import (
    NORM_LAYERS,
    ModelEma,
    WarmupSchedule,
    build_optimizer,
    build_scheduler,
    parameter_groups,
    resolve_milestones,
)
from glip.training.recipe import OptimizerRecipe, ScheduleRecipe

from training_fixtures import TINY_MODEL


def _tiny_model(**changes: dict) -> GLIPModel:
    config = dict(TINY_MODEL)
    config.update(changes)
    torch.manual_seed(0)
    return GLIPModel(GLIPConfig.from_dict(config))


# ------------------------------------------------------------------------------------------ schedule


def test_step_schedule_with_linear_warmup() -> None:
    schedule = WarmupSchedule("step", max_steps=100, warmup_steps=10, warmup_factor=0.1,
                              milestones=resolve_milestones((0.5, 0.8), 100), gamma=0.1)
    assert schedule.milestones == (50, 80)
    assert schedule(0) == pytest.approx(0.1)
    assert schedule(5) == pytest.approx(0.1 * 0.5 + 0.5)
    assert schedule(10) == schedule(49) == 1.0
    assert schedule(50) == pytest.approx(0.1) and schedule(79) == pytest.approx(0.1)
    assert schedule(80) == pytest.approx(0.01) and schedule(99) == pytest.approx(0.01)


def test_step_schedule_applies_gamma_during_warmup_as_the_official() -> None:
    schedule = WarmupSchedule("step", max_steps=100, warmup_steps=10, warmup_factor=0.5, milestones=(4,), gamma=0.1)
    assert schedule(5) == pytest.approx((0.5 * 0.5 + 0.5) * 0.1)


def test_milestones_fractions_and_absolute_steps() -> None:
    assert resolve_milestones((0.67, 0.89), 30000) == (20100, 26700)
    assert resolve_milestones((100, 200), 1000) == (100, 200)
    with pytest.raises(ValueError, match="must increase"):
        resolve_milestones((0.5, 300), 1000)
    with pytest.raises(ValueError, match="whole step"):
        resolve_milestones((1.5,), 1000)


def test_cosine_schedule_keeps_the_official_denominator() -> None:
    base_lr, min_lr = 1e-3, 1e-5
    schedule = WarmupSchedule("cosine", max_steps=100, warmup_steps=10, warmup_factor=0.1, min_factor=min_lr / base_lr)
    assert schedule(0) == pytest.approx(0.1)
    assert schedule(10) == pytest.approx(1.0)
    floor = min_lr / base_lr
    assert schedule(60) == pytest.approx(floor + (1 - floor) * 0.5)
    # The progress is (step - warmup) / max_steps, so the last step is NOT at the floor.
    assert schedule(99) == pytest.approx(floor + (1 - floor) * (1 + math.cos(math.pi * 89 / 100)) / 2)
    assert schedule(99) > floor + 0.02


def test_scheduler_drives_every_group_and_round_trips_through_weights_only_load() -> None:
    model = _tiny_model()
    optimizer = build_optimizer(model, OptimizerRecipe(lr=1e-3, language_lr=1e-4))
    recipe = ScheduleRecipe(kind="cosine", warmup_steps=2, warmup_factor=0.5, min_lr=1e-6)
    scheduler = build_scheduler(optimizer, recipe, max_steps=10)
    initial = [group["lr"] for group in optimizer.param_groups]
    base = {group["name"]: group["initial_lr"] for group in optimizer.param_groups}
    assert base["base"] == 1e-3 and base["language"] == 1e-4 and base["base.bias"] == 2e-3
    assert initial == pytest.approx([lr * 0.5 for lr in base.values()])
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    restored_optimizer = build_optimizer(_tiny_model(), OptimizerRecipe(lr=1e-3, language_lr=1e-4))
    restored = build_scheduler(restored_optimizer, recipe, max_steps=10)
    restored.load_state_dict(state)
    for _ in range(4):
        optimizer.step()
        scheduler.step()
        restored_optimizer.step()
        restored.step()
        assert restored.get_last_lr() == scheduler.get_last_lr()


# ------------------------------------------------------------------------------------------ groups


def test_groups_follow_the_official_rules() -> None:
    model = _tiny_model()
    groups = parameter_groups(
        model, lr=1e-3, language_lr=1e-5, weight_decay=0.05, backbone_lr_factor=0.1, bias_lr_factor=2.0,
        bias_weight_decay=0.0, norm_weight_decay_factor=0.5,
    )
    by_parameter = {id(parameter): group for group in groups for parameter in group["params"]}
    names = dict(model.named_parameters())
    assert len(by_parameter) == len(names) == sum(len(group["params"]) for group in groups)
    norm_ids = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}
    for name, parameter in names.items():
        group = by_parameter[id(parameter)]
        lr = 1e-5 if name.startswith("language.") else 1e-4 if name.startswith("backbone.") else 1e-3
        decay = 0.05
        if "bias" in name:
            lr, decay = lr * 2.0, 0.0
        if id(parameter) in norm_ids:
            decay *= 0.5
        assert group["lr"] == pytest.approx(lr), name
        assert group["weight_decay"] == pytest.approx(decay), name

    table = "backbone.layers.0.blocks.0.attn.relative_position_bias_table"
    assert by_parameter[id(names[table])]["name"] == "backbone.bias"
    assert by_parameter[id(names["language.bert.embeddings.word_embeddings.weight"])]["name"] == "language"
    # The tower's BERT layers are not the language backbone.
    assert by_parameter[id(names["tower.layers.0.text_layer.intermediate.dense.weight"])]["name"] == "base"
    assert by_parameter[id(names["head.bias0"])]["name"] == "base.bias"
    assert by_parameter[id(names["tower.layers.0.fusion.vision_norm.weight"])]["weight_decay"] == pytest.approx(0.025)


def test_frozen_parameters_are_left_out() -> None:
    model = _tiny_model(
        language={**TINY_MODEL["language"], "freeze": True}, swin={**TINY_MODEL["swin"], "freeze_at": 2}
    )
    grouped = {id(p) for group in parameter_groups(model, lr=1, language_lr=1, weight_decay=0) for p in group["params"]}
    for name, parameter in model.named_parameters():
        frozen = name.startswith(("language.", "backbone.patch_embed.", "backbone.layers.0."))
        assert (id(parameter) in grouped) != frozen, name
    optimizer = build_optimizer(model, OptimizerRecipe())
    assert isinstance(optimizer, torch.optim.AdamW)
    assert all(not group["name"].startswith("language") for group in optimizer.param_groups)


def test_name_rules_agree_with_the_official_names(reference_dir: Path) -> None:
    """Our names select the same parameters as the official substrings would on official names."""
    folder = reference_dir / "glip_tiny_parity"
    official = read_official_checkpoint(folder / "checkpoint.pth")
    config, _ = loading.official_checkpoint_and_config(
        folder / "checkpoint.pth", folder / "config.yaml", folder / "text_config.json", default_offline_vocab_dir()
    )
    model = GLIPModel(config)
    norm_names = {
        f"{module_name}.{name}"
        for module_name, module in model.named_modules()
        if isinstance(module, NORM_LAYERS)
        for name, _ in module.named_parameters(recurse=False)
    }
    parameters = dict(model.named_parameters())
    checked = 0
    for key in official:
        bare = key[len(DDP_PREFIX):]
        ours = rename_official_key(bare, fusion_enabled=True)
        if ours is None or ours not in parameters:
            continue
        checked += 1
        assert ("bias" in bare) == ("bias" in ours), (bare, ours)
        assert ("language_backbone" in bare) == ours.startswith("language."), (bare, ours)
        body = "backbone.body" in bare and "language_backbone.body" not in bare
        assert body == ours.startswith("backbone."), (bare, ours)
        official_norm = "norm" in bare or "Norm" in bare
        if ".dyconv.convs." in ours and ".norm." in ours:
            # DyConv GroupNorms are officially named "bn": only the name rule misses them.
            assert not official_norm and ours in norm_names
        else:
            assert official_norm == (ours in norm_names), (bare, ours)
    assert checked == len(parameters)


# ------------------------------------------------------------------------------------------ EMA


def test_ema_averages_floating_state_and_copies_the_rest() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ModelEma(model, decay=0.9)
    before = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model[1].num_batches_tracked.fill_(7)
    ema.update(model)
    assert torch.allclose(ema.state_dict()["0.weight"], 0.9 * before + 0.1 * (before + 1.0))
    assert ema.state_dict()["1.num_batches_tracked"].item() == 7

    copy = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema.copy_to(copy)
    assert torch.equal(copy[0].weight, ema.state_dict()["0.weight"])
    other = ModelEma(copy, decay=0.9)
    other.load_state_dict(ema.state_dict())
    with pytest.raises(KeyError, match="missing"):
        other.load_state_dict({})
    with pytest.raises(ValueError, match="decay"):
        ModelEma(model, decay=1.0)
