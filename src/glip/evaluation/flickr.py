"""Phrase grounding Recall@k on Flickr30K Entities in MDETR's format (``glip eval flickr``).

The annotation file is an MDETR grounding JSON (``final_flickr_separateGT_val.json`` /
``_test.json``): one image entry per caption (``caption``, ``tokens_positive_eval``: the character
spans of each phrase that has boxes), annotations with ``bbox`` and ``tokens_positive`` (the spans
of the phrases a box belongs to). As the official evaluation (MDETR's ``flickr_eval.py``, run by
GLIP with TEST.EVAL_TASK grounding):

* each caption is its own prompt; its phrases are the labels (label ``i`` = phrase ``i``);
* a phrase is found at ``k`` when one of its ``k`` best-scored boxes has IoU >= 0.5 with any of
  its ground-truth boxes (any-box protocol); R@k is the fraction of phrases found;
* boxes are compared as decoded, ``(x1, y1, x2, y2)`` in original pixels, against the ground
  truth ``(x, y, x + w, y + h)`` (the official evaluator applies no ``+1``);
* up to 100 detections per caption (DETECTIONS_PER_IMG), without the head's 80-phrase limit
  (official TEST.MDETR_STYLE_AGGREGATE_CLASS_NUM 100).

Several captions share a batch, and the captions of one image its backbone pass (the official
run uses one image per batch: ``--batch-size 1`` reproduces its padding exactly). The protocol
itself is :class:`glip.evaluation.grounding.GroundingProtocol`.

Outputs (``out=``): ``results.json``, one record per evaluated caption::

    {"image_id": 7, "file_name": "3359636318.jpg", "original_img_id": 3359636318, "sentence_id": 0,
     "phrases": [{"phrase": "two people", "spans": [[0, 10]],
                  "boxes": [[x1, y1, x2, y2], ...], "scores": [0.83, ...]}]}

with the ``max(ks)`` best boxes of each phrase by descending score; ``metrics.json`` holds ``R@1``,
``R@5``, ``R@10`` (fractions), ``phrases``, ``captions``, the test size (``min_size``, ``max_size``) and
``fingerprint``. There are no AP keys:
the protocol defines none.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from glip.evaluation.grounding import RECALL_KS, GroundingEvaluation, grounding_protocol
from glip.evaluation.protocol import check_output_folder, evaluate
from glip.evaluation.runner import RunOptions

FlickrEvaluation = GroundingEvaluation


def evaluate_flickr(
    model,
    annotation_file: str | Path,
    image_dir: str | Path,
    batch_size: int = 8,
    min_size: int | None = None,
    max_size: int | None = None,
    *,
    ks: Sequence[int] = RECALL_KS,
    max_detections: int | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    run: RunOptions | None = None,
) -> FlickrEvaluation | None:
    """Recall@k of ``model`` on an MDETR-style grounding file; writes ``out/`` if given.

    Args:
        model: a :class:`glip.GLIP`.
        annotation_file: MDETR grounding JSON (Flickr30K Entities val or test).
        image_dir: folder of the images' ``file_name`` (``flickr30k_images``).
        batch_size: captions per forward pass.
        min_size / max_size: test resize (default: the model config's, :func:`resolve_test_size`).
        ks: the ``k`` of ``R@k``.
        max_detections: detections kept per caption (default: the config's, official 100).
        out / resume / progress: output folder, resumption, progress bar (or ``run`` for all).

    Returns:
        The evaluation on process 0; None on the other processes of a distributed run.
    """
    run = run or RunOptions(batch_size, Path(out) if out is not None else None, resume, progress=progress)
    protocol = grounding_protocol(model, annotation_file, image_dir, min_size=min_size, max_size=max_size,
                                  max_detections=max_detections, ks=ks, name="flickr")
    check_output_folder(run.out)
    return evaluate(protocol, run)
