"""What the process shares, and the one owner that closes it: :func:`close_all`.

Shared: the loaded models (:data:`~dheera_local._local.backend.SHARED_MODELS`), the tokenizers that window
long documents (:data:`~dheera_local._local.chunking.SHARED_TOKENIZERS`), the open score caches
(:data:`~dheera_local._cache.store.SHARED_CACHES`), the shared tiers
(:data:`~dheera_local._cache.shared_tier.SHARED_TIERS`) and the default :class:`~dheera_local.Reranker` behind
``dheera_local.rerank``. Whoever owns the process calls :func:`close_all` when done: the proxy's
lifespan, the CLI, a test; the next call starts afresh (and reads the environment again).
"""

from __future__ import annotations

import threading

from .._cache.shared_tier import SHARED_TIERS
from .._cache.store import SHARED_CACHES
from .._local.backend import SHARED_MODELS
from .._local.chunking import SHARED_TOKENIZERS
from .orchestrator import Reranker

_default: Reranker | None = None
_lock = threading.Lock()


def default_reranker() -> Reranker:
    """The Reranker behind the module-level functions, made (reading the environment) on first use."""
    global _default
    with _lock:
        if _default is None:
            _default = Reranker()
        return _default


def close_default() -> None:
    """Close the default Reranker's HTTP clients; the next call makes a new one (fresh settings)."""
    global _default
    with _lock:
        reranker, _default = _default, None
    if reranker is not None:
        reranker.close()


def close_all() -> None:
    """Close everything the process shares: the default Reranker, the score caches, the loaded models
    and tokenizers (memory is freed once no caller holds them)."""
    close_default()
    SHARED_CACHES.close()
    SHARED_TIERS.close()
    SHARED_MODELS.clear()
    SHARED_TOKENIZERS.clear()
