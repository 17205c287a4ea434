"""A backend that scores with a function you give it: for tests where the model is beside the point.

>>> from dheera_local import testing
>>> reranker = testing.fake_reranker()  # scores by word overlap between query and document
>>> response = reranker.rerank("any-org/any-model", "capital of france", ["tokyo", "paris, capital of france"])
>>> [result.index for result in response.results]
[1, 0]

The :class:`~dheera_local.Reranker` it makes is a real one (validation, cache, chunking, response,
errors): only the scoring is fake, and no model loads, no request leaves the process.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from pathlib import Path

from .._backend import PairsByQuery
from .._engine.factory import Backends
from .._engine.orchestrator import Reranker
from .._settings import Settings

Scorer = Callable[[str, str], float]


def word_overlap(query: str, document: str) -> float:
    """The number of the query's words the document contains (a logit; 0 when none)."""
    words = set(document.lower().split())
    return float(sum(word in words for word in set(query.lower().split())))


class FakeBackend(PairsByQuery):
    """Scores each ``(query, document)`` pair with ``score`` and records the calls in ``calls``."""

    name = "fake"

    def __init__(self, score: Scorer = word_overlap) -> None:
        self.score_pair = score
        self.calls: list[tuple[str, list[str]]] = []

    def score(self, query: str, texts: list[str]) -> list[float]:
        self.calls.append((query, list(texts)))
        return [float(self.score_pair(query, text)) for text in texts]

    async def ascore(self, query: str, texts: list[str]) -> list[float]:
        await asyncio.sleep(0)
        return self.score(query, texts)

    def describe(self) -> dict[str, str]:
        return {"endpoint": "fake"}

    def numerics(self) -> str:
        return f"fake:{getattr(self.score_pair, '__qualname__', 'scorer')}"


class FakeBackends(Backends):
    """Backends whose every remote endpoint, of any registered provider (:mod:`dheera_local.providers`),
    is one :class:`FakeBackend`: every remote backend is made by :meth:`Backends.endpoint`."""

    def __init__(self, backend: FakeBackend, settings: Settings) -> None:
        super().__init__(settings)
        self.fake = backend

    def endpoint(self, *args: object, **kwargs: object) -> FakeBackend:  # type: ignore[override]
        return self.fake


def fake_reranker(score: Scorer = word_overlap, cache_dir: Path | None = None) -> Reranker:
    """A Reranker that serves any hub id (``ORG/NAME``), or any name with ``api_base``, with ``score``.

    No weights are looked for (its hub cache is an empty folder) and the score cache lives in
    ``cache_dir`` (default: a new temporary folder). Its backend is ``reranker.backends.fake``.
    """
    root = Path(tempfile.mkdtemp(prefix="dheera-fake-"))
    settings = Settings(cache_dir=cache_dir or root / "score-cache", hub_cache=root / "empty-hub", hub_offline=False)
    return Reranker(settings=settings, backends=FakeBackends(FakeBackend(score), settings))
