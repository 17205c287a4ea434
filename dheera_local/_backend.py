"""The one interface every backend implements."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ._models.identity import ModelIdentity


class Logits(list[float]):
    """Raw logits in input order, and the tokens the backend read to compute them, when it knows.

    A list, so every backend may keep answering plain lists: the tokens ride along where known.
    ``pair_tokens``: one count per pair (a local model: the pair's input ids after truncation, special
    tokens included, no padding); ``tokens``: in all (their sum, or the usage a remote reported);
    None: not known (a remote whose answer carries no usage).
    """

    def __init__(
        self, values: Iterable[float] = (), *, tokens: int | None = None, pair_tokens: list[int] | None = None
    ) -> None:
        super().__init__(values)
        self.pair_tokens = pair_tokens
        self.tokens = sum(pair_tokens) if pair_tokens is not None else tokens

    def part(self, start: int, stop: int) -> list[float]:
        """Pairs ``start:stop``, with their tokens when they are known per pair (a micro-batcher's slice)."""
        if self.pair_tokens is None:
            return list(self[start:stop])
        return Logits(self[start:stop], pair_tokens=self.pair_tokens[start:stop])


def tokens_of(logits: list[float]) -> int | None:
    """The tokens behind ``logits`` (a :class:`Logits`), None when the backend did not say."""
    return getattr(logits, "tokens", None)


def total_tokens(parts: Iterable[list[float]]) -> int | None:
    """The sum of the parts' tokens; None as soon as one part's are unknown."""
    total = 0
    for part in parts:
        tokens = tokens_of(part)
        if tokens is None:
            return None
        total += tokens
    return total


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


@runtime_checkable
class ModelBackend(Backend, Protocol):
    """A backend that runs a model on this machine: what the engine, the proxy, ``score`` and Ray ask of
    the local backend besides scoring, so none of them reaches for its concrete class.
    ``identity``: the planned model with where and how it runs (device, dtype, kernels, token budget)."""

    identity: ModelIdentity

    def prepare(self) -> None:
        """Load the model now (startup), rather than inside the first request; raises LocalBackendError."""
        ...

    def numerics_known(self) -> bool:
        """True when :meth:`numerics` answers without loading the model."""
        ...


class PairsByQuery:
    """``score_pairs`` / ``ascore_pairs`` over ``score`` / ``ascore``: one call per distinct query (the
    async ones concurrent). The base of a backend whose API takes one query per request."""

    def score(self, query: str, texts: list[str]) -> list[float]:
        raise NotImplementedError

    async def ascore(self, query: str, texts: list[str]) -> list[float]:
        raise NotImplementedError

    def score_pairs(self, pairs: list[tuple[str, str]]) -> list[float]:
        groups = _by_query(pairs)
        results = [self.score(query, [pairs[i][1] for i in indices]) for query, indices in groups.items()]
        return _merged(len(pairs), groups, results)

    async def ascore_pairs(self, pairs: list[tuple[str, str]]) -> list[float]:
        groups = _by_query(pairs)
        results = await asyncio.gather(*(self.ascore(q, [pairs[i][1] for i in idx]) for q, idx in groups.items()))
        return _merged(len(pairs), groups, list(results))


def _merged(count: int, groups: dict[str, list[int]], results: list[list[float]]) -> Logits:
    """Each query's logits back in pair order, with the tokens of them all (None if one is unknown)."""
    out = [0.0] * count
    for indices, logits in zip(groups.values(), results, strict=True):
        for index, logit in zip(indices, logits, strict=True):
            out[index] = logit
    return Logits(out, tokens=total_tokens(results))


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
