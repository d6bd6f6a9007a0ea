"""What every evaluation entry point shares: the model's test size by default, the output folder
checked before inference, one runner."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from eval_fixtures import write_coco, write_lvis_many_categories, write_mdetr_grounding, write_odinw_root
from glip.data.shapes_world import synthesize
from glip.evaluation.coco import evaluate_coco, evaluate_detection
from glip.evaluation.flickr import evaluate_flickr
from glip.evaluation.lvis import evaluate_lvis
from glip.evaluation.odinw import evaluate_odinw
from glip.evaluation.protocol import resolve_test_size
from glip.evaluation.runner import RunOptions
from glip.evaluation.shapes import evaluate_shapes_world

# A model whose config says "test at 64 px" (GLIP-Nano says 224); uncapped, so the official 1333/800
# ratio caps the longer side at round(64 * 1333 / 800) = 107.
MODEL_SIZE, MODEL_CAP = 64, 107


@pytest.fixture
def small_model(tiny_model, monkeypatch):
    """The tiny model with a 64 px test size in its config; records the sizes it is asked to resize to."""
    config = tiny_model.config
    monkeypatch.setattr(tiny_model, "config",
                        dataclasses.replace(config, input=dataclasses.replace(config.input, min_size_test=MODEL_SIZE)))
    preprocess, sizes = tiny_model.preprocess, []

    def recording(images, min_size=None, max_size=None):
        sizes.append((min_size, max_size))
        return preprocess(images, min_size, max_size)

    monkeypatch.setattr(tiny_model, "preprocess", recording)
    tiny_model.asked_sizes = sizes
    yield tiny_model
    del tiny_model.asked_sizes


def _entry_points(tmp_path: Path) -> dict:
    """Each evaluation entry point, called without sizes, on tiny data."""
    coco, images = write_coco(tmp_path / "coco", ["cat", "dog"], num_images=2)
    lvis = write_lvis_many_categories(tmp_path / "lvis", num_images=2)
    flickr = write_mdetr_grounding(tmp_path / "flickr")
    root = write_odinw_root(tmp_path / "odinw")
    return {
        "coco": lambda model, out: evaluate_coco(model, coco, images, batch_size=2, out=out, progress=False),
        "lvis": lambda model, out: evaluate_lvis(model, lvis, tmp_path / "lvis", batch_size=2, max_detections=5,
                                                 out=out, progress=False),
        "flickr": lambda model, out: evaluate_flickr(model, flickr, tmp_path / "flickr", batch_size=2, out=out,
                                                     progress=False),
        "odinw": lambda model, out: evaluate_odinw(model, root, out, datasets=["pothole"], batch_size=2,
                                                   progress=False),
    }


def test_resolve_test_size() -> None:
    class Model:
        config = dataclasses.make_dataclass("C", [("input", object)])(
            dataclasses.make_dataclass("I", [("min_size_test", int), ("max_size_test", int)])(800, 0))

    assert resolve_test_size(Model()) == (800, 1333)  # an official model: the official evaluation's sizes
    assert resolve_test_size(Model(), 224) == (224, 373)
    assert resolve_test_size(Model(), 512, 600) == (512, 600)
    Model.config.input.max_size_test = 1000
    assert resolve_test_size(Model(), 224) == (224, 1000)


@pytest.mark.parametrize("protocol", ["coco", "lvis", "flickr", "odinw"])
def test_every_entry_point_defaults_to_the_models_test_size(protocol: str, small_model, tmp_path: Path) -> None:
    run = _entry_points(tmp_path)[protocol]
    out = tmp_path / "out"
    run(small_model, out)
    assert small_model.asked_sizes and set(small_model.asked_sizes) == {(MODEL_SIZE, MODEL_CAP)}
    metrics = json.loads((out / ("pothole" if protocol == "odinw" else "") / "metrics.json").read_text())
    assert (metrics["min_size"], metrics["max_size"]) == (MODEL_SIZE, MODEL_CAP)


def test_shapes_defaults_to_the_models_test_size(small_model, tmp_path: Path) -> None:
    split = synthesize(tmp_path / "split", 2, seed=5, split="test", show_progress=False)
    report = evaluate_shapes_world(small_model, split["images"].parent, batch_size=4, out=tmp_path / "out",
                                   progress=False)
    assert set(small_model.asked_sizes) == {(MODEL_SIZE, MODEL_CAP)}
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["detection_AP"] == report["detection_AP"]


def test_the_fingerprint_holds_the_resolved_sizes(small_model, tmp_path: Path) -> None:
    """A run with the default sizes and one that names the same sizes are the same run (resume
    finds it finished); other sizes are another run."""
    annotations, images = write_coco(tmp_path, ["cat", "dog"], num_images=3)
    out = tmp_path / "out"
    first = evaluate_detection(small_model, annotations, images, run=RunOptions(2, out, progress=False))
    small_model.asked_sizes.clear()
    again = evaluate_detection(small_model, annotations, images, min_size=MODEL_SIZE, max_size=MODEL_CAP,
                               run=RunOptions(2, out, resume=True, progress=False))
    assert small_model.asked_sizes == [] and again.metrics == first.metrics
    evaluate_detection(small_model, annotations, images, min_size=MODEL_SIZE, max_size=96,
                       run=RunOptions(2, out, resume=True, progress=False))
    assert set(small_model.asked_sizes) == {(MODEL_SIZE, 96)}


@pytest.mark.parametrize("protocol", ["coco", "lvis", "flickr", "odinw", "shapes"])
def test_an_unwritable_output_folder_fails_before_inference(protocol: str, tiny_model, tmp_path: Path,
                                                            monkeypatch) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "out"
    entry_points = _entry_points(tmp_path)
    entry_points["shapes"] = lambda model, out: evaluate_shapes_world(model, tmp_path / "missing", out=out)
    monkeypatch.setattr(tiny_model, "preprocess", lambda *args: pytest.fail("inference ran"))
    with pytest.raises(ValueError, match=r"output folder .*a_file/out cannot be written"):
        entry_points[protocol](tiny_model, out)


@pytest.mark.parametrize("protocol", ["coco", "lvis", "flickr"])
def test_protocols_use_per_label_nms_whatever_the_models_default(protocol: str, tiny_model, tmp_path: Path,
                                                                  monkeypatch) -> None:
    # GLIP-Nano's config asks for class-agnostic NMS (one label per object in pictures); the
    # protocols must still rank every label's boxes, as the official evaluation does.
    config = tiny_model.config
    agnostic = dataclasses.replace(config, postprocess=dataclasses.replace(config.postprocess, class_agnostic_nms=True))
    monkeypatch.setattr(tiny_model, "config", agnostic)
    monkeypatch.setattr(tiny_model.processor, "config", agnostic)
    import glip.modeling.postprocess as postprocess

    built = []
    original = postprocess.GroundingPostProcessor.__init__

    def recording(self, *args, **kwargs):
        original(self, *args, **kwargs)
        built.append(self.class_agnostic_nms)

    monkeypatch.setattr(postprocess.GroundingPostProcessor, "__init__", recording)
    _entry_points(tmp_path)[protocol](tiny_model, tmp_path / "out")
    assert built and not any(built)
