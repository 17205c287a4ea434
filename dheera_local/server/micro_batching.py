"""Micro-batching: concurrent requests for one local model share forward passes.

::

    ascore_pairs(pairs) ─► bounded queue of jobs (FIFO) ─► one worker thread per loaded model
                                                            │ takes the queued jobs (up to max_batch_pairs)
                                                            │ LocalBackend.score_pairs(merged): tokenized once,
                                                            │   longest first, forward passes by token budget
                                                            └─► each job's future gets its own slice

Written here rather than taken from infinity (whose ``BatchHandler`` has this shape): it is not a
library one can import without its server and engines. The queue is bounded in pairs: a job that
would overflow it raises :class:`OverloadedError` (the server answers 429 with ``Retry-After``)
instead of growing memory; a job arriving at an empty queue is always taken, so an oversized
request cannot starve. A merged step that fails is
retried job by job, so one bad request fails alone. If the worker thread dies, every queued
future fails (none hangs) and the next job starts a fresh worker. :meth:`MicroBatcher.close`
drains the queue, then stops the worker.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._backend import Logits, ModelBackend
from .._errors import BackendError, LocalBackendError, OverloadedError, ShuttingDownError
from .._models.identity import ModelIdentity

logger = logging.getLogger("dheera_local")

Pair = tuple[str, str]
DEFAULT_MAX_QUEUE_PAIRS = 8192
DEFAULT_MAX_BATCH_PAIRS = 1024
MAX_RETRY_AFTER = 60
# Upper bounds of the buckets that count steps by how much they merged (the last one is unbounded).
STEP_PAIRS_BUCKETS = (1, 4, 16, 64, 256, 1024, math.inf)
STEP_REQUESTS_BUCKETS = (1, 2, 4, 8, 16, 32, math.inf)


@dataclass
class BatcherStats:
    """Counters since start: what the worker merged and what the queue refused."""

    requests: int = 0
    rejected: int = 0
    steps: int = 0
    pairs: int = 0
    merged_steps: int = 0
    stepped_requests: int = 0  # requests summed over steps (a request retried alone counts again)
    max_requests_per_step: int = 0
    max_pairs_per_step: int = 0
    queued_pairs: int = 0
    running_pairs: int = 0
    # Steps by merged size, one count per bucket of STEP_PAIRS_BUCKETS / STEP_REQUESTS_BUCKETS (for /metrics).
    steps_by_pairs: list[int] = field(default_factory=lambda: [0] * len(STEP_PAIRS_BUCKETS))
    steps_by_requests: list[int] = field(default_factory=lambda: [0] * len(STEP_REQUESTS_BUCKETS))


@dataclass
class _Job:
    pairs: list[Pair]
    future: Future[list[float]]


class MicroBatcher:
    """A Backend that merges concurrent jobs for one local model into shared ``score_pairs`` calls.

    Args:
        backend: The local backend (one loaded model) that scores merged steps.
        max_queue_pairs: Pairs that may wait or run at once; more raises OverloadedError.
        max_batch_pairs: Pairs merged into one ``score_pairs`` call (its forward passes are split
            further by the backend's token budget).
    """

    name = "local"

    def __init__(
        self,
        backend: ModelBackend,
        *,
        max_queue_pairs: int = DEFAULT_MAX_QUEUE_PAIRS,
        max_batch_pairs: int = DEFAULT_MAX_BATCH_PAIRS,
    ) -> None:
        self.backend = backend
        self.max_queue_pairs = max_queue_pairs
        self.max_batch_pairs = max_batch_pairs
        self.identity = backend.identity
        self.label = f"{public_id(backend.identity.model_id)} on {backend.identity.device}"
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._stats = BatcherStats()
        self._rate = 0.0  # pairs per second, smoothed, for Retry-After
        self._closed = False
        self._thread: threading.Thread | None = None

    # The Backend interface ------------------------------------------------------------------

    def score(self, query: str, texts: list[str]) -> list[float]:
        return self.score_pairs([(query, text) for text in texts])

    async def ascore(self, query: str, texts: list[str]) -> list[float]:
        return await self.ascore_pairs([(query, text) for text in texts])

    def score_pairs(self, pairs: list[Pair]) -> list[float]:
        """Raw logits for ``pairs``; blocks this thread until the worker has scored them."""
        return self.submit(pairs).result() if pairs else []

    async def ascore_pairs(self, pairs: list[Pair]) -> list[float]:
        """Raw logits for ``pairs``; awaits the worker without blocking the event loop."""
        return await asyncio.wrap_future(self.submit(pairs)) if pairs else []

    def describe(self) -> dict[str, str]:
        return self.backend.describe()

    def numerics(self) -> str:
        return self.backend.numerics()

    def numerics_known(self) -> bool:
        return self.backend.numerics_known()

    def prepare(self) -> None:
        self.backend.prepare()

    # Queue ------------------------------------------------------------------------------------

    def submit(self, pairs: list[Pair]) -> Future[list[float]]:
        """Queue ``pairs``; raises OverloadedError when the queue cannot take them."""
        job = _Job(list(pairs), Future())
        with self._cond:
            if self._closed:
                raise ShuttingDownError(f"{self.label}: the server is shutting down", retry_after=5.0)
            load = self._stats.queued_pairs + self._stats.running_pairs
            if load and load + len(job.pairs) > self.max_queue_pairs:
                self._stats.rejected += 1
                raise OverloadedError(
                    f"{self.label} is overloaded: {load} pairs are queued or running and this request adds "
                    f"{len(job.pairs)} (max_queue_pairs={self.max_queue_pairs}); retry later",
                    retry_after=self._retry_after(load),
                )
            self._ensure_worker()
            self._queue.append(job)
            self._stats.requests += 1
            self._stats.queued_pairs += len(job.pairs)
            self._cond.notify()
        return job.future

    def stats(self) -> dict[str, Any]:
        """A snapshot of :class:`BatcherStats`."""
        with self._cond:
            return asdict(self._stats)  # a deep copy: the bucket lists too

    def close(self, timeout: float | None = 30.0) -> None:
        """Refuse new jobs, let the worker finish the queued ones, then stop it."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        error = ShuttingDownError(f"{self.label}: the server shut down before this request was scored", retry_after=5)
        for job in self._drain():
            job.future.set_exception(error)

    def _retry_after(self, load: int) -> float:
        if self._rate <= 0:
            return 1.0
        return float(min(max(math.ceil(load / self._rate), 1), MAX_RETRY_AFTER))

    def _ensure_worker(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        if self._thread is not None:
            logger.warning("%s: the micro-batch worker had stopped; starting a new one", self.label)
        self._thread = threading.Thread(target=self._work, name=f"dheera-batcher[{self.label}]", daemon=True)
        self._thread.start()

    # Worker -----------------------------------------------------------------------------------

    def _work(self) -> None:
        jobs: list[_Job] = []
        try:
            while (jobs := self._take()) is not None:
                self._step(jobs)
                self._done()
        except BaseException as exc:  # noqa: BLE001 - a dying worker must fail its futures, whatever killed it
            logger.error("%s: micro-batch worker stopped (%s)", self.label, type(exc).__name__)
            self._fail([*jobs, *self._drain()], f"the micro-batch worker stopped ({type(exc).__name__})")

    def _take(self) -> list[_Job] | None:
        """The next step's jobs (oldest first), or None once closed and drained."""
        with self._cond:
            while True:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return None
                jobs = self._pop_step()
                if jobs:
                    return jobs

    def _pop_step(self) -> list[_Job]:
        jobs: list[_Job] = []
        size = 0
        while self._queue:
            job = self._queue[0]
            if jobs and size + len(job.pairs) > self.max_batch_pairs:
                break
            self._queue.popleft()
            self._stats.queued_pairs -= len(job.pairs)
            if job.future.set_running_or_notify_cancel():  # False: the client went away
                jobs.append(job)
                size += len(job.pairs)
        self._stats.running_pairs = size
        return jobs

    def _step(self, jobs: list[_Job]) -> None:
        merged = [pair for job in jobs for pair in job.pairs]
        started = time.perf_counter()
        try:
            logits = self.backend.score_pairs(merged)
        except Exception as exc:  # noqa: BLE001 - translated per job below
            if len(jobs) > 1:
                for job in jobs:  # isolate the request that broke the merged step
                    self._step([job])
                return
            jobs[0].future.set_exception(_as_backend_error(self.label, exc))
            return
        self._record(jobs, len(merged), time.perf_counter() - started)
        offset = 0
        for job in jobs:
            job.future.set_result(_slice(logits, offset, offset + len(job.pairs)))
            offset += len(job.pairs)

    def _record(self, jobs: list[_Job], pairs: int, seconds: float) -> None:
        with self._cond:
            stats = self._stats
            stats.steps += 1
            stats.pairs += pairs
            stats.merged_steps += len(jobs) > 1
            stats.stepped_requests += len(jobs)
            stats.max_requests_per_step = max(stats.max_requests_per_step, len(jobs))
            stats.max_pairs_per_step = max(stats.max_pairs_per_step, pairs)
            stats.steps_by_pairs[bisect.bisect_left(STEP_PAIRS_BUCKETS, pairs)] += 1
            stats.steps_by_requests[bisect.bisect_left(STEP_REQUESTS_BUCKETS, len(jobs))] += 1
            if seconds > 0:
                rate = pairs / seconds
                self._rate = rate if self._rate <= 0 else 0.8 * self._rate + 0.2 * rate

    def _done(self) -> None:
        with self._cond:
            self._stats.running_pairs = 0

    def _drain(self) -> list[_Job]:
        with self._cond:
            jobs = list(self._queue)
            self._queue.clear()
            self._stats.queued_pairs = 0
            self._stats.running_pairs = 0
        return [job for job in jobs if job.future.set_running_or_notify_cancel()]

    def _fail(self, jobs: list[_Job], reason: str) -> None:
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(LocalBackendError(f"{self.label}: {reason}"))


def _slice(logits: list[float], start: int, stop: int) -> list[float]:
    """One job's logits, with the tokens of its own pairs when the model counted them per pair."""
    return logits.part(start, stop) if isinstance(logits, Logits) else logits[start:stop]


def public_id(model_id: str) -> str:
    """What the metrics (open without a key) may show of a model: a hub id, or a folder's name, never
    the path to it on this machine."""
    return Path(model_id).name if Path(model_id).is_absolute() else model_id


def _as_backend_error(label: str, exc: Exception) -> BackendError:
    if isinstance(exc, BackendError):
        return exc
    error = LocalBackendError(f"{label}: scoring failed ({type(exc).__name__}: {exc})")
    error.__cause__ = exc
    return error


class BatcherPool:
    """One :class:`MicroBatcher` per loaded model; its :meth:`wrap` is the Reranker's ``local_wrapper``.

    Args:
        max_queue_pairs: Per model: pairs that may wait or run at once.
        max_batch_pairs: Per model: pairs merged into one scoring call.
    """

    def __init__(
        self, *, max_queue_pairs: int = DEFAULT_MAX_QUEUE_PAIRS, max_batch_pairs: int = DEFAULT_MAX_BATCH_PAIRS
    ) -> None:
        self.max_queue_pairs = max_queue_pairs
        self.max_batch_pairs = max_batch_pairs
        self._batchers: dict[ModelIdentity, MicroBatcher] = {}
        self._lock = threading.Lock()
        self._closed = False

    def wrap(self, local: ModelBackend) -> MicroBatcher:
        """The batcher for ``local``'s model: one per identity (weights, device, dtype, kernels, max_length,
        prompt, token budget)."""
        key = local.identity
        with self._lock:
            if self._closed:
                raise ShuttingDownError("the server is shutting down", retry_after=5.0)
            batcher = self._batchers.get(key)
            if batcher is None:
                batcher = MicroBatcher(
                    local, max_queue_pairs=self.max_queue_pairs, max_batch_pairs=self.max_batch_pairs
                )
                self._batchers[key] = batcher
            return batcher

    def stats(self) -> dict[str, dict[str, Any]]:
        """Each batcher's counters, by ``"model_id on device"`` (max_length appended when models repeat)."""
        with self._lock:
            batchers = list(self._batchers.items())
        out: dict[str, dict[str, int]] = {}
        for key, batcher in batchers:
            label = batcher.label if batcher.label not in out else f"{batcher.label} max_length={key.max_length}"
            base, copy = label, 1
            while label in out:  # two folders of one name
                copy += 1
                label = f"{base} #{copy}"
            out[label] = batcher.stats()
        return out

    def close(self, timeout: float | None = 30.0) -> None:
        """Drain and stop every batcher; later ``wrap`` calls raise OverloadedError."""
        with self._lock:
            self._closed = True
            batchers = list(self._batchers.values())
        for batcher in batchers:
            batcher.close(timeout)
