"""Builds every backend a plan can hold, from shared resources: :class:`Backends`.

One per :class:`~dheera_local.Reranker` (injectable: ``Reranker(backends=...)``). It owns the pooled
HTTP clients and the state its remote backends share (closed with it), and hands its
local backends the store of loaded models and the token counters (shared by the process unless
given others). ``local_wrapper`` wraps each local backend it serves (the proxy's micro-batcher).
Remote backends come from the provider registry (:mod:`dheera_local.providers`), through
:meth:`Backends.endpoint` alone: it knows no provider by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._backend import Backend, ModelBackend, conform
from .._local.backend import SHARED_MODELS, LocalBackend, ModelStore
from .._local.chunking import SHARED_TOKENIZERS, TokenizerStore
from .._local.kernel_verdicts import VerdictStore
from .._models.discovery import LocalWeights
from .._models.identity import ModelIdentity
from .._options import RerankOptions
from .._remote.http import HttpClients, RetryPolicy
from .._settings import Settings
from ..providers import Endpoint, get_provider


class Backends:
    """Makes local and remote backends that share this object's resources.

    Args:
        settings: Where HF hosted inference is, its token, the CPU kernel choice.
        clients: Pooled HTTP clients (default: new ones, closed by :meth:`close` / :meth:`aclose`).
        retry: Timeouts, attempts and backoff for remote calls.
        models: The loaded-model store (default: the process's).
        tokenizers: The token counters for chunking (default: the process's).
        local_wrapper: Called with each local backend served; returns the backend to use.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clients: HttpClients | None = None,
        retry: RetryPolicy | None = None,
        models: ModelStore | None = None,
        tokenizers: TokenizerStore | None = None,
        local_wrapper: Callable[[ModelBackend], Backend] | None = None,
    ) -> None:
        self.settings = settings
        self.clients = clients or HttpClients()
        self.policy = retry or RetryPolicy()
        self.models = models if models is not None else SHARED_MODELS
        self.tokenizers = tokenizers if tokenizers is not None else SHARED_TOKENIZERS
        self.local_wrapper = local_wrapper
        self.provider_state: dict[str, dict[str, Any]] = {}  # per provider: its Endpoint.state

    def local(
        self,
        weights: LocalWeights,
        *,
        max_length: int,
        device: str | None,
        dtype: str | None,
        batch_tokens: int | None,
        prompt: str | None = None,
        identity: ModelIdentity | None = None,
    ) -> LocalBackend:
        """The local backend for ``weights`` (the model loads on first use); ``prompt``: an LLM reranker's;
        ``identity``: the plan's, which the backend completes with where and how the model runs."""
        return LocalBackend(
            weights, max_length=max_length, device=device, dtype=dtype, batch_tokens=batch_tokens,
            cpu_kernels=self.settings.cpu_kernels, models=self.models, prompt=prompt,
            verdicts=VerdictStore(self.settings.cache_dir), identity=identity,
        )  # fmt: skip

    def serve(self, local: ModelBackend) -> Backend:
        """What serves ``local``'s requests: itself, or what ``local_wrapper`` makes of it."""
        return conform(self.local_wrapper(local)) if self.local_wrapper is not None else local

    def endpoint(self, api_format: str, options: RerankOptions, *, model: str) -> Backend:
        """The backend of the provider registered as ``api_format`` (:mod:`dheera_local.providers`) for
        ``options.api_base`` (None: the provider's default API), asked for ``model`` (the name the endpoint
        knows). Without ``api_key``, the provider's key from the environment goes only where the provider
        says it belongs."""
        provider = get_provider(api_format)
        api_base = options.api_base or provider.default_api_base
        key = options.api_key
        if key is None and provider.sends_env_key(api_base):
            key = self.settings.provider_keys.get(provider.name)
        state = self.provider_state.setdefault(provider.name, {})
        endpoint = Endpoint(api_base, model, key, options.timeout, self.clients, self.policy, self.settings, state)
        return conform(provider.make(endpoint))

    def close(self) -> None:
        """Close the sync HTTP client."""
        self.clients.close()

    async def aclose(self) -> None:
        """Close this event loop's async client and the sync one."""
        await self.clients.aclose()
        self.clients.close()
