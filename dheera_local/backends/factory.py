"""Builds every backend a plan can hold, from shared resources: :class:`Backends`.

One per :class:`~dheera_local.Reranker` (injectable: ``Reranker(backends=...)``). It owns the pooled
HTTP clients and the endpoint limits its remote backends share (closed with it), and hands its
local backends the store of loaded models and the token counters (shared by the process unless
given others). ``local_wrapper`` wraps each local backend it serves (the proxy's micro-batcher).
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import SecretStr

from .._chunking import SHARED_TOKENIZERS, TokenizerStore
from .._discovery import LocalWeights
from .._kernel_verdicts import VerdictStore
from .._options import RerankOptions
from .._settings import Settings
from ._http import HttpClients, RetryPolicy
from .base import Backend
from .cohere import CohereBackend, is_cohere_api
from .hf_hosted import HFHostedBackend, is_hf_host
from .local import SHARED_MODELS, LocalBackend, ModelStore
from .tei import EndpointLimits, TEIBackend


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
        local_wrapper: Callable[[LocalBackend], Backend] | None = None,
    ) -> None:
        self.settings = settings
        self.clients = clients or HttpClients()
        self.policy = retry or RetryPolicy()
        self.models = models if models is not None else SHARED_MODELS
        self.tokenizers = tokenizers if tokenizers is not None else SHARED_TOKENIZERS
        self.local_wrapper = local_wrapper
        self.limits = EndpointLimits()

    def local(
        self, weights: LocalWeights, *, max_length: int, device: str | None, dtype: str | None,
        batch_tokens: int | None, prompt: str | None = None,
    ) -> LocalBackend:
        """The local backend for ``weights`` (the model loads on first use); ``prompt``: an LLM reranker's."""
        return LocalBackend(
            weights, max_length=max_length, device=device, dtype=dtype, batch_tokens=batch_tokens,
            cpu_kernels=self.settings.cpu_kernels, models=self.models, prompt=prompt,
            verdicts=VerdictStore(self.settings.cache_dir),
        )  # fmt: skip

    def serve(self, local: LocalBackend) -> Backend:
        """What serves ``local``'s requests: itself, or what ``local_wrapper`` makes of it."""
        return self.local_wrapper(local) if self.local_wrapper is not None else local

    def endpoint(self, api_format: str, options: RerankOptions, *, model: str) -> Backend:
        """The backend for ``options.api_base`` speaking ``api_format`` (one of ``API_FORMATS``), asked
        for ``model`` (the name the endpoint knows; TEI serves one model and ignores it)."""
        assert options.api_base is not None
        base, key, timeout = options.api_base, options.api_key, options.timeout
        if api_format == "tei":
            return self.tei(base, key, timeout)
        if api_format == "hf":  # a dedicated HF Inference Endpoint: api_base is its URL
            return self.hf_hosted(model, key, timeout, url=base)
        return self.cohere(base, model, key, timeout)

    def tei(self, api_base: str, api_key: SecretStr | None, timeout: float | None) -> TEIBackend:
        return TEIBackend(api_base, self.limits, self.clients, self.policy, api_key, timeout)

    def hf_hosted(
        self, hub_id: str, api_key: SecretStr | None, timeout: float | None, url: str | None = None
    ) -> HFHostedBackend:
        """Text classification for ``hub_id``: at ``url`` (an Inference Endpoint), else on HF hosted
        inference (the settings' URL); the token is ``api_key``, else the settings' HF token when ``url`` is
        HuggingFace's (:func:`is_hf_host`): another server is not sent a token it was not made for."""
        url = url or f"{self.settings.hf_inference_url}/models/{hub_id}"
        token = api_key
        if token is None and is_hf_host(url, self.settings.hf_inference_url):
            token = self.settings.hf_token  # the environment's token goes to HuggingFace only
        return HFHostedBackend(url, self.clients, self.policy, token, timeout)

    def cohere(self, api_base: str, model: str, api_key: SecretStr | None, timeout: float | None) -> CohereBackend:
        """A Cohere-compatible endpoint. Without ``api_key``, Cohere's own API gets ``CO_API_KEY`` (as the
        cohere SDK reads it); other servers get no key: the Cohere key is not theirs to see."""
        if api_key is None and is_cohere_api(api_base):
            api_key = self.settings.cohere_api_key
        return CohereBackend(api_base, model, self.clients, self.policy, api_key, timeout)

    def close(self) -> None:
        """Close the sync HTTP client."""
        self.clients.close()

    async def aclose(self) -> None:
        """Close this event loop's async client and the sync one."""
        await self.clients.aclose()
        self.clients.close()
