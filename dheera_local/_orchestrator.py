"""The orchestrator: one path from a validated request to a response.

validate -> plan (which backends, which cache identity) -> dedupe -> cache lookup -> score the
misses, falling back along the plan -> store -> sigmoid, sort, top_n -> response.
Nothing below this module calls back up; the sync and async paths share every step but the
scoring call itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from dataclasses import dataclass, field
from typing import Any

from ._cache import ScoreCache, cache_key, open_cache
from ._errors import AllBackendsFailedError, BackendError
from ._request import RerankRequest, build_request
from ._response import BilledUnits, RerankMeta, RerankResponse, RerankResult, ServedBy
from ._selector import Plan, Selector
from .backends.base import Backend
from .backends.remote import RemoteFactory

logger = logging.getLogger("dheera_local")

DOCUMENTS_PER_SEARCH_UNIT = 100


def sigmoid(logit: float) -> float:
    """The logistic function, computed without overflow for large |logit|."""
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    exp = math.exp(logit)
    return exp / (1.0 + exp)


@dataclass
class _Work:
    """One request in flight: unique texts, their cache keys, and the logits found so far."""

    request: RerankRequest
    plan: Plan
    cache: ScoreCache | None
    keys: dict[str, str]
    logits: dict[str, float]
    cache_hits: int = 0
    backend: Backend | None = None
    failures: list[tuple[str, BackendError]] = field(default_factory=list)

    @property
    def misses(self) -> list[str]:
        return [text for text in self.keys if text not in self.logits]

    def store(self, texts: list[str], logits: list[float]) -> None:
        fresh = dict(zip(texts, logits, strict=True))
        self.logits.update(fresh)
        if self.cache is not None:
            self.cache.set_many({self.keys[text]: logit for text, logit in fresh.items()})


class Reranker:
    """Owns the resources of reranking (HTTP clients, backend selection); thread- and task-safe.

    ``dheera_local.rerank`` uses a process-wide instance; create your own to inject an HTTP
    transport or retry policy, and close it when done.
    """

    def __init__(self, remote: RemoteFactory | None = None) -> None:
        self.remote = remote or RemoteFactory()
        self.selector = Selector(self.remote)

    def rerank(
        self,
        model: str,
        query: str,
        documents: list[Any],
        top_n: int | None = None,
        return_documents: bool = False,
        **options: Any,
    ) -> RerankResponse:
        """Validate and serve one request; see :func:`dheera_local.rerank`."""
        return self.run(build_request(model, query, documents, top_n, return_documents, **options))

    async def arerank(
        self,
        model: str,
        query: str,
        documents: list[Any],
        top_n: int | None = None,
        return_documents: bool = False,
        **options: Any,
    ) -> RerankResponse:
        """The async twin of :meth:`rerank`; blocking work runs in worker threads."""
        return await self.arun(build_request(model, query, documents, top_n, return_documents, **options))

    def run(self, request: RerankRequest) -> RerankResponse:
        if not request.texts:
            return _empty_response(request)
        work = self._prepare(request)
        misses = work.misses
        if misses:
            logits = self._score(work, misses)
            work.store(misses, logits)
        return _response(work)

    async def arun(self, request: RerankRequest) -> RerankResponse:
        if not request.texts:
            return _empty_response(request)
        work = await asyncio.to_thread(self._prepare, request)
        misses = work.misses
        if misses:
            logits = await self._ascore(work, misses)
            await asyncio.to_thread(work.store, misses, logits)
        return _response(work)

    def _prepare(self, request: RerankRequest) -> _Work:
        plan = self.selector.plan(request.model, request.options)
        keys = {text: cache_key(plan.identity, request.query, text) for text in dict.fromkeys(request.texts)}
        cache = open_cache(request.options.cache_dir) if request.options.use_cache else None
        found = cache.get_many(list(keys.values())) if cache is not None else {}
        logits = {text: found[key] for text, key in keys.items() if key in found}
        return _Work(request, plan, cache, keys, logits, cache_hits=len(logits))

    def _score(self, work: _Work, texts: list[str]) -> list[float]:
        for backend in work.plan.candidates:
            try:
                logits = backend.score(work.request.query, texts)
            except BackendError as exc:
                _record_failure(work, backend, exc)
                continue
            work.backend = backend
            return logits
        raise _all_failed(work)

    async def _ascore(self, work: _Work, texts: list[str]) -> list[float]:
        for backend in work.plan.candidates:
            try:
                logits = await backend.ascore(work.request.query, texts)
            except BackendError as exc:
                _record_failure(work, backend, exc)
                continue
            work.backend = backend
            return logits
        raise _all_failed(work)

    def close(self) -> None:
        """Close the HTTP clients this reranker opened."""
        self.remote.close()

    async def aclose(self) -> None:
        await self.remote.aclose()


def _record_failure(work: _Work, backend: Backend, exc: BackendError) -> None:
    work.failures.append((backend.name, exc))
    remaining = work.plan.candidates[len(work.failures) :]
    if remaining:
        logger.warning("%s backend failed (%s); falling back to %s", backend.name, exc, remaining[0].name)


def _all_failed(work: _Work) -> AllBackendsFailedError:
    tried = "; ".join(f"{name}: {error}" for name, error in work.failures)
    model = work.plan.identity.model_id
    hint = (
        "Fix: check the endpoint and api_key above, run `dheera-local pull` to score locally, "
        "or pass backend='local' / 'remote' to choose one"
    )
    return AllBackendsFailedError(f"every backend failed for {model}: {tried}. {hint}", work.failures)


def _served_by(work: _Work) -> ServedBy:
    details = work.backend.describe() if work.backend is not None else {}
    return ServedBy(
        backend=work.backend.name if work.backend is not None else "cache",
        model=work.plan.identity.model_id,
        cache_hits=work.cache_hits,
        scored=len(work.keys) - work.cache_hits,
        fallbacks=[name for name, _ in work.failures],
        device=details.get("device"),
        dtype=details.get("dtype"),
    )


def _response(work: _Work) -> RerankResponse:
    request = work.request
    raw = request.options.raw_scores
    scored = [
        (index, work.logits[text] if raw else sigmoid(work.logits[text])) for index, text in enumerate(request.texts)
    ]
    scored.sort(key=lambda pair: (-pair[1], pair[0]))
    if request.top_n is not None:
        scored = scored[: request.top_n]
    results = [
        RerankResult(
            index=index,
            relevance_score=score,
            document=dict(request.documents[index]) if request.return_documents else None,
        )
        for index, score in scored
    ]
    meta = RerankMeta(billed_units=BilledUnits(search_units=search_units(request)), dheera_local=_served_by(work))
    return RerankResponse(results=results, id=str(uuid.uuid4()), meta=meta)


def search_units(request: RerankRequest) -> int:
    """Cohere's billing: one unit per query per 100 documents."""
    return math.ceil(len(request.texts) / DOCUMENTS_PER_SEARCH_UNIT)


def _empty_response(request: RerankRequest) -> RerankResponse:
    served = ServedBy(backend="none", model=request.model.name)
    return RerankResponse(results=[], id=str(uuid.uuid4()), meta=RerankMeta(dheera_local=served))
