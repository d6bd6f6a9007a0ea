"""Model calls of the evaluations beyond :meth:`GLIP.detect_batch` (which merges prompt chunks and
keeps the best ``detections_per_image`` of the union).

* :func:`detect_per_prompt`: :meth:`GLIP.detect_batch_per_prompt` on a preprocessed batch: the
  image backbone runs once, every prompt keeps its own best detections, nothing is cut after the
  union. The official LVIS evaluation does this: each 40-class query keeps 300 detections per
  image and all queries' detections are pooled
  (``engine/inference.py``, one ``mdetr_style_output`` entry per query).
* :func:`detect_with_captions`: a batch of captions, each scored in its own image against its own
  phrases (grounding evaluation); an image with several captions is encoded once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

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
    model,
    image_paths: Sequence[Path],
    prompts: Sequence[Prompt],
    postprocessor: GroundingPostProcessor,
    test_size: tuple[int, int],
) -> list[Detections]:
    """Detections of each caption's own phrases in its own image (labels are 1-based phrase indices).

    Captions of one image (adjacent in a grounding file) share its backbone pass: the image is read
    and encoded once, then its FPN levels are repeated for each of its captions. The padded batch
    is the same as with one copy per caption, so the numbers are too.

    Args:
        model: a :class:`glip.GLIP`.
        image_paths: ``B`` images, ``image_paths[i]`` for caption ``i`` (repeats allowed).
        prompts: ``B`` grounding prompts.
        postprocessor: decodes each caption against its own positive map.
        test_size: ``(min_size, max_size)`` of the resize.

    Returns:
        ``B`` :class:`Detections` in original pixels, on the CPU.
    """
    if len(prompts) != len(image_paths):
        raise ValueError(f"{len(prompts)} prompts for {len(image_paths)} images")
    unique = list(dict.fromkeys(image_paths))
    batch = model.preprocess(unique, *test_size)
    image_of = [unique.index(path) for path in image_paths]  # caption -> its image in the batch
    pixels = batch.pixels.to(model.device)
    # [U, C, H_l, W_l] -> [B, C, H_l, W_l]: each caption gets its image's features.
    visual = [level[image_of] for level in model.encode_image(pixels)]
    tokens = tokenize_captions([prompt.caption for prompt in prompts], model.tokenizer,
                               model.config.language.max_query_len).to(model.device)
    outputs = model.fuse_and_predict(visual, model.encode_text(tokens.input_ids, tokens.attention_mask))
    anchors = model.anchor_generator([tuple(level.shape[-2:]) for level in outputs.box_regression], pixels.device)
    detections = postprocessor(
        outputs.box_regression, outputs.centerness, outputs.dot_product_logits, anchors,
        [batch.image_sizes[index] for index in image_of], [prompt.positive_map.to(pixels.device) for prompt in prompts],
        label_ids=[prompt.label_ids for prompt in prompts], phrases=[prompt.phrases for prompt in prompts],
        original_sizes=[batch.original_sizes[index] for index in image_of],
    )
    return [caption_detections.to("cpu") for caption_detections in detections]
