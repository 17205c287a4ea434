"""dheera_local: a local-first reranker with transparent remote fallback.

>>> import dheera_local as dheera_ai
>>> response = dheera_ai.rerank(model="huggingface/BAAI/bge-reranker-base", query="...", documents=[...])
"""

from ._api import arerank, rerank
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
from .backends._http import RetryPolicy

__version__ = "0.1.0"

__all__ = [
    "AllBackendsFailedError",
    "BackendError",
    "ConfigError",
    "DheeraError",
    "InvalidRequestError",
    "LocalBackendError",
    "ModelNotAvailableError",
    "OverloadedError",
    "RemoteBackendError",
    "PairScores",
    "RerankResponse",
    "RerankResult",
    "Reranker",
    "RetryPolicy",
    "ShuttingDownError",
    "UnsupportedModelError",
    "__version__",
    "arerank",
    "rerank",
]
