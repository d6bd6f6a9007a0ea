"""Recipe files: parsing, overrides, paths and error messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from glip.training.recipe import RecipeError, TrainRecipe, apply_override

MINIMAL = """
model: glip_t
max_steps: 100
output_dir: out
data:
  sources:
    - {kind: coco, annotations: ann/train.json, images: img}
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_minimal_recipe_takes_official_defaults(tmp_path: Path) -> None:
    recipe = TrainRecipe.from_yaml(_write(tmp_path, MINIMAL))
    assert recipe.model == "glip_t" and recipe.pretrained
    assert recipe.batch_size == 64
    assert recipe.optimizer.lr == 1e-4 and recipe.optimizer.language_lr == 1e-5
    assert recipe.optimizer.weight_decay == 1e-4 and recipe.optimizer.bias_weight_decay == 0.0
    assert recipe.optimizer.bias_lr_factor == 2.0 and recipe.optimizer.clip_grad_norm == 1.0
    assert recipe.schedule.kind == "step" and recipe.schedule.milestones == (0.67, 0.89)
    assert recipe.schedule.warmup_steps == 2000 and recipe.schedule.warmup_factor == 0.001
    assert recipe.data.min_sizes == (480, 560, 640, 720, 800) and recipe.data.max_size == 1333
    assert recipe.ema_decay == 0.0 and recipe.precision == "fp32"


