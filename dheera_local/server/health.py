"""``GET /health``: one real, uncached rerank per configured model, as LiteLLM's proxy reports it."""

from __future__ import annotations

import asyncio
from typing import Any

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
