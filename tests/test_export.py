"""ONNX export (glip.export, ``glip export``): ONNX Runtime on CPU gives the PyTorch detections.

Each model is exported once per module (with free sizes) and run at two image sizes whose Swin
maps need different window padding; detections must match ``GLIP.predict``: same labels and
phrases, scores within 1e-4, boxes within 0.05 px.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime", reason="the onnx extra (pip install 'glip[onnx]') is not installed")

from glip import GLIP  # noqa: E402
from glip.cli import main  # noqa: E402
from glip.config import GLIPConfig  # noqa: E402
from glip.data.shapes_world import SHAPES, render_scene, sample_scene  # noqa: E402
from glip.export import OnnxDetector, export_onnx, read_metadata  # noqa: E402
from glip.processing import default_offline_vocab_dir  # noqa: E402

NANO_CLASSES = list(SHAPES)
TINY_CLASSES = ["person", "cup", "spoon"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def nano() -> GLIP:
    return GLIP.from_pretrained("glip_nano")


@pytest.fixture(scope="module")
def nano_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GLIP-Nano exported through the command line, with free sizes."""
    path = tmp_path_factory.mktemp("nano") / "nano.onnx"
    status = main(["export", "--model", "glip_nano", "--classes", ",".join(NANO_CLASSES), "--dynamic",
                   "--out", str(path)])
    assert status == 0 and path.is_file()
    return path


@pytest.fixture(scope="module")
def nano_detector(nano_onnx: Path) -> OnnxDetector:
    return OnnxDetector(nano_onnx)


@pytest.fixture(scope="module")
def tiny(reference_dir: Path) -> GLIP:
    """The tiny official-format model of tests/reference (Swin, full fusion, random weights)."""
    folder = reference_dir / "glip_tiny_parity"
    return GLIP.from_official(folder / "checkpoint.pth", folder / "config.yaml", folder / "text_config.json",
                              default_offline_vocab_dir())


