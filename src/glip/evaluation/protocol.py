"""One evaluation skeleton that every protocol fills in (as torchvision's detection references have
one ``evaluate`` and evaluator objects).

A protocol (COCO, LVIS, grounding) says what its items are, what determines its numbers (the
fingerprint), how to predict a batch of items, how to score all results, how to write them and how
to read a finished run back; :func:`evaluate` does the rest in one order for all of them: check the
output folder, skip a finished run, run the batches (sharded, resumable: :func:`run_batches`),
score, write.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from glip.evaluation.runner import RunOptions, clear_partials, finished_metrics, fingerprint_digest, run_batches
from glip.processing import default_max_size

logger = logging.getLogger(__name__)

EvaluationT = TypeVar("EvaluationT")


class EvaluationProtocol(Protocol[EvaluationT]):
    """What a protocol supplies to :func:`evaluate`.

    Attributes:
        name: label of the progress bar and the logs (``coco``, ``odinw/pothole``, ...).
        keys: one unique JSON-able key per item (an image or caption id).
        fingerprint: JSON-able description of everything that determines the numbers.
    """

    name: str
    keys: list[Hashable]
    fingerprint: dict[str, Any]

    def predict(self, indices: list[int]) -> list[Any]:
        """One JSON-able result per item of a batch."""

    def score(self, results: list[Any]) -> EvaluationT:
        """The evaluation of all items' results (in ``keys`` order)."""

    def write(self, out: Path, evaluation: EvaluationT, fingerprint: str) -> None:
        """Write the outputs (``fingerprint``: the run's digest for ``metrics.json``)."""

    def restore(self, metrics: dict[str, Any]) -> EvaluationT:
        """The evaluation of a finished run from its ``metrics.json``."""


def evaluate(protocol: EvaluationProtocol[EvaluationT], run: RunOptions) -> EvaluationT | None:
    """Run ``protocol`` over its items and score them; write ``run.out`` if given.

    Returns:
        The evaluation on process 0 (read back from ``metrics.json`` when ``run.resume`` finds the
        run finished); None on the other processes of a distributed run.
    """
    check_output_folder(run.out)
    done = finished_metrics(protocol.fingerprint, run)
    if done is not None:
        logger.info("%s: %s is finished already", protocol.name, run.out)
        return protocol.restore(done)
    results = run_batches(protocol.keys, protocol.predict, protocol.fingerprint, run, desc=protocol.name)
    if results is None:
        return None
    evaluation = protocol.score(results)
    if run.out is not None:
        protocol.write(run.out, evaluation, fingerprint_digest(protocol.fingerprint, run))
        clear_partials(run.out)
    return evaluation


def resolve_test_size(model, min_size: int | None = None, max_size: int | None = None) -> tuple[int, int]:
    """The test resize of an evaluation: the given sizes, else the model config's.

    ``min_size`` None: the config's ``min_size_test`` (224 for GLIP-Nano, 800 for official models).
    ``max_size`` None: the config's ``max_size_test``, or where that is 0 (no cap) the official
    evaluation's ratio 1333 / 800 of ``min_size`` (:func:`glip.processing.default_max_size`), so an
    official model is evaluated at exactly the official 800 / 1333. The resolved sizes enter the
    fingerprint: naming the default sizes is the same run as leaving them out.
    """
    config = model.config.input
    min_size = min_size or config.min_size_test
    if max_size is None:
        max_size = default_max_size(min_size, config.max_size_test)
    return min_size, max_size


def check_output_folder(out: Path | None) -> None:
    """Create ``out`` and make sure a file can be written there, before any inference (rather than
    failing at the first partial save or at the end)."""
    if out is None:
        return
    probe = Path(out) / f".glip-write-check-{os.getpid()}"
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise ValueError(f"output folder {out} cannot be written: {error}") from error
