"""The one interface every backend implements."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Backend(Protocol):
    """Scores pairs. ``name`` is what the response reports as the serving backend.

    The orchestrator calls :meth:`score_pairs` / :meth:`ascore_pairs` (pairs with mixed queries: a
    chunked document's windows, a ``score`` file's rows); :class:`PairsByQuery` gives them to a backend
    that scores one query at a time, and :func:`conform` to an object handed in without them.
    """

    name: str

    def score(self, query: str, texts: list[str]) -> list[float]:
        """Raw logits for ``(query, text)`` pairs, in the order of ``texts``."""
        ...

    async def ascore(self, query: str, texts: list[str]) -> list[float]:
        """The async twin of :meth:`score`; never blocks the event loop."""
        ...

    def score_pairs(self, pairs: list[tuple[str, str]]) -> list[float]:
        """Raw logits for pairs with mixed queries, in input order."""
        ...

    async def ascore_pairs(self, pairs: list[tuple[str, str]]) -> list[float]:
        """The async twin of :meth:`score_pairs`."""
        ...

    def describe(self) -> dict[str, str]:
        """Details worth reporting (device, dtype, endpoint), without secrets."""
        ...

    def numerics(self) -> str:
        """What computes the numbers, for the cache identity: scores are shared only between backends
        that give the same numerics (``float32``; ``bfloat16/cpu/onednn-packed``; ``tei:<endpoint>``)."""
        ...


class PairsByQuery:
    """``score_pairs`` / ``ascore_pairs`` over ``score`` / ``ascore``: one call per distinct query (the
    async ones concurrent). The base of a backend whose API takes one query per request."""

    def score(self, query: str, texts: list[str]) -> list[float]:
        raise NotImplementedError

    async def ascore(self, query: str, texts: list[str]) -> list[float]:
        raise NotImplementedError

    def score_pairs(self, pairs: list[tuple[str, str]]) -> list[float]:
        out = [0.0] * len(pairs)
        for query, indices in _by_query(pairs).items():
            for index, logit in zip(indices, self.score(query, [pairs[i][1] for i in indices]), strict=True):
                out[index] = logit
        return out

    async def ascore_pairs(self, pairs: list[tuple[str, str]]) -> list[float]:
        groups = _by_query(pairs)
        results = await asyncio.gather(*(self.ascore(q, [pairs[i][1] for i in idx]) for q, idx in groups.items()))
        out = [0.0] * len(pairs)
        for indices, logits in zip(groups.values(), results, strict=True):
            for index, logit in zip(indices, logits, strict=True):
                out[index] = logit
        return out


class _Conformed(PairsByQuery):
    """An object with ``score``/``ascore`` but no pair methods, given them; every other attribute is its own."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.inner, attribute)

    def __repr__(self) -> str:
        return repr(self.inner)

    def score(self, query: str, texts: list[str]) -> list[float]:
        return self.inner.score(query, texts)  # type: ignore[no-any-return]

    async def ascore(self, query: str, texts: list[str]) -> list[float]:
        return await self.inner.ascore(query, texts)  # type: ignore[no-any-return]


def conform(backend: Any) -> Backend:
    """``backend`` as a full :class:`Backend`. Applied where backends come in from outside the package
    (a provider's ``make``, ``local_wrapper``): one written against ``score``/``ascore`` alone (the
    protocol before it held the pair methods) still serves, and below this point none is duck-typed."""
    if callable(getattr(backend, "score_pairs", None)) and callable(getattr(backend, "ascore_pairs", None)):
        return backend  # type: ignore[no-any-return]
    return _Conformed(backend)


def _by_query(pairs: list[tuple[str, str]]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for index, (query, _) in enumerate(pairs):
        groups.setdefault(query, []).append(index)
    return groups
