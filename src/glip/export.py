"""ONNX export of a model for one prompt, and :class:`OnnxDetector`, which runs it with ONNX Runtime.

The text side of GLIP is constant for a fixed prompt, so the prompt's BERT features are computed
once and stored in the graph as constants; the graph holds the image backbone, FPN, fusion tower
and head, the box decoding and the phrase scoring. What stays in Python (:class:`OnnxDetector`)
is what the package already does around the network: loading, resizing and normalising the image
(:mod:`glip.processing`), and picking candidates, NMS and rescaling (:mod:`glip.modeling.postprocess`),
so that ``OnnxDetector(path).predict(image)`` returns the :class:`Detections` of ``GLIP.predict``.

The graph (input and outputs, ``N`` = anchors over all levels P3..P7, row-major per level):

* ``pixels`` ``[B, 3, H, W]`` float32: the network input of :func:`glip.processing.preprocess_images`,
  i.e. the image resized, in BGR order on the 0-255 scale, minus ``pixel_mean``, divided by
  ``pixel_std``, zero-padded at the bottom/right to a multiple of 32. ``H`` and ``W`` are free with
  ``dynamic=True`` (multiples of 32), else fixed to the exported size.
* ``boxes`` ``[B, N, 4]``: decoded xyxy boxes in input pixels (legacy inclusive ends), not clipped.
* ``scores`` ``[B, N, K]``: probability of each of the prompt's K phrases per anchor (the mean, or
  max, of its tokens' sigmoids), before centerness.
* ``centerness`` ``[B, N]``: sigmoid of the centerness logit.
* ``levels`` ``[N]`` int64: the pyramid level (0 = P3) of each anchor.

With ``text_inputs=True`` the language model is in the graph as well and the prompt is an input:
``input_ids`` and ``attention_mask`` ``[B, T]`` (``T`` = the model's ``max_query_len``) and
``phrase_weights`` ``[K, T]`` (:func:`phrase_weights`), any K; the file then carries the tokenizer's
vocabulary, and ``OnnxDetector.predict(image, classes=...)`` takes any prompt.

A detection's score is ``sqrt(scores * centerness)``. Everything :class:`OnnxDetector` needs (the
model config, phrases and label ids, threshold, graph sizes) is stored as JSON in the file's
``metadata_props`` under :data:`METADATA_KEY`, so the ``.onnx`` file is all it needs.
"""

from __future__ import annotations

import io
import json
import logging
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glip.config import GLIPConfig
from glip.files import write_atomic
from glip.modeling.anchors import grid_anchors
from glip.modeling.language import TextFeatures
from glip.modeling.postprocess import (
    Detections,
    GroundingPostProcessor,
    PhraseTokens,
    _box_sides,
    _clip_boxes,
    _not_empty,
    rescale_detections,
)
from glip.processing import GLIPProcessor, ImageInput, Prompt, load_tokenizer

logger = logging.getLogger(__name__)

# metadata_props key of the JSON that OnnxDetector reads; FORMAT_VERSION changes with its layout.
METADATA_KEY = "glip"
FORMAT_VERSION = 1
INPUT_NAME = "pixels"
# The inputs a graph exported with text_inputs=True takes besides the pixels.
TEXT_INPUT_NAMES = ("input_ids", "attention_mask", "phrase_weights")
OUTPUT_NAMES = ("boxes", "scores", "centerness", "levels")
# Opset 16 brings GridSample (the deformable convs), 17 LayerNormalization; 20 renames
# GridSample's modes, which the TorchScript exporter used here does not write.
MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 17, 19, 18
# The example size the graph is traced at with dynamic=True. The tracer records the branches the
# example takes, so it must take the general ones at every stage: Swin maps (H/4 .. H/32 = 80 .. 10
# and 104 .. 13) that need window padding, and P6 larger than P7 (5 x 7 vs 3 x 4).
DYNAMIC_EXAMPLE_SIZE = (320, 416)
INSTALL_HINT = "pip install 'glip[onnx]'"


