"""Model calls of the evaluations beyond :meth:`GLIP.detect_batch` (which merges prompt chunks and
keeps the best ``detections_per_image`` of the union).

* :func:`detect_per_prompt`: :meth:`GLIP.detect_batch_per_prompt` on a preprocessed batch: the
  image backbone runs once, every prompt keeps its own best detections, nothing is cut after the union. The official LVIS evaluation does this: each
  40-class query keeps 300 detections per image and all queries' detections are pooled
  (``engine/inference.py``, one ``mdetr_style_output`` entry per query).
* :func:`detect_with_captions`: one caption per image in the same batch (grounding evaluation),
  each image scored against its own phrases.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from glip.modeling.postprocess import Detections, GroundingPostProcessor
from glip.processing import ImageBatch, Prompt, tokenize_captions


@torch.no_grad()
def detect_per_prompt(
    model, batch: ImageBatch, prompts: Sequence, postprocessor: GroundingPostProcessor
) -> list[list[Detections]]:
    """Per image, per prompt, the post-processed detections (boxes in original pixels, on the CPU).

    Args:
        model: a :class:`glip.GLIP`.
        batch: preprocessed images (``pixels`` ``[B, 3, H, W]``).
        prompts: encoded prompts (:meth:`GLIP.encode_prompt`) sharing one label space.
        postprocessor: applied to each prompt separately (its ``detections_per_image`` is per prompt).

    Returns:
        ``B`` lists of ``len(prompts)`` :class:`Detections`.
    """
    per_image = model.detect_batch_per_prompt(batch.pixels.to(model.device), batch.image_sizes, prompts,
                                              postprocessor, batch.original_sizes)
    return [[detections.to("cpu") for detections in chunks] for chunks in per_image]


@torch.no_grad()
def detect_with_captions(
    model, batch: ImageBatch, prompts: Sequence[Prompt], postprocessor: GroundingPostProcessor
) -> list[Detections]:
    """Detections of each image's own caption phrases (labels are 1-based phrase indices).

    Args:
        model: a :class:`glip.GLIP`.
        batch: ``B`` preprocessed images.
        prompts: ``B`` grounding prompts, ``prompts[i]`` for image ``i``.
        postprocessor: decodes each image against its own positive map.

    Returns:
        ``B`` :class:`Detections` in original pixels, on the CPU.
    """
    if len(prompts) != batch.pixels.shape[0]:
        raise ValueError(f"{len(prompts)} prompts for a batch of {batch.pixels.shape[0]} images")
    tokens = tokenize_captions([prompt.caption for prompt in prompts], model.tokenizer,
                               model.config.language.max_query_len).to(model.device)
    pixels = batch.pixels.to(model.device)
    outputs = model(pixels, tokens.input_ids, tokens.attention_mask)
    anchors = model.anchor_generator([tuple(level.shape[-2:]) for level in outputs.box_regression], pixels.device)
    detections = postprocessor(
        outputs.box_regression, outputs.centerness, outputs.dot_product_logits, anchors, batch.image_sizes,
        [prompt.positive_map.to(pixels.device) for prompt in prompts],
        label_ids=[prompt.label_ids for prompt in prompts], phrases=[prompt.phrases for prompt in prompts],
        original_sizes=batch.original_sizes,
    )
    return [image_detections.to("cpu") for image_detections in detections]