def test_every_relative_path_is_relative_to_the_current_directory(tmp_path: Path, monkeypatch) -> None:
    """One rule for the file and ``--set``: the directory the command runs in, not the file's folder."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "work" / "my_model").mkdir(parents=True)
    path = tmp_path / "configs" / "recipe.yaml"
    path.write_text(MINIMAL.replace("model: glip_t", "model: my_model"))
    monkeypatch.chdir(tmp_path / "work")
    recipe = TrainRecipe.from_yaml(path)
    source = recipe.data.sources[0]
    assert Path(source.annotations) == tmp_path / "work" / "ann" / "train.json"
    assert Path(source.images) == tmp_path / "work" / "img"
    assert Path(recipe.output_dir) == tmp_path / "work" / "out"
    assert Path(recipe.model) == tmp_path / "work" / "my_model"
    # The same value through --set lands in the same place.
    overridden = TrainRecipe.from_yaml(path, ["output_dir=out", "data.sources.0.images=img", "model=glip_t"])
    assert (overridden.output_dir, overridden.data.sources[0].images) == (recipe.output_dir, source.images)
    assert overridden.model == "glip_t"  # a preset name, not a folder here
    monkeypatch.setenv("HOME", str(tmp_path / "work"))
    assert TrainRecipe.from_yaml(path, ["model=~/my_model"]).model == str(tmp_path / "work" / "my_model")
    # Absolute paths are kept; the saved recipe (all absolute) reads the same from anywhere.
    monkeypatch.chdir(tmp_path)
    saved = tmp_path / "saved.yaml"
    saved.write_text(recipe.to_yaml())
    assert TrainRecipe.from_yaml(saved) == recipe


def test_overrides_parse_yaml_values_and_paths_relative_to_cwd(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = _write(tmp_path, MINIMAL)
    recipe = TrainRecipe.from_yaml(
        path,
        [
            "optimizer.lr=1e-5",  # YAML 1.1 reads this as a string; accepted for a float field
            "schedule.milestones=[0.5, 0.75]",
            "schedule.kind=cosine",
            "ema_decay=0.999",
            "data.sources.0.weight=3",
            "data.min_sizes=[800]",
            "freeze_language=true",
            "output_dir=elsewhere/run",
        ],
    )
    assert recipe.optimizer.lr == 1e-5
    assert recipe.schedule.milestones == (0.5, 0.75) and recipe.schedule.kind == "cosine"
    assert recipe.ema_decay == 0.999 and recipe.freeze_language is True
    assert recipe.data.sources[0].weight == 3.0 and recipe.data.min_sizes == (800,)
    assert Path(recipe.output_dir) == tmp_path / "elsewhere" / "run"


def test_round_trip_through_dict_and_yaml(tmp_path: Path) -> None:
    recipe = TrainRecipe.from_yaml(_write(tmp_path, MINIMAL), ["model_overrides={fpn: {drop_block_prob: 0.0}}"])
    assert TrainRecipe.from_dict(recipe.to_dict()) == recipe
    assert TrainRecipe.from_dict(yaml.safe_load(recipe.to_yaml())) == recipe
    assert recipe.model_overrides == {"fpn": {"drop_block_prob": 0.0}}


def test_model_can_be_a_config_mapping(tmp_path: Path) -> None:
    text = MINIMAL.replace("model: glip_t", "model: {fpn: {out_channels: 32}}")
    recipe = TrainRecipe.from_yaml(_write(tmp_path, text))
    assert recipe.model == {"fpn": {"out_channels": 32}}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.learning_rate=0.1", "unknown key optimizer.learning_rate"),
        ("data.sources.0.format=coco", "unknown key data.sources.0.format"),
        ("batch_size=two", "batch_size: expected an integer, got 'two'"),
        ("batch_size=2.5", "batch_size: expected an integer"),
        ("optimizer.lr=fast", "optimizer.lr: expected a number, got 'fast'"),
        ("precision=fp8", "precision: expected one of ['fp32', 'bf16', 'fp16']"),
        ("data.sources.0.kind=voc", "data.sources.0.kind: expected one of ['coco', 'grounding', 'odvg']"),
        ("schedule.milestones=0.5", "schedule.milestones: expected a list"),
        ("optimizer.betas=[0.9]", "optimizer.betas: expected a list of 2 values"),
        ("freeze_language=yes please", "freeze_language: expected true or false"),
        ("epochs=3", "give exactly one of max_steps or epochs"),
        ("batch_size=0", "batch_size must be >= 1"),
        ("schedule.milestones=[0.9, 0.5]", "milestones must be positive and increasing"),
        ("data.sources=[]", "data.sources is empty"),
        ("data.flip_prob=2", "data.flip_prob must be in [0, 1]"),
    ],
)
def test_errors_name_the_file_and_key(tmp_path: Path, override: str, message: str) -> None:
    path = _write(tmp_path, MINIMAL)
    with pytest.raises(RecipeError) as error:
        TrainRecipe.from_yaml(path, [override])
    assert message in str(error.value)
    assert str(path) in str(error.value)


def test_unknown_top_level_key_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"unknown key max_iter; known keys of recipe: \[.*'max_steps'"):
        TrainRecipe.from_yaml(_write(tmp_path, MINIMAL + "max_iter: 3\n"))


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="cannot read recipe"):
        TrainRecipe.from_yaml(tmp_path / "missing.yaml")
    with pytest.raises(RecipeError, match="invalid YAML"):
        TrainRecipe.from_yaml(_write(tmp_path, "data: [unclosed\n"))
    with pytest.raises(RecipeError, match="a recipe is a mapping"):
        TrainRecipe.from_yaml(_write(tmp_path, "- 1\n- 2\n"))


def test_malformed_overrides() -> None:
    with pytest.raises(RecipeError, match="expected key=value"):
        apply_override({}, "optimizer.lr")
    with pytest.raises(RecipeError, match="empty key"):
        apply_override({}, "optimizer..lr=1")
    with pytest.raises(RecipeError, match="not an index"):
        apply_override({"data": {"sources": [{}]}}, "data.sources.3.weight=1")


def test_shipped_recipe_reads_the_folders_its_commands_write(monkeypatch) -> None:
    """configs/glip_nano_shapes.yaml, run from the repository root as its header and the README say,
    trains on what ``glip synth --out data/shapes_train`` writes and saves to ``runs/glip_nano``."""
    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)
    recipe = TrainRecipe.from_yaml(Path("configs/glip_nano_shapes.yaml"))
    assert Path(recipe.output_dir) == root / "runs" / "glip_nano"
    assert {Path(source.images) for source in recipe.data.sources} == {root / "data" / "shapes_train" / "images"}
    assert {Path(source.annotations).parent for source in recipe.data.sources} == {root / "data" / "shapes_train"}


def test_ignore_objects_from_is_a_path_of_coco_sources_only(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = MINIMAL.replace("images: img}", "images: img, ignore_objects_from: ann/all.json}")
    source = TrainRecipe.from_yaml(_write(tmp_path, text)).data.sources[0]
    assert Path(source.ignore_objects_from) == tmp_path / "ann" / "all.json"
    with pytest.raises(RecipeError, match=r"data.sources.0.ignore_objects_from is only read for kind coco"):
        TrainRecipe.from_yaml(_write(tmp_path, text.replace("kind: coco", "kind: grounding")))
