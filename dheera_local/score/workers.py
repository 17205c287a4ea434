"""Where chunks of pairs are scored: this process, one process per device, or threads for remote.

Every pool takes a chunk of pairs and returns a Future of its logits, so the runner collects
results in input order whatever finished first. Scoring always goes through
``Reranker.score_pairs``: the cache, backend choice and fallback stay in the orchestrator.

* One local worker: a thread of this process scores the chunks (no pickling, no second model)
  while the main thread reads and writes.
* Several local workers: one spawned process per worker, each holding its own model on its own
  device (``cuda:0``, ``cuda:1``, ... when there are several GPUs; else the CPU, its cores split
  between the processes). A pair's logit depends only on the chunk it was batched with, and chunks
  do not depend on the worker count, so the scores are the same for any number of workers.
* Remote backends: threads, each with one chunk's requests in flight (bounded concurrency).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from .._engine.orchestrator import Reranker
from .._engine.plan import Plan
from .._errors import InvalidRequestError
from .._options import DEFAULT_OPTIONS, RerankOptions

Pair = tuple[str, str]
DEFAULT_REMOTE_WORKERS = 4


@dataclass(frozen=True)
class Engine:
    """What scores pairs: the model and the engine options (``batch_tokens`` among them), checked once."""

    model: str
    options: RerankOptions = DEFAULT_OPTIONS

    def plan(self, reranker: Reranker) -> Plan:
        """The backends that would serve this model (loads nothing)."""
        return reranker.plan(self.model, self.options)

    def on(self, device: str | None) -> Engine:
        """This engine on ``device`` (None: as it is), for one worker."""
        return self if device is None else replace(self, options=self.options.replace(device=device))


@dataclass(frozen=True)
class ChunkResult:
    """A chunk's logits in pair order, and how many came from the cache."""

    logits: list[float]
    cache_hits: int
    backend: str


def score_chunk(reranker: Reranker, engine: Engine, pairs: list[Pair]) -> ChunkResult:
    """Score one chunk through the orchestrator (cache, backend choice, fallback)."""
    scores = reranker.score_pairs(engine.model, pairs, engine.options)
    return ChunkResult(scores.logits, scores.served_by.cache_hits, scores.served_by.backend)


class Pool:
    """Scores chunks: ``submit(pairs)`` returns a Future of a :class:`ChunkResult`."""

    def __init__(
        self, submit: Callable[[list[Pair]], Future[ChunkResult]], size: int, description: str,
        executor: Executor | None = None,
    ) -> None:  # fmt: skip
        self.submit = submit
        self.size = size
        self.description = description
        self._executor = executor

    def close(self) -> None:
        """Stop the workers (chunks not yet started are cancelled)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)


def plan_devices(engine: Engine, workers: int | None) -> list[str | None]:
    """One entry per local worker: the device it uses (None: the automatic choice)."""
    device = engine.options.device
    if device not in (None, "auto"):
        return [device] * (workers or 1)
    gpus = _cuda_device_count()
    if gpus > 1:
        return [f"cuda:{i % gpus}" for i in range(workers or gpus)]
    return [None] * (workers or 1)


def open_pool(engine: Engine, reranker: Reranker, workers: int | None) -> Pool:
    """The pool for ``engine``: threads for remote backends, else one worker per device. Threads score
    through ``reranker`` (its owner closes it); worker processes make their own."""
    if workers is not None and workers < 1:
        raise InvalidRequestError(f"--workers must be >= 1, got {workers}", field="workers")
    plan = engine.plan(reranker)
    local = plan.local
    if local is None:
        size = workers or DEFAULT_REMOTE_WORKERS
        threads = ThreadPoolExecutor(size, thread_name_prefix="dheera-score")
        return Pool(
            lambda pairs: threads.submit(score_chunk, reranker, engine, pairs),
            size, f"{size} concurrent requests to {plan.candidates[0].name}", threads,
        )  # fmt: skip
    devices = plan_devices(engine, workers)
    if len(devices) == 1:
        # One thread, so reading and writing the next chunks overlap with scoring (torch drops the GIL).
        thread = ThreadPoolExecutor(1, thread_name_prefix="dheera-score")
        worker = engine.on(devices[0])
        return Pool(
            lambda pairs: thread.submit(score_chunk, reranker, worker, pairs),
            1, f"1 worker on {devices[0] or local.identity.device}", thread,
        )  # fmt: skip
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in a forked child
    queue = context.SimpleQueue()
    for device in devices:
        queue.put(device)
    cores = max(1, (os.cpu_count() or 1) // len(devices))
    processes = ProcessPoolExecutor(len(devices), mp_context=context, initializer=_init_process,
                                    initargs=(engine, queue, cores))  # fmt: skip
    where = ", ".join(sorted({d or local.identity.device for d in devices}))
    return Pool(
        lambda pairs: processes.submit(_score_in_process, pairs),
        len(devices), f"{len(devices)} worker processes on {where}", processes,
    )  # fmt: skip


def _cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# A worker process's state, set once by its initializer: its reranker, the engine, its device.
_process_state: dict[str, Any] = {}


def _init_process(engine: Engine, devices: Any, cores: int) -> None:
    import torch

    from .._local.hardware import resolve_device

    device = devices.get()
    if resolve_device(device).startswith("cpu"):
        torch.set_num_threads(cores)  # share the cores between the processes, don't oversubscribe
    _process_state.update(reranker=Reranker(), engine=engine.on(device))


def _score_in_process(pairs: list[Pair]) -> ChunkResult:
    state = _process_state
    return score_chunk(state["reranker"], state["engine"], pairs)
