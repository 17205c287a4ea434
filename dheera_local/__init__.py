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
    "Backend": ".backends.base",
    "BackendError": "._errors",
    "Backends": ".backends.factory",
    "BilledUnits": "._response",
    "CacheStore": "._cache",
    "ConfigError": "._errors",
    "DheeraError": "._errors",
    "Endpoint": ".providers",
    "HttpClients": ".backends._http",
    "InvalidRequestError": "._errors",
    "LocalBackend": ".backends.local",
    "LocalBackendError": "._errors",
    "ModelNotAvailableError": "._errors",
    "OverloadedError": "._errors",
    "PairScores": "._orchestrator",
    "Plan": "._selector",
    "Provider": ".providers",
    "RedisCacheStore": "._cache_redis",
    "RemoteBackendError": "._errors",
    "RerankMeta": "._response",
    "RerankOptions": "._options",
    "RerankRequest": "._request",
    "RerankResponse": "._response",
    "RerankResult": "._response",
    "Reranker": "._orchestrator",
    "RetryPolicy": ".backends._http",
    "ServedBy": "._response",
    "Settings": "._settings",
    "Tokens": "._response",
    "ShuttingDownError": "._errors",
    "UnsupportedModelError": "._errors",
    "arerank": "._api",
    "close_all": "._runtime",
    "register_provider": ".providers",
    "rerank": "._api",
    "unregister_provider": ".providers",
}

if _typing.TYPE_CHECKING:  # what the names are, for type checkers and IDEs
    from ._api import arerank, rerank
    from ._cache import CacheStore
    from ._cache_redis import RedisCacheStore
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
    from ._options import RerankOptions
    from ._orchestrator import PairScores, Reranker
    from ._request import RerankRequest
    from ._response import ApiVersion, BilledUnits, RerankMeta, RerankResponse, RerankResult, ServedBy, Tokens
    from ._runtime import close_all
    from ._selector import Plan
    from ._settings import Settings
    from .backends._http import HttpClients, RetryPolicy
    from .backends.base import Backend
    from .backends.factory import Backends
    from .backends.local import LocalBackend
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
    "LocalBackend",
    "LocalBackendError",
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
    "register_provider",
    "rerank",
    "unregister_provider",
]
