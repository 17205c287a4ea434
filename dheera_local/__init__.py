"""dheera_local: a local-first reranker with transparent remote fallback.

>>> import dheera_local as dheera_ai
>>> response = dheera_ai.rerank(model="huggingface/BAAI/bge-reranker-base", query="...", documents=[...])
"""

import importlib as _importlib
import typing as _typing

# Names are imported when first used (PEP 562): ``import dheera_local`` and ``dheera-local --help``
# stay fast, and torch loads only when a local model is planned.
# Every type a public signature names is here too (tests/test_public_surface.py walks them), so a user can
# annotate what they pass to and get from the engine.
_EXPORTS = {
    "AllBackendsFailedError": "._errors",
    "ApiVersion": "._response",
    "Backend": "._backend",
    "BackendError": "._errors",
    "Backends": "._engine.factory",
    "BilledUnits": "._response",
    "CacheStore": "._cache.store",
    "ConfigError": "._errors",
    "DheeraError": "._errors",
    "Endpoint": ".providers",
    "HttpClients": "._remote.http",
    "InvalidRequestError": "._errors",
    "LocalBackend": "._local.backend",
    "LocalBackendError": "._errors",
    "LlmFamily": "._models.llm_templates",
    "ModelBackend": "._backend",
    "ModelIdentity": "._models.identity",
    "ModelNotAvailableError": "._errors",
    "OverloadedError": "._errors",
    "PairScores": "._engine.orchestrator",
    "Plan": "._engine.plan",
    "Provider": ".providers",
    "RedisCacheStore": "._cache.shared_tier",
    "RemoteBackendError": "._errors",
    "RerankMeta": "._response",
    "RerankOptions": "._options",
    "RerankRequest": "._engine.request",
    "RerankResponse": "._response",
    "RerankResult": "._response",
    "Reranker": "._engine.orchestrator",
    "RetryPolicy": "._remote.http",
    "ServedBy": "._response",
    "Settings": "._settings",
    "Tokens": "._response",
    "ShuttingDownError": "._errors",
    "UnsupportedModelError": "._errors",
    "arerank": "._api",
    "close_all": "._engine.runtime",
    "register_llm_family": "._models.llm_templates",
    "register_provider": ".providers",
    "rerank": "._api",
    "unregister_llm_family": "._models.llm_templates",
    "unregister_provider": ".providers",
}

if _typing.TYPE_CHECKING:  # what the names are, for type checkers and IDEs
    from ._api import arerank, rerank
    from ._backend import Backend, ModelBackend
    from ._cache.shared_tier import RedisCacheStore
    from ._cache.store import CacheStore
    from ._engine.factory import Backends
    from ._engine.orchestrator import PairScores, Reranker
    from ._engine.plan import Plan
    from ._engine.request import RerankRequest
    from ._engine.runtime import close_all
    from ._errors import (
        AllBackendsFailedError,
        BackendError,
        ConfigError,
        DheeraError,
        InvalidRequestError,
        LocalBackendError,
        ModelNotAvailableError,
        OverloadedError,
        RemoteBackendError,
        ShuttingDownError,
        UnsupportedModelError,
    )
    from ._local.backend import LocalBackend
    from ._models.identity import ModelIdentity
    from ._models.llm_templates import LlmFamily, register_llm_family, unregister_llm_family
    from ._options import RerankOptions
    from ._remote.http import HttpClients, RetryPolicy
    from ._response import ApiVersion, BilledUnits, RerankMeta, RerankResponse, RerankResult, ServedBy, Tokens
    from ._settings import Settings
    from .providers import Endpoint, Provider, register_provider, unregister_provider


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dheera_local' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    # The public names only: not the loader's helpers, nor the private modules importing them leaves here.
    return sorted(__all__)


__version__ = "0.1.0"

__all__ = [
    "AllBackendsFailedError",
    "ApiVersion",
    "Backend",
    "BackendError",
    "Backends",
    "BilledUnits",
    "CacheStore",
    "ConfigError",
    "DheeraError",
    "Endpoint",
    "HttpClients",
    "InvalidRequestError",
    "LlmFamily",
    "LocalBackend",
    "LocalBackendError",
    "ModelBackend",
    "ModelIdentity",
    "ModelNotAvailableError",
    "OverloadedError",
    "PairScores",
    "Plan",
    "RedisCacheStore",
    "RemoteBackendError",
    "RerankMeta",
    "RerankOptions",
    "Provider",
    "RerankRequest",
    "RerankResponse",
    "RerankResult",
    "Reranker",
    "RetryPolicy",
    "ServedBy",
    "Settings",
    "ShuttingDownError",
    "Tokens",
    "UnsupportedModelError",
    "__version__",
    "arerank",
    "close_all",
    "register_llm_family",
    "register_provider",
    "rerank",
    "unregister_llm_family",
    "unregister_provider",
]
