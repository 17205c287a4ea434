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

from .._cache.shared_tier import RedisCacheStore
from .._engine.orchestrator import Reranker
from .._engine.runtime import close_all
from .._remote.http import RetryPolicy
from .._secrets import mask
from .config import GeneralSettings, ServerConfig
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
    tier: RedisCacheStore | None = None  # the shared score cache general_settings.cache_url names

    @classmethod
    def create(cls, config: ServerConfig) -> ServerState:
        """Read the settings, make the reranker and its batchers, plan every model (ConfigError names the
        key path of one that can never be served). Nothing loads and no thread starts yet."""
        settings = config.general_settings
        pool = BatcherPool(max_queue_pairs=settings.max_queue_pairs, max_batch_pairs=settings.max_batch_pairs)
        tier = _shared_tier(settings)
        router = config.router_settings
        retries = settings.num_retries
        if "num_retries" not in settings.model_fields_set and router.num_retries is not None:
            retries = router.num_retries  # LiteLLM's router_settings.num_retries, unless ours says otherwise
        reranker = Reranker(retry=RetryPolicy(max_attempts=retries + 1), local_wrapper=pool.wrap, cache=tier)
        registry = ModelRegistry.from_config(config, reranker)
        fallbacks: dict[str, list[str]] = {}
        for rule in router.fallbacks:
            for group, others in rule.items():
                fallbacks.setdefault(group, []).extend(others)
        return cls(
            config=config,
            registry=registry,
            reranker=reranker,
            pool=pool,
            service=RerankService(reranker, registry, settings, fallbacks),
            metrics=Metrics(pool.stats) if settings.metrics else None,
            started_at=int(time.time()),
            tier=tier,
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
                await asyncio.to_thread(served.local.prepare)
            except Exception as exc:  # noqa: BLE001 - reported by /health; requests may still fall back
                logger.warning("%s: local weights did not load (%s)", served.name, mask(str(exc)))

    async def stop(self) -> None:
        """Drain the batchers, close the HTTP clients, then what the process shares (caches, models)."""
        self.draining = True
        await asyncio.to_thread(self.pool.close, self.config.general_settings.graceful_shutdown_timeout)
        await self.reranker.aclose()
        self.reranker.close()
        if self.tier is not None:
            self.tier.close()
        close_all()
        logger.info("stopped: queues drained, clients closed")


def _shared_tier(settings: GeneralSettings) -> RedisCacheStore | None:
    """The shared score cache of ``general_settings.cache_url`` (None: the environment's, or the disk)."""
    if settings.cache_url is None:
        return None
    return RedisCacheStore(
        settings.cache_url.get_secret_value(), ttl=settings.cache_ttl, local=settings.cache_local,
        timeout=settings.cache_timeout,
    )  # fmt: skip


def server_state(request: Request) -> ServerState:
    """The running app's state; 503 before startup finished or after shutdown began."""
    state = getattr(request.app.state, "dheera", None)
    if state is None:
        raise NotReadyError("the server is starting or shutting down; retry shortly")
    return state
