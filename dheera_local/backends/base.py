"""The one interface every backend implements."""

from __future__ import annotations

import asyncio
from typing import Protocol, runtime_checkable


@runtime_checkable
class Backend(Protocol):
    """Scores pairs. ``name`` is what the response reports as the serving backend."""

    name: str

    def score(self, query: str, texts: list[str]) -> list[float]:
        """Raw logits for ``(query, text)`` pairs, in the order of ``texts``."""
        ...

    async def ascore(self, query: str, texts: list[str]) -> list[float]:
        """The async twin of :meth:`score`; never blocks the event loop."""
        ...

    def describe(self) -> dict[str, str]:
        """Details worth reporting (device, dtype, endpoint), without secrets."""
        ...

    def numerics(self) -> str:
        """What computes the numbers, for the cache identity: scores are shared only between backends
        that give the same numerics (``float32``; ``bfloat16/cpu/onednn-packed``; ``tei:<endpoint>``)."""
        ...


def score_pairs(backend: Backend, pairs: list[tuple[str, str]]) -> list[float]:
    """Raw logits for pairs with mixed queries: one batched call when the backend can, else per query."""
    native = getattr(backend, "score_pairs", None)
    if native is not None:
        return native(pairs)
    out = [0.0] * len(pairs)
    for query, indices in _by_query(pairs).items():
        for index, logit in zip(indices, backend.score(query, [pairs[i][1] for i in indices]), strict=True):
            out[index] = logit
    return out


async def ascore_pairs(backend: Backend, pairs: list[tuple[str, str]]) -> list[float]:
    """The async twin of :func:`score_pairs`; queries are scored concurrently."""
    native = getattr(backend, "ascore_pairs", None)
    if native is not None:
        return await native(pairs)
    groups = _by_query(pairs)
    results = await asyncio.gather(*(backend.ascore(q, [pairs[i][1] for i in idx]) for q, idx in groups.items()))
    out = [0.0] * len(pairs)
    for indices, logits in zip(groups.values(), results, strict=True):
        for index, logit in zip(indices, logits, strict=True):
            out[index] = logit
    return out


def _by_query(pairs: list[tuple[str, str]]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for index, (query, _) in enumerate(pairs):
        groups.setdefault(query, []).append(index)
    return groups