def per_anchor_outputs(
    model: nn.Module,
    postprocessor: GroundingPostProcessor,
    pixels: Tensor,
    text: TextFeatures,
    phrase_scores: Callable[[Tensor], Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """What both graphs compute once the text features are known.

    Args:
        pixels: ``[B, 3, H, W]`` network input; text: ``[B, T, D]`` features.
        phrase_scores: ``[B, HW, T]`` token logits of a level -> ``[B, HW, K]`` phrase probabilities.

    Returns:
        boxes ``[B, N, 4]``, scores ``[B, N, K]``, centerness ``[B, N]``, levels ``[N]``.
    """
    batch = pixels.shape[0]
    outputs = model.fuse_and_predict(model.encode_image(pixels), text)
    generator = model.anchor_generator
    boxes, scores, centerness, levels = [], [], [], []
    for level, (regression, level_centerness, logits) in enumerate(
        zip(outputs.box_regression, outputs.centerness, outputs.dot_product_logits)
    ):
        height, width = regression.shape[-2:]
        # grid_anchors, not the generator's cache: the cache keys on Python ints, which would
        # freeze the traced sizes.
        anchors = grid_anchors(generator.sizes[level], generator.strides[level], height, width, pixels.device)
        deltas = regression.reshape(batch, 4, -1).permute(0, 2, 1)  # [B, 4, H, W] -> [B, HW, 4]
        boxes.append(postprocessor.box_coder.decode(deltas, anchors))
        scores.append(phrase_scores(logits))
        centerness.append(level_centerness.reshape(batch, -1).sigmoid())  # [B, 1, H, W] -> [B, HW]
        # Built from a traced tensor so that its length follows the input size.
        levels.append(torch.zeros_like(anchors[:, 0], dtype=torch.int64) + level)
    return torch.cat(boxes, 1), torch.cat(scores, 1), torch.cat(centerness, 1), torch.cat(levels)


class DetectionGraph(nn.Module):
    """The exported function of one prompt: padded images to per-anchor boxes and phrase scores.

    Args:
        model: the GLIP model (kept in evaluation mode).
        text: the prompt's encoded features, ``[1, T, D]`` (``GLIP.encode_prompt(...).text``).
        tokens: the token positions of the prompt's K phrases.
        postprocessor: its box coder and score aggregation are used.
    """

    def __init__(self, model: nn.Module, text: TextFeatures, tokens: PhraseTokens,
                 postprocessor: GroundingPostProcessor) -> None:
        super().__init__()
        self.model = model
        self.text = text
        self.tokens = tokens
        self.postprocessor = postprocessor

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``[B, 3, H, W]`` -> see :func:`per_anchor_outputs`."""
        batch = pixels.shape[0]
        # [1, T, D] -> [B, T, D]: the same prompt for every image.
        text = TextFeatures(self.text.hidden.expand(batch, -1, -1), self.text.embedded.expand(batch, -1, -1),
                            self.text.mask.expand(batch, -1))
        return per_anchor_outputs(self.model, self.postprocessor, pixels, text,
                                  lambda logits: self.postprocessor.phrase_scores(logits, self.tokens))


class PromptableDetectionGraph(nn.Module):
    """The exported function with the prompt as input: the language model is in the graph too.

    Args:
        model: the GLIP model (kept in evaluation mode).
        postprocessor: its box coder is used (phrase scores are means: MAX aggregation is refused).
    """

    def __init__(self, model: nn.Module, postprocessor: GroundingPostProcessor) -> None:
        super().__init__()
        self.model = model
        self.postprocessor = postprocessor

    def forward(self, pixels: Tensor, input_ids: Tensor, attention_mask: Tensor,
                phrase_weights: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """
        Args:
            pixels: ``[B, 3, H, W]``; input_ids, attention_mask: ``[B, T]`` (T = max_query_len).
            phrase_weights: ``[K, T]``, row k ``1 / n_k`` on the n_k tokens of phrase k (:func:`phrase_weights`).
        """
        text = self.model.encode_text(input_ids, attention_mask)
        # The mean of a phrase's token probabilities as a product: [B, HW, T] @ [T, K] -> [B, HW, K].
        return per_anchor_outputs(self.model, self.postprocessor, pixels, text,
                                  lambda logits: torch.matmul(logits.float().sigmoid(), phrase_weights.t()))


def phrase_weights(prompt: Prompt) -> Tensor:
    """``[K, T]`` float32: row k holds ``1 / n_k`` on the ``n_k`` tokens of phrase k (zeros for a phrase
    without tokens, whose score is then 0 as in :meth:`GroundingPostProcessor.phrase_scores`)."""
    members = (prompt.positive_map > 0).float()
    return members / members.sum(1, keepdim=True).clamp(min=1)


def export_onnx(
    model: Any,
    path: str | Path,
    classes: str | Sequence[str] | None = None,
    caption: str | None = None,
    spans: Sequence[tuple[int, int] | Sequence[tuple[int, int]]] | None = None,
    *,
    text_inputs: bool = False,
    dynamic: bool = False,
    opset: int = DEFAULT_OPSET,
    input_size: tuple[int, int] | None = None,
    source: str | None = None,
) -> Path:
    """Write an ONNX graph of ``model`` (see the module docstring), atomically.

    Args:
        model: a :class:`glip.GLIP`.
        path: the ``.onnx`` file to write.
        classes, caption, spans: the prompt baked into the graph, as ``GLIP.predict`` takes it; it
            must fit one prompt (``max_query_len`` tokens). None with ``text_inputs``.
        text_inputs: put the language model in the graph and take the prompt at run time
            (inputs ``input_ids``, ``attention_mask`` ``[B, T]`` and ``phrase_weights`` ``[K, T]``).
        dynamic: free batch size, height and width; else ``[1, 3, *input_size]``.
        opset: ONNX opset, 17 to 19.
        input_size: ``(H, W)`` of a static graph, multiples of 32 (default: the padded square of
            the model's longest resized side, which any image fits). Ignored with ``dynamic``.
        source: how the model is named in the metadata and in errors (default: its class).

    Raises:
        ValueError: a prompt that needs several chunks (or any prompt with ``text_inputs``), a bad
            opset or input size, a model off the CPU.
        RuntimeError: the exporter failed (the message names the model and the part).
    """
    source = source or type(model).__name__
    if model.device.type != "cpu":
        # The deformable convs take their grid_sample path (which ONNX has) on the CPU only.
        raise ValueError(f"export {source} from the CPU (it is on {model.device}): model.to('cpu') first")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be between {MIN_OPSET} and {MAX_OPSET}, got {opset}")
    onnx = _import_onnx("onnx")
    postprocessor = model.postprocessor()
    if text_inputs:
        graph, text_example, prompt = _promptable_graph(model, postprocessor, classes, caption, source)
    else:
        graph, text_example, prompt = _prompt_graph(model, postprocessor, classes, caption, spans)
    # Evaluation mode for the trace, and to come back to: the exporter restores the wrapper's mode
    # afterwards, which a wrapper left in training mode would pass on to the model.
    graph.eval()
    options = model.inference_defaults
    divisibility = max(model.config.input.size_divisibility, 1)
    height, width = DYNAMIC_EXAMPLE_SIZE if dynamic else _static_size(input_size, options.max_size or options.min_size,
                                                                       divisibility)
    inputs = (INPUT_NAME, *(TEXT_INPUT_NAMES if text_inputs else ()))
    proto = _trace(graph, (torch.zeros(1, 3, height, width), *text_example), inputs,
                   _dynamic_axes(dynamic, text_inputs), opset, source, model.config)
    metadata = {
        "format_version": FORMAT_VERSION,
        "model": source,
        "config": model.config.to_dict(),
        "default_threshold": model.default_threshold,
        "prompt": prompt,
        "graph": {"dynamic": dynamic, "height": None if dynamic else height, "width": None if dynamic else width,
                  "opset": opset, "inputs": list(inputs), "outputs": list(OUTPUT_NAMES), "text_inputs": text_inputs},
    }
    if text_inputs:
        # The tokenizer travels with the graph: OnnxDetector needs nothing but the file.
        with tempfile.TemporaryDirectory() as scratch:
            metadata["tokenizer_vocab"] = Path(model.tokenizer.save_vocabulary(scratch)[0]).read_text(encoding="utf-8")
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    path = Path(path)
    write_atomic(path, lambda temporary: onnx.save_model(proto, str(temporary)))
    logger.info("wrote %s (%s, %s, %s input)", path, source, "prompt input" if text_inputs else
                f"{len(prompt['phrases'])} phrases", "dynamic" if dynamic else f"{height}x{width}")
    return path


def _prompt_graph(model: Any, postprocessor: GroundingPostProcessor, classes, caption, spans):
    """The graph of one prompt, no extra example inputs, and the prompt's metadata."""
    prompts = model.build_prompts(classes, caption, spans)
    if len(prompts) != 1:
        raise ValueError(f"the prompt needs {len(prompts)} chunks of at most {model.config.language.max_query_len} "
                         "tokens; an exported graph holds one: export fewer classes per file, or take the prompt "
                         "as input (text_inputs=True, glip export --text-inputs)")
    encoded = model.encode_prompt(prompts[0])
    tokens = PhraseTokens.from_positive_map(encoded.prompt.positive_map, encoded.prompt.label_ids,
                                            encoded.prompt.phrases, device="cpu")
    text = TextFeatures(*(tensor.detach().cpu() for tensor in (encoded.text.hidden, encoded.text.embedded,
                                                                encoded.text.mask)))
    prompt = {"caption": encoded.prompt.caption, "phrases": list(encoded.prompt.phrases),
              "label_ids": [int(label) for label in encoded.prompt.label_ids]}
    return DetectionGraph(model, text, tokens, postprocessor), (), prompt


def _promptable_graph(model: Any, postprocessor: GroundingPostProcessor, classes, caption, source: str):
    """The graph with the language model, example text inputs, and no prompt metadata."""
    if classes is not None or caption is not None:
        raise ValueError("a graph with text inputs takes its prompt at run time: leave out classes and caption")
    if postprocessor.score_aggregation != "MEAN":
        raise ValueError(f"{source} scores phrases by their tokens' {postprocessor.score_aggregation}: only MEAN "
                         "can be exported with text inputs (export one prompt instead)")
    # Two phrases, so that nothing in the trace is special to one.
    example = model.build_prompts(classes=["object", "thing"])[0]
    tokens = model.processor.tokenize(example)
    return PromptableDetectionGraph(model, postprocessor), (tokens.input_ids, tokens.attention_mask,
                                                           phrase_weights(example)), None


def _dynamic_axes(dynamic: bool, text_inputs: bool) -> dict[str, dict[int, str]] | None:
    """Free batch size and image size with ``dynamic``; a free phrase count with ``text_inputs``."""
    axes: dict[str, dict[int, str]] = {}
    if dynamic:
        axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, "boxes": {0: "batch", 1: "anchors"},
                "scores": {0: "batch", 1: "anchors"}, "centerness": {0: "batch", 1: "anchors"},
                "levels": {0: "anchors"}}
        if text_inputs:
            axes.update({"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}})
    if text_inputs:
        axes["phrase_weights"] = {0: "phrases"}
        axes.setdefault("scores", {})[2] = "phrases"
    return axes or None


def _static_size(input_size: tuple[int, int] | None, longest: int, divisibility: int) -> tuple[int, int]:
    if input_size is None:
        side = -(-longest // divisibility) * divisibility
        return side, side
    height, width = input_size
    if height <= 0 or width <= 0 or height % divisibility or width % divisibility:
        raise ValueError(f"input_size must be positive multiples of {divisibility}, got {height}x{width}")
    return int(height), int(width)


def _trace(graph: nn.Module, example: tuple[Tensor, ...], inputs: Sequence[str], axes: dict | None, opset: int,
           source: str, config: GLIPConfig):
    """The ONNX ModelProto of ``graph`` traced at ``example``; exporter errors name the model."""
    onnx = _import_onnx("onnx")
    buffer = io.BytesIO()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter (dynamo=False): torch.export of this graph with free sizes did
            # not finish in 10 minutes here. Its tracer warns at every Python branch on a size;
            # DYNAMIC_EXAMPLE_SIZE takes the general branch of each, and tests/test_export.py runs
            # the graph at other sizes against PyTorch.
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, example, buffer, dynamo=False, input_names=list(inputs),
                              output_names=list(OUTPUT_NAMES), dynamic_axes=axes, opset_version=opset)
    except Exception as error:  # the exporter raises many types; all mean the same to the caller
        backbone = config.backbone if config.backbone != "swin" else "Swin"
        raise RuntimeError(f"cannot export {source} ({backbone} backbone, fusion "
                           f"{'on' if config.fusion.enabled else 'off'}) to ONNX opset {opset}: "
                           f"{type(error).__name__}: {error}") from error
    return onnx.load_from_string(buffer.getvalue())


def _import_onnx(name: str):
    """``onnx`` or ``onnxruntime``, with the install command when missing."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ImportError(f"glip.export needs {name}: {INSTALL_HINT}") from error


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The glip metadata of an exported ``.onnx`` file (without loading its weights into a session)."""
    onnx = _import_onnx("onnx")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    try:
        proto = onnx.load_model(str(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError and friends
        raise ValueError(f"cannot read ONNX file {path}: {error}") from error
    entries = {entry.key: entry.value for entry in proto.metadata_props}
    if METADATA_KEY not in entries:
        raise ValueError(f"{path} has no {METADATA_KEY!r} metadata: it was not written by `glip export`")
    metadata = json.loads(entries[METADATA_KEY])
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: export format {metadata.get('format_version')} is not {FORMAT_VERSION}, "
                         "the one this glip reads: export the model again")
    return metadata


class OnnxDetector:
    """An exported model run by ONNX Runtime on CPU: ``predict`` gives ``GLIP.predict``'s detections,
    for the prompt baked into the file, or for any prompt if it was exported with text inputs.

    Args:
        path: a ``.onnx`` file written by :func:`export_onnx` (``glip export``).
        threads: intra-op threads of ONNX Runtime (default: its own choice).

    >>> detector = OnnxDetector("nano.onnx")                 # doctest: +SKIP
    >>> detector.predict("street.jpg").phrases              # doctest: +SKIP
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        runtime = _import_onnx("onnxruntime")
        self.path = Path(path)
        self.metadata = read_metadata(self.path)
        graph = self.metadata["graph"]
        self.text_inputs = bool(graph.get("text_inputs", False))
        tokenizer = None
        if self.text_inputs:
            with tempfile.TemporaryDirectory() as scratch:
                (Path(scratch) / "vocab.txt").write_text(self.metadata["tokenizer_vocab"], encoding="utf-8")
                tokenizer = load_tokenizer(scratch)
        # The model's own processor: the same prompts, resize, normalisation and post-processing.
        self.processor = GLIPProcessor(GLIPConfig.from_dict(self.metadata["config"]),
                                       float(self.metadata["default_threshold"]), tokenizer)
        self.prompt: dict[str, Any] | None = self.metadata["prompt"]
        self.input_size = None if graph["dynamic"] else (int(graph["height"]), int(graph["width"]))
        options = runtime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = runtime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    @property
    def default_threshold(self) -> float:
        return self.processor.default_threshold

    @property
    def phrases(self) -> list[str] | None:
        """The baked prompt's phrases (None for a graph with text inputs)."""
        return None if self.prompt is None else list(self.prompt["phrases"])

    def run(self, pixels: Tensor, prompt: Prompt | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The raw graph outputs (see the module docstring) for ``[B, 3, H, W]`` network inputs (and
        the prompt, for a graph with text inputs)."""
        if self.input_size is not None and tuple(pixels.shape[-2:]) != self.input_size:
            raise ValueError(f"{self.path} takes {self.input_size[0]}x{self.input_size[1]} inputs, got "
                             f"{pixels.shape[-2]}x{pixels.shape[-1]} (export with --dynamic for any size)")
        feeds = {INPUT_NAME: pixels.detach().cpu().float().numpy()}
        if prompt is not None:
            tokens = self.processor.tokenize(prompt)
            batch = pixels.shape[0]
            feeds.update({"input_ids": tokens.input_ids.expand(batch, -1).numpy(),
                          "attention_mask": tokens.attention_mask.expand(batch, -1).numpy(),
                          "phrase_weights": phrase_weights(prompt).numpy()})
        outputs = self.session.run(list(OUTPUT_NAMES), feeds)
        return tuple(torch.from_numpy(output) for output in outputs)

    def predict(
        self,
        image: ImageInput,
        classes: str | Sequence[str] | None = None,
        caption: str | None = None,
        spans: Sequence[tuple[int, int] | Sequence[tuple[int, int]]] | None = None,
        threshold: float | None = None,
        nms_threshold: float | None = None,
        max_detections: int | None = None,
        min_size: int | None = None,
        max_size: int | None = None,
        class_agnostic_nms: bool | None = None,
    ) -> Detections:
        """Detections in one image (a path, PIL image or RGB array), boxes in original pixels: those
        of ``GLIP.predict`` with the same prompt and options.

        Args:
            classes, caption, spans: the prompt, for a graph with text inputs only (a baked prompt
                is fixed); a class list too long for one prompt runs in chunks, as ``GLIP.predict``.
            others: as ``GLIP.predict`` (each ``None`` takes the model's default); ``min_size`` and
                ``max_size`` must keep the padded image within the input of a static graph.
        """
        options = self.processor.inference_options(threshold=threshold, nms_threshold=nms_threshold,
                                                   max_detections=max_detections, min_size=min_size,
                                                   max_size=max_size, class_agnostic_nms=class_agnostic_nms)
        prompts = self._prompts(classes, caption, spans)
        batch = self.processor.preprocess([image], options.min_size, options.max_size)
        pixels = self._fit(batch.pixels)
        postprocessor = self.processor.postprocessor(options.nms_threshold, options.max_detections,
                                                     options.class_agnostic_nms)
        chunks = []
        for prompt in prompts:
            boxes, scores, centerness, levels = self.run(pixels, prompt)
            label_ids, phrases = (prompt.label_ids, prompt.phrases) if prompt is not None else (
                self.prompt["label_ids"], self.prompt["phrases"])
            candidates = select_candidates(boxes[0], scores[0], centerness[0], levels, batch.image_sizes[0],
                                           postprocessor, torch.tensor(label_ids, dtype=torch.int64), phrases)
            chunks.append(rescale_detections(postprocessor.select_detections(candidates), batch.image_sizes[0],
                                             batch.original_sizes[0]))
        if len(chunks) > 1:
            from glip.pipeline import merge_detections  # the chunk merge of GLIP.predict

            return merge_detections(chunks, postprocessor.detections_per_image).above(options.threshold)
        return chunks[0].above(options.threshold)

    def _prompts(self, classes, caption, spans) -> list[Prompt | None]:
        """The prompt chunks to run: ``[None]`` (the baked one) for a graph without text inputs."""
        if not self.text_inputs:
            if classes is not None or caption is not None or spans is not None:
                raise ValueError(f"{self.path} holds the prompt {self.prompt['phrases']}: classes, caption and "
                                 "spans are for a graph exported with text inputs (glip export --text-inputs)")
            return [None]
        return list(self.processor.build_prompts(classes, caption, spans))

    def _fit(self, pixels: Tensor) -> Tensor:
        """A static graph's input: ``pixels`` zero-padded to its size, as in a batch with larger images."""
        if self.input_size is None:
            return pixels
        height, width = self.input_size
        if pixels.shape[-2] > height or pixels.shape[-1] > width:
            raise ValueError(f"the resized image ({pixels.shape[-2]}x{pixels.shape[-1]}) does not fit the "
                             f"{height}x{width} input of {self.path}: export with --dynamic")
        return F.pad(pixels, (0, width - pixels.shape[-1], 0, height - pixels.shape[-2]))


def select_candidates(
    boxes: Tensor,
    scores: Tensor,
    centerness: Tensor,
    levels: Tensor,
    image_size: tuple[int, int],
    postprocessor: GroundingPostProcessor,
    label_ids: Tensor,
    phrases: Sequence[str],
) -> Detections:
    """The candidates of one image from the graph's outputs, as
    :meth:`GroundingPostProcessor.select_candidates` picks them from raw head outputs: per level,
    the (anchor, phrase) pairs scoring above ``score_threshold``, the ``pre_nms_top_n`` best by
    ``score * centerness``, clipped to the image; score ``sqrt(score * centerness)``.

    Args:
        boxes: ``[N, 4]``; scores: ``[N, K]``; centerness: ``[N]``; levels: ``[N]`` (graph outputs).
        image_size: ``(h, w)`` of the resized image before padding.
        label_ids: ``[K]`` label id of each phrase; phrases: K strings.
    """
    parts = []
    for level in torch.unique(levels).tolist():
        in_level = levels == level
        level_scores = scores[in_level]  # [HW, K]
        locations, columns = (level_scores > postprocessor.score_threshold).nonzero(as_tuple=True)
        ranking = (level_scores * centerness[in_level][:, None])[locations, columns]
        if ranking.shape[0] > postprocessor.pre_nms_top_n:
            ranking, top = ranking.topk(postprocessor.pre_nms_top_n, sorted=False)
            locations, columns = locations[top], columns[top]
        level_boxes = _clip_boxes(boxes[in_level][locations], image_size)
        keep = _box_sides(level_boxes, postprocessor.min_box_size) & _not_empty(level_boxes)
        parts.append((level_boxes[keep], ranking.sqrt()[keep], label_ids[columns][keep]))
    selected_boxes, selected_scores, labels = (torch.cat(part) for part in zip(*parts))
    phrase_of_label = dict(zip(label_ids.tolist(), phrases))
    return Detections(selected_boxes, selected_scores, labels, [phrase_of_label[label] for label in labels.tolist()])
