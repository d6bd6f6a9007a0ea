"""The model side of the server: one batch of same-prompt, same-size images -> one forward pass.

Runs only on the batching worker's thread (:mod:`glip.serve.batching`), which is why the prompt
cache needs no lock and the tokenizer is never shared between threads.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from glip.pipeline import GLIP, EncodedPrompt
from glip.processing import resized_size
from glip.serve.inputs import BadRequest, PromptSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectJob:
    """One request as the worker sees it: a decoded image, its prompt and its threshold."""

    image: Image.Image
    prompt: PromptSpec
    threshold: float


class BatchDetector:
    """Runs batches for :class:`~glip.serve.batching.BatchQueue` with a loaded :class:`GLIP`.

    A batch holds images that resize to the same size: padding an image to a larger batch-mate
    changes its features near the padded border (zero padding is not neutral after the first
    convolution: GLIP-Nano's scores moved by 0.02), and a served detection must equal
    ``GLIP.predict`` on the same image. :meth:`batch_key` makes that part of the key.

    Args:
        model: the model, in eval mode, on its device.
        prompt_cache_size: distinct prompts whose text features are kept (least recently used
            dropped first); each costs a BERT pass to encode.
    """

    def __init__(self, model: GLIP, prompt_cache_size: int = 8) -> None:
        self.model = model
        self.options = model.inference_defaults
        self.postprocessor = model.postprocessor()
        self.prompt_cache_size = prompt_cache_size
        self._prompts: OrderedDict[PromptSpec, list[EncodedPrompt]] = OrderedDict()

    def batch_key(self, job: DetectJob) -> Hashable:
        """Jobs with equal keys can share a forward: same prompt, same resized size."""
        size = resized_size(job.image.height, job.image.width, self.options.min_size, self.options.max_size)
        return job.prompt, size

    def __call__(self, key: Hashable, jobs: Sequence[DetectJob]) -> list[dict[str, Any] | BaseException]:
        """Detections of each job as JSON-able dicts; a bad prompt fails every job with :class:`BadRequest`."""
        try:
            prompts = self.encoded(jobs[0].prompt)
        except BadRequest as error:
            return [error] * len(jobs)
        images = [job.image for job in jobs]
        batch = self.model.preprocess(images, self.options.min_size, self.options.max_size)
        per_image = self.model.detect_batch(batch.pixels.to(self.model.device), batch.image_sizes, prompts,
                                            self.postprocessor, batch.original_sizes)
        results: list[dict[str, Any] | BaseException] = []
        for job, detections in zip(jobs, per_image):
            kept = detections.above(job.threshold).to("cpu")
            results.append({"width": job.image.width, "height": job.image.height, "threshold": job.threshold,
                            **kept.to_dict()})
        return results

    def encoded(self, prompt: PromptSpec) -> list[EncodedPrompt]:
        """The prompt's text features, from the cache or encoded now (one BERT pass per chunk).

        Raises:
            BadRequest: the model refuses the prompt (e.g. a caption without spans and no NLTK).
        """
        cached = self._prompts.get(prompt)
        if cached is not None:
            self._prompts.move_to_end(prompt)
            return cached
        try:
            encoded = self.model.encode_prompts(**prompt.build_arguments())
        except (ValueError, TypeError, ImportError) as error:
            raise BadRequest(" ".join(str(error).split())[:300]) from None
        self._prompts[prompt] = encoded
        if len(self._prompts) > self.prompt_cache_size:
            self._prompts.popitem(last=False)
        return encoded
