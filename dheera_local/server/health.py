"""``GET /health``: one real, uncached rerank per configured model, as LiteLLM's proxy reports it.
``GET /health/readiness``: started, not shutting down, and the shared score cache's state."""

from __future__ import annotations

import asyncio
from typing import Any

from .._cache.shared_tier import RedisCacheStore
from .._errors import DheeraError
from .._secrets import mask
from .registry import ServedModel
from .state import ServerState


async def check_models(state: ServerState) -> dict[str, Any]:
    """``{"healthy_endpoints", "unhealthy_endpoints", "healthy_count", "unhealthy_count"}``."""
    results = await asyncio.gather(*(_check(state, served) for served in state.registry.models.values()))
    healthy = [entry for ok, entry in results if ok]
    unhealthy = [entry for ok, entry in results if not ok]
    return {
        "healthy_endpoints": healthy,
        "unhealthy_endpoints": unhealthy,
        "healthy_count": len(healthy),
        "unhealthy_count": len(unhealthy),
    }


async def _check(state: ServerState, served: ServedModel) -> tuple[bool, dict[str, Any]]:
    entry: dict[str, Any] = {"model_name": served.name, "model": served.model}
    timeout = state.config.general_settings.health_check_timeout
    try:
        response = await asyncio.wait_for(state.service.health_request(served), timeout)
    except asyncio.TimeoutError:
        return False, {**entry, "error": f"no answer within health_check_timeout={timeout}s"}
    except DheeraError as exc:
        return False, {**entry, "error": mask(str(exc))}
    return True, {**entry, "backend": response.backend}


async def readiness(state: ServerState) -> tuple[int, dict[str, Any]]:
    """The readiness probe's status code and body. A shared score cache that does not answer leaves the
    replica ready (requests are scored without it, never failed): ``"status": "degraded"`` and 200, so a
    load balancer keeps sending traffic while the body says what is missing."""
    if state.draining:
        return 503, {"status": "shutting_down"}
    store = state.reranker.caches
    if not isinstance(store, RedisCacheStore):
        return 200, {"status": "healthy"}
    try:
        # ping() never raises and times out on its own (the tier's timeout); wait_for bounds a stuck pool too.
        reachable = await asyncio.wait_for(asyncio.to_thread(store.ping), store.options.timeout * 4 + 1)
    except asyncio.TimeoutError:
        reachable = False
    # No URL: the probe is open, and the tier's address is not every caller's business.
    tier: dict[str, Any] = {"status": "connected" if reachable else "unreachable"}
    if not reachable:
        tier["effect"] = "requests are scored without the shared cache (no cache hits from other replicas)"
    return 200, {"status": "healthy" if reachable else "degraded", "shared_cache": tier}
