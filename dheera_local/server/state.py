"""What a server owns: the Reranker, the micro-batchers, the model registry, the service over them.

Made with the app (:meth:`ServerState.create`: the settings are read and every model is planned
then); the lifespan starts it (:meth:`ServerState.start`: local weights load) and stops it
(:meth:`ServerState.stop`: the batchers drain their queues, the HTTP clients close, and the
process's shared resources are closed, :func:`dheera_local.close_all`). Routes reach it through
:func:`server_state`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from fastapi import Request

from .._orchestrator import Reranker
from .._runtime import close_all
from .._secrets import mask
from ..backends._http import RetryPolicy
from .config import ServerConfig
from .errors import NotReadyError
from .metrics import Metrics
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
    metrics: Metrics | None
    started_at: int
    draining: bool = False

    @classmethod
    def create(cls, config: ServerConfig) -> ServerState:
        """Read the settings, make the reranker and its batchers, plan every model (ConfigError names the
        key path of one that can never be served). Nothing loads and no thread starts yet."""
        settings = config.general_settings
        pool = BatcherPool(max_queue_pairs=settings.max_queue_pairs, max_batch_pairs=settings.max_batch_pairs)
        reranker = Reranker(retry=RetryPolicy(max_attempts=settings.num_retries + 1), local_wrapper=pool.wrap)
        registry = ModelRegistry.from_config(config, reranker)
        return cls(
            config=config,
            registry=registry,
            reranker=reranker,
            pool=pool,
            service=RerankService(reranker, registry, settings),
            metrics=Metrics(pool.stats) if settings.metrics else None,
            started_at=int(time.time()),
        )

    async def start(self) -> None:
        """Load the local models, so the first request does not wait for them."""
        self.started_at = int(time.time())
        await self._preload()

    async def _preload(self) -> None:
        for served in self.registry.models.values():
            if served.local is None:
                continue
            try:
                await asyncio.to_thread(served.local.model)
            except Exception as exc:  # noqa: BLE001 - reported by /health; requests may still fall back
                logger.warning("%s: local weights did not load (%s)", served.name, mask(str(exc)))

    async def stop(self) -> None:
        """Drain the batchers, close the HTTP clients, then what the process shares (caches, models)."""
        self.draining = True
        await asyncio.to_thread(self.pool.close, self.config.general_settings.graceful_shutdown_timeout)
        await self.reranker.aclose()
        self.reranker.close()
        close_all()
        logger.info("stopped: queues drained, clients closed")


def server_state(request: Request) -> ServerState:
    """The running app's state; 503 before startup finished or after shutdown began."""
    state = getattr(request.app.state, "dheera", None)
    if state is None:
        raise NotReadyError("the server is starting or shutting down; retry shortly")
    return state
