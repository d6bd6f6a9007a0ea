"""Descriptive prompts: read from a file, used as the class list, labels mapped back to category ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from glip.pipeline import GLIP
from glip.transfer import ClassPrompts, CocoSplit, FinetuneRecipe
from glip.transfer.data import training_file
from glip.transfer.evaluate import evaluate_split, summary_metrics
from glip.transfer.prompts import class_texts, label_to_category
from transfer_fixtures import CATEGORIES, PROMPTS, coco_dict


def _prompts(tmp_path: Path, texts: object) -> ClassPrompts:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(texts))
    return ClassPrompts.from_file(path)


def test_texts_in_id_order_and_labels_back_to_ids(tmp_path: Path) -> None:
    prompts = _prompts(tmp_path, PROMPTS)
    texts = class_texts(CATEGORIES, prompts, "train.json")
    # Categories are listed 7, 1, 3: label i is the i-th in id order (heart=1, arrow=3, crescent=7).
    assert texts == [PROMPTS["heart"], "arrow", PROMPTS["crescent"]]
    assert label_to_category(CATEGORIES) == {1: 1, 2: 3, 3: 7}
    assert class_texts(CATEGORIES, None, "train.json") == ["heart", "arrow", "crescent"]


def test_training_file_names_categories_by_their_prompt_text(tmp_path: Path) -> None:
    data = coco_dict(6)
    texts = class_texts(CATEGORIES, _prompts(tmp_path, PROMPTS), "train.json")
    written = training_file(data, texts)
    assert [(c["id"], c["name"]) for c in written["categories"]] == [
        (1, PROMPTS["heart"]), (3, "arrow"), (7, PROMPTS["crescent"])]
    assert written["annotations"] == data["annotations"]


def test_evaluation_results_carry_the_category_ids(model_dir: Path, test_split: CocoSplit, tmp_path: Path) -> None:
    """Predictions for prompt texts are reported under the data set's category ids."""
    model = GLIP.from_pretrained(model_dir)
    recipe = FinetuneRecipe(model=str(model_dir), eval_batch_size=2, num_threads=1)
    evaluation = evaluate_split(model, test_split, _prompts(tmp_path, PROMPTS), recipe)
    assert set(evaluation.per_category_ap) == {"heart", "arrow", "crescent"}
    assert evaluation.results and {result["category_id"] for result in evaluation.results} == {1, 3, 7}
    assert set(summary_metrics(evaluation)) >= {"AP", "AP50", "per_category_AP"}


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        ({"stingray": "stingray, flat and round"}, "class 'stingray' is not a category of train.json"),
        ({"heart": "arrow"}, "would share the prompt text 'arrow'"),
    ],
)
def test_prompt_file_errors_name_the_class(tmp_path: Path, texts: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        class_texts(CATEGORIES, _prompts(tmp_path, texts), "train.json")


def test_bad_prompt_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cannot read prompt file .*missing.json"):
        ClassPrompts.from_file(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json: malformed JSON"):
        ClassPrompts.from_file(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="prompt of class 'heart' must be a non-empty string"):
        _prompts(tmp_path, {"heart": ""})
    with pytest.raises(ValueError, match="expected a non-empty JSON object"):
        _prompts(tmp_path, ["heart"])
    with pytest.raises(ValueError, match="prompt of class 'heart' contains"):
        _prompts(tmp_path, {"heart": "heart (the shape)"})
    with pytest.raises(ValueError, match="fine-tuning takes whole prompt texts only"):
        _prompts(tmp_path, {"heart": {"prefix": "a ", "name": "heart", "suffix": ""}})
