"""The loopback servers of :mod:`dheera_local.testing.servers`, and helpers that drive the client under test."""

from __future__ import annotations

import asyncio
from typing import Any

from dheera_local import Reranker, RerankResponse, RetryPolicy
from dheera_local.testing.servers import (  # noqa: F401 - re-exported for the tests
    Fault,
    LoopbackServer,
    Recorded,
    Servers,
    reference_logits,
    scorer,
    sigmoid,
    softmax,
)

# Retries in milliseconds, so fault-injection tests stay fast.
FAST = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05, read_timeout=5.0, deadline=20.0)


# Helpers for the tests ------------------------------------------------------------------------


def call(reranker: Reranker, mode: str, *args: Any, **kwargs: Any) -> RerankResponse:
    """``reranker.rerank`` (mode "sync") or ``arerank`` in a fresh event loop (mode "async")."""
    if mode == "sync":
        return reranker.rerank(*args, **kwargs)

    async def run() -> RerankResponse:
        try:
            return await reranker.arerank(*args, **kwargs)
        finally:
            await reranker.aclose()

    return asyncio.run(run())


def by_index(response: RerankResponse) -> dict[int, float]:
    return {result.index: result.relevance_score for result in response.results}
