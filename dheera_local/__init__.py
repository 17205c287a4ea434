"""dheera_local: a local-first reranker with transparent remote fallback.

>>> import dheera_local as dheera_ai
>>> response = dheera_ai.rerank(model="huggingface/BAAI/bge-reranker-base", query="...", documents=[...])
"""

import importlib as _importlib
import typing as _typing

# Names are imported when first used (PEP 562): ``import dheera_local`` and ``dheera-local --help``
# stay fast, and torch loads only when a local model is planned.
_EXPORTS = {
    "AllBackendsFailedError": "._errors",
    "BackendError": "._errors",
    "ConfigError": "._errors",
    "DheeraError": "._errors",
    "Endpoint": ".providers",
    "InvalidRequestError": "._errors",
    "LocalBackendError": "._errors",
    "ModelNotAvailableError": "._errors",
    "OverloadedError": "._errors",
    "PairScores": "._orchestrator",
    "Provider": ".providers",
    "RedisCacheStore": "._cache_redis",
    "RemoteBackendError": "._errors",
    "RerankResponse": "._response",
    "RerankResult": "._response",
    "Reranker": "._orchestrator",
    "RetryPolicy": ".backends._http",
    "Settings": "._settings",
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
    from ._orchestrator import PairScores, Reranker
    from ._response import RerankResponse, RerankResult
    from ._runtime import close_all
    from ._settings import Settings
    from .backends._http import RetryPolicy
    from .providers import Endpoint, Provider, register_provider, unregister_provider


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dheera_local' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__version__ = "0.1.0"

__all__ = [
    "AllBackendsFailedError",
    "BackendError",
    "ConfigError",
    "DheeraError",
    "Endpoint",
    "InvalidRequestError",
    "LocalBackendError",
    "ModelNotAvailableError",
    "OverloadedError",
    "RedisCacheStore",
    "RemoteBackendError",
    "PairScores",
    "Provider",
    "RerankResponse",
    "RerankResult",
    "Reranker",
    "RetryPolicy",
    "Settings",
    "ShuttingDownError",
    "UnsupportedModelError",
    "__version__",
    "arerank",
    "close_all",
    "register_provider",
    "rerank",
    "unregister_provider",
]
