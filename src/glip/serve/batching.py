"""Request batching: jobs that arrive within a few milliseconds with the same key share one call of
the model; the others wait their turn. One worker thread makes every call, so the model (and its
tokenizer, which is not safe to share between threads) is only ever used from that thread.

Nothing here knows about torch or HTTP: the worker calls ``run_batch(key, payloads)``, which
returns one result per payload (or an exception for that payload alone).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

# What the worker calls: (key, payloads sharing it) -> one result or exception per payload.
BatchRunner = Callable[[Hashable, Sequence[Any]], Sequence[Any]]


class QueueFull(RuntimeError):
    """More jobs are waiting than the queue holds: the caller should answer 503 and let the client retry."""


class QueueClosed(RuntimeError):
    """The queue was closed (the server is stopping) before the job ran."""


@dataclass
class _Job:
    key: Hashable
    payload: Any
    arrived: float  # time.monotonic() at submission: the batch's waiting window starts at its first job
    future: Future = field(default_factory=Future)


@dataclass
class BatchStats:
    """Counters shown by ``GET /health``: ``forward_passes < requests`` means batching happened."""

    requests: int = 0  # jobs run (results and per-job errors)
    forward_passes: int = 0  # calls of run_batch
    largest_batch: int = 0
    failed_batches: int = 0  # calls of run_batch that raised (every job of it failed)


class BatchQueue:
    """A FIFO of jobs served in batches by one worker thread.

    The worker takes the oldest job, waits until ``wait_s`` after that job arrived (or until
    ``max_batch`` jobs with its key are queued), then runs up to ``max_batch`` queued jobs with that
    key in one call, in arrival order. Jobs with other keys stay queued in order. A job that had to
    wait for an earlier batch is past its window already, so whatever piled up meanwhile is batched
    at once: under load batches fill without any added delay.

    Args:
        run_batch: see :data:`BatchRunner`; called only from the worker thread.
        max_batch: most jobs per call (>= 1).
        wait_s: how long the oldest job may wait for company, in seconds (>= 0).
        max_queued: most jobs waiting; :meth:`submit` raises :class:`QueueFull` beyond.
        worker_setup: a context manager factory entered by the worker thread around its loop
            (e.g. the torch thread count), or None.
    """

    def __init__(self, run_batch: BatchRunner, max_batch: int = 8, wait_s: float = 0.005, max_queued: int = 256,
                 worker_setup: Callable[[], Any] | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if wait_s < 0:
            raise ValueError(f"wait_s must be >= 0, got {wait_s}")
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.max_queued = max_queued
        self._worker_setup = worker_setup
        self._pending: deque[_Job] = deque()
        self._condition = threading.Condition()
        self._closed = False
        self.stats = BatchStats()
        self._thread = threading.Thread(target=self._work, name="glip-serve-worker", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        """Jobs waiting (not counting the batch being run)."""
        with self._condition:
            return len(self._pending)

    def submit(self, key: Hashable, payload: Any) -> Future:
        """Queue a job; its future gets ``run_batch``'s result for it, or its exception."""
        with self._condition:
            if self._closed:
                raise QueueClosed("the server is stopping")
            if len(self._pending) >= self.max_queued:
                raise QueueFull(f"{len(self._pending)} requests are queued already (the limit)")
            job = _Job(key, payload, time.monotonic())
            self._pending.append(job)
            self._condition.notify_all()
        return job.future

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop taking jobs, fail those still queued with :class:`QueueClosed`, let the running batch
        finish and end the worker."""
        with self._condition:
            self._closed = True
            dropped = list(self._pending)
            self._pending.clear()
            self._condition.notify_all()
        for job in dropped:
            job.future.set_exception(QueueClosed("the server is stopping"))
        self._thread.join(timeout)

    # ------------------------------------------------------------------------------------------
    # The worker thread
    # ------------------------------------------------------------------------------------------

    def _work(self) -> None:
        if self._worker_setup is None:
            self._serve_forever()
            return
        with self._worker_setup():
            self._serve_forever()

    def _serve_forever(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._run(batch)

    def _next_batch(self) -> list[_Job] | None:
        """Block until a batch is due; None once closed."""
        with self._condition:
            while not self._pending and not self._closed:
                self._condition.wait()
            if self._closed:
                return None
            first = self._pending[0]
            deadline = first.arrived + self.wait_s
            while not self._closed and self._count(first.key) < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            if self._closed:
                return None
            batch = [job for job in self._pending if job.key == first.key][: self.max_batch]
            taken = {id(job) for job in batch}
            self._pending = deque(job for job in self._pending if id(job) not in taken)
            return batch

    def _count(self, key: Hashable) -> int:
        return sum(job.key == key for job in self._pending)

    def _run(self, batch: list[_Job]) -> None:
        self.stats.forward_passes += 1
        self.stats.requests += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        try:
            results = self._run_batch(batch[0].key, [job.payload for job in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} jobs")
        except Exception as error:  # noqa: BLE001 - the worker must outlive any failed batch
            logger.exception("a batch of %d requests failed", len(batch))
            self.stats.failed_batches += 1
            results = [error] * len(batch)
        for job, result in zip(batch, results):
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)
