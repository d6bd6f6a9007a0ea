"""The loop every evaluation shares: batches, sharding over processes, partial results, resumption.

Items (images, or image-caption pairs) are cut into global batches of ``batch_size`` in file order;
with ``torchrun``, process ``r`` of ``W`` takes batches ``r, r + W, ...``. Sharding whole batches
(rather than images ``r::W``) keeps every batch, hence its padding and its numbers, identical to a
one-process run, so the metrics are too. Results are gathered on process 0 (``gather_object`` over
gloo), which alone computes metrics and writes files; a failure on any process stops them all.

Resumption: every ``save_every`` batches, and when interrupted, each process writes the results it
has to ``OUT/partial/rank<r>-of-<W>.json`` (atomically). A rerun with ``resume=True`` (``--resume``)
reads every partial file, checks that it was made by the same run (model weights, annotation file,
image folder and every option that changes results, the *fingerprint*) and skips the batches already
done; a fingerprint mismatch is an error that names what changed. Without ``resume`` old partial
results are discarded. The final files are written once at the end, atomically, and ``OUT/partial``
is then removed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from glip.files import write_json_atomic

logger = logging.getLogger(__name__)

PARTIAL_DIR = "partial"
# Batches between two saves of a process's partial results; each save rewrites the process's file,
# so saving after every batch would cost time quadratic in the number of images.
DEFAULT_SAVE_EVERY = 25


class EvaluationError(ValueError):
    """An evaluation failed on another process (the failing process raises its own error)."""


@dataclass(frozen=True)
class RunOptions:
    """How an evaluation runs (nothing here changes the numbers except ``batch_size``).

    Attributes:
        batch_size: items per forward pass; part of the fingerprint, since the padding of a batch
            changes the features near image borders.
        out: output folder; partial results go to ``out/partial/``. None: no partial saves.
        resume: continue from the partial results of an interrupted run with the same fingerprint.
        save_every: batches between two saves of a process's partial results.
        progress: show a progress bar (process 0 only).
    """

    batch_size: int = 8
    out: Path | None = None
    resume: bool = False
    save_every: int = DEFAULT_SAVE_EVERY
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {self.save_every}")


# --------------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------------


def process_group() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    if process_group()[1] > 1:
        dist.barrier()


def _all_gather(value: Any) -> list[Any]:
    """``value`` of every process, on every process."""
    world_size = process_group()[1]
    if world_size == 1:
        return [value]
    gathered: list[Any] = [None] * world_size
    dist.all_gather_object(gathered, value)
    return gathered


def _gather_on_main(value: Any) -> list[Any] | None:
    """``value`` of every process on process 0 (None elsewhere): the other processes do not hold
    a copy of all results."""
    rank, world_size = process_group()
    if world_size == 1:
        return [value]
    gathered: list[Any] | None = [None] * world_size if rank == 0 else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


# --------------------------------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------------------------------


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_digest(model: torch.nn.Module) -> str:
    """SHA-256 of a model's config and every tensor of its state (names, shapes, dtypes, bytes)."""
    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config):
        digest.update(json.dumps(dataclasses.asdict(config), sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def run_fingerprint(fingerprint: dict[str, Any], options: RunOptions) -> dict[str, Any]:
    """The protocol's fingerprint plus the batch size, as JSON would give it back (tuples -> lists)."""
    return json.loads(json.dumps({**fingerprint, "batch_size": options.batch_size}, default=str))


def fingerprint_digest(fingerprint: dict[str, Any], options: RunOptions) -> str:
    """A short stable id of a run (stored in ``metrics.json`` as ``fingerprint``)."""
    full = run_fingerprint(fingerprint, options)
    return hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:16]


def finished_metrics(fingerprint: dict[str, Any], options: RunOptions) -> dict[str, Any] | None:
    """With ``resume``, the ``metrics.json`` that a finished run of the same fingerprint left in
    ``out`` (so that rerunning a suite skips what is done); None otherwise."""
    if not options.resume or options.out is None or not (options.out / "metrics.json").is_file():
        return None
    try:
        metrics = json.loads((options.out / "metrics.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(metrics, dict) or metrics.get("fingerprint") != fingerprint_digest(fingerprint, options):
        return None
    return metrics


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


def clear_partials(out: Path) -> None:
    """Remove ``out/partial`` once the final files are written."""
    shutil.rmtree(out / PARTIAL_DIR, ignore_errors=True)


def _read_partials(folder: Path, fingerprint: dict[str, Any]) -> dict[Hashable, Any]:
    """Results of every partial file in ``folder``, after checking their fingerprints."""
    done: dict[Hashable, Any] = {}
    for path in sorted(folder.glob("rank*-of-*.json")):
        try:
            data = json.loads(path.read_text())
            saved, records = data["fingerprint"], data["results"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"cannot read partial results {path}: {error}; delete it to start afresh") from error
        if saved != fingerprint:
            changed = sorted(key for key in set(saved) | set(fingerprint) if saved.get(key) != fingerprint.get(key))
            raise ValueError(f"{path} was made by another run (different {', '.join(changed)}); rerun without "
                             "--resume to start afresh")
        for key, value in records:
            done[_key(key)] = value
    return done


def _key(key: Any) -> Hashable:
    """JSON turns tuple keys into lists; turn them back."""
    return tuple(key) if isinstance(key, list) else key


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


def run_batches(
    keys: Sequence[Hashable],
    predict: Callable[[list[int]], list[Any]],
    fingerprint: dict[str, Any],
    options: RunOptions,
    desc: str = "eval",
) -> list[Any] | None:
    """Run ``predict`` over all items in batches, sharded over the processes, resumable.

    Args:
        keys: one unique JSON-able key per item (an image id, ...), naming it in partial files.
        predict: indices of one batch -> one JSON-able result per index.
        fingerprint: JSON-able description of everything that determines the results.
        options: batching, partial saves, resumption.
        desc: progress-bar label.

    Returns:
        On process 0, the result of every item in ``keys`` order; None on the other processes.

    Raises:
        EvaluationError: ``predict`` failed on another process (the failing one raises its error).
    """
    if len(set(keys)) != len(keys):
        raise ValueError(f"{desc}: item keys are not unique")
    rank, world_size = process_group()
    fingerprint = run_fingerprint(fingerprint, options)  # compares equal to its copy in a partial file
    batches = [list(range(start, min(start + options.batch_size, len(keys))))
               for start in range(0, len(keys), options.batch_size)]
    mine = batches[rank::world_size]
    done = _previous_results(fingerprint, options, desc, len(keys))
    results: dict[int, Any] = {}
    todo = []
    for batch in mine:
        if all(keys[index] in done for index in batch):
            results.update((index, done[keys[index]]) for index in batch)
        else:
            todo.append(batch)
    partial = _PartialFile(keys, fingerprint, options.out)
    error = _run_todo(todo, len(mine), predict, results, partial, options, desc)
    # Every process learns of a failure anywhere (so that none waits forever), then process 0
    # alone receives the results.
    failures = [message for message in _all_gather(None if error is None else f"process {rank}: {error}")
                if message is not None]
    if error is not None:
        raise error
    if failures:
        raise EvaluationError(f"{desc} failed on another process: {failures[0]}")
    return _merge_on_main(results, len(keys), desc)


def _previous_results(fingerprint: dict[str, Any], options: RunOptions, desc: str, total: int) -> dict[Hashable, Any]:
    """With ``resume``, the results of the partial files (checked to be of this run); without, the
    partial files are discarded. Returns ``{key: result}``."""
    folder = options.out / PARTIAL_DIR if options.out is not None else None
    done: dict[Hashable, Any] = {}
    if folder is not None and options.resume and folder.is_dir():
        done = _read_partials(folder, fingerprint)
        logger.info("%s: resuming with %d of %d items done", desc, len(done), total)
    _barrier()  # every process has read the old partial files before any is rewritten
    if folder is not None and not options.resume and process_group()[0] == 0 and folder.is_dir():
        logger.info("%s: discarding the partial results in %s (pass --resume to continue them)", desc, folder)
        clear_partials(options.out)
    _barrier()
    return done


@dataclass
class _PartialFile:
    """This process's ``OUT/partial/rank<r>-of-<W>.json`` (nothing without an output folder)."""

    keys: Sequence[Hashable]
    fingerprint: dict[str, Any]
    out: Path | None

    def save(self, results: dict[int, Any]) -> None:
        if self.out is None:
            return
        rank, world_size = process_group()
        records = [[self.keys[index], results[index]] for index in sorted(results)]
        write_json_atomic(self.out / PARTIAL_DIR / f"rank{rank}-of-{world_size}.json",
                          {"fingerprint": self.fingerprint, "results": records}, indent=None)


def _run_todo(todo: list[list[int]], total: int, predict: Callable[[list[int]], list[Any]], results: dict[int, Any],
              partial: _PartialFile, options: RunOptions, desc: str) -> Exception | None:
    """Predict the batches of ``todo`` into ``results``, saving every ``save_every`` batches and
    when interrupted; returns the error that stopped it (to tell the other processes) or None."""
    error: Exception | None = None
    bar = tqdm(total=total, initial=total - len(todo), desc=desc, unit="batch", leave=False,
               disable=not options.progress or process_group()[0] != 0)
    try:
        for count, batch in enumerate(todo, start=1):
            outputs = predict(batch)
            if len(outputs) != len(batch):
                raise ValueError(f"{desc}: {len(outputs)} results for a batch of {len(batch)}")
            results.update(zip(batch, outputs))
            bar.update()
            if count % options.save_every == 0:
                partial.save(results)
    except Exception as caught:  # told to the other processes by the caller, so that none waits forever
        error = caught
    except BaseException:  # KeyboardInterrupt and the like: keep what is done, then stop
        partial.save(results)
        raise
    finally:
        bar.close()
    if todo:
        partial.save(results)
    return error


def _merge_on_main(results: dict[int, Any], total: int, desc: str) -> list[Any] | None:
    """Every process's ``{index: result}`` merged on process 0, in index order; None elsewhere."""
    parts = _gather_on_main(results)
    if parts is None:
        return None
    merged: dict[int, Any] = {}
    for part in parts:
        merged.update(part)
    missing = total - len(merged)
    if missing:
        raise EvaluationError(f"{desc}: {missing} items have no results after gathering")
    return [merged[index] for index in range(total)]
