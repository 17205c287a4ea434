"""What a running server owns: the Reranker, the micro-batchers, the service over them.

Created by the app's lifespan (:meth:`ServerState.start`) and closed by it (:meth:`ServerState.stop`):
the batchers drain their queues, then the HTTP clients close. Routes reach it through
:func:`server_state`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from fastapi import Request

from .._orchestrator import Reranker
from .._secrets import mask
from ..backends._http import RetryPolicy
from .config import ServerConfig
from .errors import NotReadyError
from .micro_batching import BatcherPool
from .registry import ModelRegistry
from .service import RerankService

logger = logging.getLogger("dheera_local.server")


@dataclass
class ServerState:
    """The resources of one running app."""

    config: ServerConfig
    registry: ModelRegistry
    reranker: Reranker
    pool: BatcherPool
    service: RerankService
    started_at: int
    draining: bool = False

    @classmethod
    async def start(cls, config: ServerConfig, registry: ModelRegistry) -> ServerState:
        """Create the reranker and batchers, and load the local models."""
        settings = config.general_settings
        pool = BatcherPool(max_queue_pairs=settings.max_queue_pairs, max_batch_pairs=settings.max_batch_pairs)
        reranker = Reranker(retry=RetryPolicy(max_attempts=settings.num_retries + 1), local_wrapper=pool.wrap)
        state = cls(
            config=config,
            registry=registry,
            reranker=reranker,
            pool=pool,
            service=RerankService(reranker, registry, settings),
            started_at=int(time.time()),
        )
        await state._preload()
        return state

    async def _preload(self) -> None:
        for served in self.registry.models.values():
            if served.local is None:
                continue
            try:
                await asyncio.to_thread(served.local.model)
            except Exception as exc:  # noqa: BLE001 - reported by /health; requests may still fall back
                logger.warning("%s: local weights did not load (%s)", served.name, mask(str(exc)))

    async def stop(self) -> None:
        """Drain the batchers, then close the HTTP clients."""
        self.draining = True
        await asyncio.to_thread(self.pool.close, self.config.general_settings.graceful_shutdown_timeout)
        await self.reranker.aclose()
        self.reranker.close()
        logger.info("stopped: queues drained, clients closed")


def server_state(request: Request) -> ServerState:
    """The running app's state; 503 before startup finished or after shutdown began."""
    state = getattr(request.app.state, "dheera", None)
    if state is None:
        raise NotReadyError("the server is starting or shutting down; retry shortly")
    return state
