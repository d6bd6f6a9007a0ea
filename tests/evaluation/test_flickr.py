"""Flickr30K Entities (MDETR format): any-box Recall@k, batched captions, the results format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from eval_fixtures import write_mdetr_grounding
from glip.evaluation.flickr import evaluate_flickr
from glip.evaluation.grounding import phrase_hits, read_grounding, recall_metrics
from glip.evaluation.runner import RunOptions


def test_any_box_hits_compare_boxes_as_the_official_evaluator() -> None:
    truth = [[0, 0, 10, 10], [50, 50, 10, 10]]
    assert phrase_hits([[0, 0, 10, 10]], truth, (1,)) == [True]
    assert phrase_hits([[0, 0, 7, 7]], truth, (1,)) == [False]  # IoU 0.49: no +1 on the widths
    assert phrase_hits([[0, 0, 7.1, 7.1]], truth, (1,)) == [True]  # IoU 0.504
    ranked = [[30, 30, 40, 40], [20, 20, 30, 30], [51, 51, 60, 60]]  # the third hits the second box
    assert phrase_hits(ranked, truth, (1, 2, 3, 10)) == [False, False, True, True]
    assert phrase_hits([], truth, (1, 5)) == [False, False]
    results = [{"phrases": [{"boxes": ranked}, {"boxes": []}]}]
    assert recall_metrics(results, [[truth, truth]], (1, 5)) == {"R@1": 0.0, "R@5": 0.5, "phrases": 2, "captions": 1}


def test_flickr_outputs_and_batching(tiny_model, tmp_path: Path) -> None:
    annotations = write_mdetr_grounding(tmp_path / "data")
    out = tmp_path / "out"
    batched = evaluate_flickr(tiny_model, annotations, tmp_path / "data", batch_size=2, min_size=64, max_size=96,
                              out=out, progress=False)
    single = evaluate_flickr(tiny_model, annotations, tmp_path / "data", min_size=64, max_size=96,
                             run=RunOptions(batch_size=1, progress=False))
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"R@1", "R@5", "R@10", "phrases", "captions"} <= set(metrics) and "AP" not in metrics
    assert metrics["phrases"] == 4 and metrics["captions"] == 2  # the caption without phrases is skipped
    assert 0 <= metrics["R@1"] <= metrics["R@5"] <= metrics["R@10"] <= 1
    results = json.loads((out / "results.json").read_text())
    assert [record["original_img_id"] for record in results] == [900, 901]
    phrase = results[0]["phrases"][0]
    assert phrase["phrase"] == "small red car" and phrase["spans"] == [[2, 15]]
    assert len(phrase["boxes"]) == len(phrase["scores"]) <= 10 and phrase["scores"] == sorted(phrase["scores"])[::-1]
    # Images of one size pad alike: two captions per batch give the numbers of one per batch.
    assert batched.metrics == single.metrics
    for ours, theirs in zip(batched.results, single.results):
        for a, b in zip(ours["phrases"], theirs["phrases"]):
            assert torch.allclose(torch.tensor(a["boxes"]), torch.tensor(b["boxes"]), atol=1e-3)
            assert a["scores"] == pytest.approx(b["scores"], abs=1e-5)


def test_bad_grounding_files_are_named(tiny_model, tmp_path: Path) -> None:
    annotations = write_mdetr_grounding(tmp_path)
    data = json.loads(annotations.read_text())
    del data["images"][1]["caption"]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"broken.json: images\[1\] has no 'caption'"):
        read_grounding(broken)
    (tmp_path / "1.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="1.jpg"):
        evaluate_flickr(tiny_model, annotations, tmp_path, out=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_captions_of_one_image_share_its_backbone_pass(tiny_model, tmp_path: Path, monkeypatch) -> None:
    """Shapes-world grounding: 2 captions per image, batched, equal one caption per forward pass."""
    from glip.evaluation.grounding import evaluate_grounding

    annotations = write_mdetr_grounding(tmp_path)
    data = json.loads(annotations.read_text())
    second = {**data["images"][1], "id": 7, "caption": "a ball and two dogs", "tokens_positive_eval": [[[2, 6]]]}
    data["images"].insert(2, second)
    data["annotations"].append({"id": 9, "image_id": 7, "bbox": [5, 5, 30, 30], "tokens_positive": [[2, 6]],
                                "category_id": 1})
    annotations.write_text(json.dumps(data))
    encode_image, encoded = tiny_model.encode_image, []

    def counting(pixels):
        encoded.append(pixels.shape[0])
        return encode_image(pixels)

    monkeypatch.setattr(tiny_model, "encode_image", counting)
    options = dict(ks=(1, 5), min_size=64, max_size=96, progress=False)
    batched = evaluate_grounding(tiny_model, annotations, tmp_path, batch_size=3, **options)
    assert encoded == [2]  # 3 captions, 2 images, one pass
    single = evaluate_grounding(tiny_model, annotations, tmp_path, batch_size=1, **options)
    assert batched == single and batched["phrases"] == 5 and batched["captions"] == 3
