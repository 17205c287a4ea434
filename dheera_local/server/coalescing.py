"""Concurrent identical requests on one replica share one computation.

Ten clients that send the same request at once (a retry storm, a fan-out that repeats a query)
would each miss the cache, since none has stored its scores yet, and each score every pair. Here
the first one computes, in a task of its own, and the others await that task: the pairs are scored
once per replica. Each caller gets its own copy of the answer (with its own ``id``); a caller that
disconnects does not cancel the computation the others wait for, and the computation is cancelled
when the last one has gone. The shared cache tier then makes the answer a cache hit on every other
replica.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable

from .._engine.request import RerankRequest
from .._options import numerics_fields
from .._response import RerankResponse


def request_key(model_name: str, request: RerankRequest) -> str:
    """What makes two requests to one configured model give the same answer: the request, and the options
    that change scores (a body may set ``raw_scores``, ``instruction``, ``prompt``); no secret is among them."""
    parts = [
        model_name, request.query, request.texts, request.top_n, request.return_documents,
        request.documents if request.return_documents else None, request.max_chunks_per_doc,
        request.max_tokens_per_doc, numerics_fields(request.options),
    ]  # fmt: skip
    data = json.dumps(parts, ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.sha256(data.encode("utf-8", "surrogatepass")).hexdigest()


class Coalescer:
    """One computation per key in flight; ``shared`` counts the requests that awaited another's."""

    def __init__(self) -> None:
        self._in_flight: dict[str, _Flight] = {}
        self.shared = 0

    async def run(self, key: str, compute: Callable[[], Awaitable[RerankResponse]]) -> RerankResponse:
        flight = self._in_flight.get(key)
        leader = flight is None
        if flight is None:
            flight = _Flight(asyncio.ensure_future(compute()))
            self._in_flight[key] = flight
            flight.task.add_done_callback(lambda done: self._finished(key, done))
        else:
            self.shared += 1
        flight.waiters += 1
        try:
            response = await asyncio.shield(flight.task)
        except asyncio.CancelledError:
            flight.waiters -= 1
            if flight.waiters == 0:
                flight.task.cancel()  # nobody wants the answer any more: stop the work (queued pairs are skipped)
            raise
        flight.waiters -= 1
        if leader:
            return response
        return response.model_copy(deep=True, update={"id": str(uuid.uuid4())})

    def _finished(self, key: str, task: asyncio.Task[RerankResponse]) -> None:
        flight = self._in_flight.get(key)
        if flight is not None and flight.task is task:
            del self._in_flight[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so a failure nobody awaited any more is not reported as lost


class _Flight:
    """A computation in flight and how many requests await it."""

    def __init__(self, task: asyncio.Task[RerankResponse]) -> None:
        self.task = task
        self.waiters = 0