@pytest.fixture(scope="module")
def tiny_onnx(tiny: GLIP, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(tiny, tmp_path_factory.mktemp("tiny") / "tiny.onnx", classes=TINY_CLASSES, dynamic=True)


@pytest.fixture(scope="module")
def tiny_promptable_onnx(tiny: GLIP, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its language model in the graph (the prompt is an input), and a static
    160x224 input: the size of the 224x300 scene resized to 160 px and padded."""
    path = export_onnx(tiny, tmp_path_factory.mktemp("tiny") / "prompt.onnx", text_inputs=True,
                       input_size=(160, 224))
    # The exporter switches modes back and forth: the model must come back in evaluation mode.
    assert not any(module.training for module in tiny.modules())
    return path


def _scene(height: int, width: int) -> np.ndarray:
    """A Shapes-world test scene resized to ``height x width`` (RGB uint8)."""
    image = Image.fromarray(render_scene(sample_scene(7, "test", 0)))
    return np.asarray(image.resize((width, height), Image.Resampling.BILINEAR))


def assert_same_detections(ours, expected) -> None:
    """The same detections as a set: in score order, but two whose scores differ by less than the
    float noise may come in either order; every one has a counterpart with its label and phrase,
    its score within 1e-4 and its box within 0.05 px."""
    assert len(expected) > 0, "nothing to compare: lower the threshold"
    assert len(ours) == len(expected), (ours, expected)
    assert (ours.scores - expected.scores).abs().max().item() <= 1e-4  # both sorted by score
    same = ((ours.labels[:, None] == expected.labels[None, :])
            & ((ours.scores[:, None] - expected.scores[None, :]).abs() <= 1e-4)
            & ((ours.boxes[:, None, :] - expected.boxes[None, :, :]).abs().amax(-1) <= 0.05))  # [N, N]
    assert bool(same.any(1).all()) and bool(same.any(0).all()), (ours, expected)
    phrase_of = dict(zip(expected.labels.tolist(), expected.phrases))
    assert ours.phrases == [phrase_of[label] for label in ours.labels.tolist()]


# (height, width) of the inputs: landscape and portrait, padded to 224x320 and 320x224 at GLIP-Nano's
# 224 px; the tiny model runs them at 160 px (Swin stage maps 40x56 and 56x40 after padding).
SIZES = [(224, 300), (300, 224)]


@pytest.mark.parametrize("size", SIZES)
def test_nano_onnx_matches_pytorch(nano: GLIP, nano_detector: OnnxDetector, size: tuple[int, int]) -> None:
    image = _scene(*size)
    for threshold in (None, 0.0):  # the model's default threshold, and every detection kept
        assert_same_detections(nano_detector.predict(image, threshold=threshold),
                               nano.predict(image, classes=NANO_CLASSES, threshold=threshold))


@pytest.mark.parametrize("size", SIZES)
def test_tiny_reference_onnx_matches_pytorch(tiny: GLIP, tiny_onnx: Path, size: tuple[int, int]) -> None:
    image = _scene(*size)
    ours = OnnxDetector(tiny_onnx).predict(image, threshold=0.0, min_size=160)
    expected = tiny.predict(image, classes=TINY_CLASSES, threshold=0.0, min_size=160)
    assert len(expected) == 100  # detections_per_image: the whole top list, ranks and all
    assert_same_detections(ours, expected)


@pytest.mark.parametrize(
    "prompt",
    [
        {"classes": TINY_CLASSES},
        {"caption": "a cup of coffee on a saucer", "spans": [(2, 5), (9, 15), (21, 27)]},
        # 100 names of 3 tokens: two chunks, merged as GLIP.predict merges them.
        {"classes": [f"thing {index}" for index in range(100)]},
    ],
)
def test_prompt_input_graph_matches_pytorch(tiny: GLIP, tiny_promptable_onnx: Path, prompt: dict) -> None:
    detector = OnnxDetector(tiny_promptable_onnx)
    image = _scene(224, 300)
    assert_same_detections(detector.predict(image, **prompt, threshold=0.0, min_size=160),
                           tiny.predict(image, **prompt, threshold=0.0, min_size=160))
    if len(prompt.get("classes", [])) == 100:
        assert len(tiny.build_prompts(**prompt)) == 2


def test_baked_prompt_cannot_be_changed(nano_detector: OnnxDetector) -> None:
    with pytest.raises(ValueError, match="holds the prompt"):
        nano_detector.predict(_scene(224, 224), classes=["dog"])


def test_file_holds_what_the_detector_needs(nano: GLIP, nano_onnx: Path, nano_detector: OnnxDetector) -> None:
    metadata = read_metadata(nano_onnx)
    assert metadata["prompt"]["phrases"] == NANO_CLASSES
    assert metadata["default_threshold"] == nano.default_threshold
    assert GLIPConfig.from_dict(metadata["config"]) == nano.config
    assert metadata["graph"]["dynamic"] is True
    assert nano_detector.default_threshold == nano.default_threshold


def test_static_graph_refuses_larger_images(tiny_promptable_onnx: Path) -> None:
    detector = OnnxDetector(tiny_promptable_onnx)
    assert detector.input_size == (160, 224)
    with pytest.raises(ValueError, match="does not fit the 160x224 input"):
        detector.predict(_scene(300, 224), classes=TINY_CLASSES, min_size=160)  # portrait: 224x160 padded


def test_prompt_too_long_for_one_graph(nano: GLIP, tmp_path: Path) -> None:
    classes = [f"object number {index}" for index in range(200)]
    with pytest.raises(ValueError, match="export fewer classes per file"):
        export_onnx(nano, tmp_path / "long.onnx", classes=classes, dynamic=True)
    assert not (tmp_path / "long.onnx").exists()


def test_exporter_failure_names_the_model(nano: GLIP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported(*args, **kwargs):
        raise RuntimeError("Unsupported: ONNX export of operator foo")

    monkeypatch.setattr(torch.onnx, "export", unsupported)
    with pytest.raises(RuntimeError, match=r"cannot export glip_nano \(efficientnet_lite0 backbone.*operator foo"):
        export_onnx(nano, tmp_path / "m.onnx", classes=NANO_CLASSES, source="glip_nano")
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_foreign_onnx_file_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "identity", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save_model(helper.make_model(graph), str(tmp_path / "other.onnx"))
    with pytest.raises(ValueError, match="not written by `glip export`"):
        OnnxDetector(tmp_path / "other.onnx")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--classes", "a", "--caption", "a b"], "exactly one of --classes or --caption"),
        (["--classes", "a", "--text-inputs"], "--text-inputs takes the prompt at run time"),
        (["--classes", "a", "--dtype", "bf16"], "writes an fp32 graph"),
        (["--classes", "a", "--dynamic", "--input-size", "224x224"], "--input-size is for a static graph"),
        (["--classes", "a", "--opset", "16"], "--opset: must be one of 17, 18, 19"),
        (["--classes", "a", "--input-size", "100x224"], "multiples of 32"),
    ],
)
def test_cli_refuses_bad_flags(arguments: list[str], message: str, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.onnx"
    try:
        status = main(["export", "--model", "glip_nano", "--out", str(out), *arguments])
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    assert status == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_cli_wrote_a_loadable_graph(nano_onnx: Path) -> None:
    import onnx

    onnx.checker.check_model(str(nano_onnx))
    opset = {entry.domain: entry.version for entry in onnx.load_model(str(nano_onnx)).opset_import}
    assert opset[""] == 18
    assert json.loads(json.dumps(read_metadata(nano_onnx)))["model"] == "glip_nano"
