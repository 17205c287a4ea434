"""The orchestrator: one path from a validated request to a response.

validate -> plan (which backends, which cache identity) -> dedupe pairs -> cache lookup -> score
the misses, falling back along the plan -> store -> sigmoid, sort, top_n -> response.
Nothing below this module calls back up; the sync and async paths share every step but the
scoring call itself. Work is done on (query, text) pairs, so reranking, chunked documents and
batch scoring of mixed queries go through the same cache and fallback logic.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .._backend import Backend, ModelBackend, tokens_of
from .._cache.shared_tier import RedisCacheStore, default_store
from .._cache.store import CacheStore, KeyMaker, PairCache, ScoreCache, credential_namespace
from .._errors import AllBackendsFailedError, BackendError, LocalBackendError
from .._local.chunking import ChunkSettings, TokenCounter, document_windows
from .._models.discovery import did_you_mean
from .._models.model_ref import parse_model
from .._options import DEFAULT_OPTIONS, RerankOptions, merge_options
from .._remote.http import HttpClients, RetryPolicy
from .._response import RerankMeta, RerankResponse, RerankResult, ServedBy
from .._settings import Settings
from .factory import Backends
from .plan import Plan, Selector
from .request import RerankRequest, build_request

logger = logging.getLogger("dheera_local")

DOCUMENTS_PER_SEARCH_UNIT = 100
Pair = tuple[str, str]


def sigmoid(logit: float) -> float:
    """The logistic function, computed without overflow for large |logit| (NaN stays NaN)."""
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    exp = math.exp(logit)
    return exp / (1.0 + exp)


def relevance_score(logit: float, options: RerankOptions = DEFAULT_OPTIONS) -> float:
    """The score reported for ``logit`` under ``options``: its sigmoid, or the logit itself under ``raw_scores``.
    The one place a logit becomes a score: ``rerank``, ``score`` and Ray all call it (NaN stays NaN)."""
    return logit if options.raw_scores else sigmoid(logit)


@dataclass
class PairScores:
    """Logits for a list of pairs, and where they came from."""

    logits: list[float]
    served_by: ServedBy
    tokens: int | None = None  # scored by a model (cache hits cost none); None: a remote did not say
    options: RerankOptions | None = None  # what they were scored with (None: the defaults)

    @property
    def scores(self) -> list[float]:
        """Relevance scores, as ``rerank`` reports them with the same options (sigmoid; raw with ``raw_scores``)."""
        options = self.options or DEFAULT_OPTIONS
        return [relevance_score(logit, options) for logit in self.logits]


@dataclass(frozen=True)
class _Keying:
    """How one candidate's scores are cached: their keys, and for how long (None: for ever, local)."""

    make: KeyMaker
    expire: float | None


def _keying(plan: Plan, index: int, cache: PairCache, remote_ttl: float) -> _Keying | None:
    """Candidate ``index``'s keying; None when its scores are not cached (a remote with TTL 0, or a folder
    that keeps no secret). A remote's identity also names its credential's namespace, so a wrong key
    is asked, not answered from the right one's entries. Raises BackendError as ``cache_identity`` does."""
    identity = plan.cache_identity(index)
    credential = getattr(plan.candidates[index], "credential", None)
    if credential is None:  # local: the weights and numerics say it all
        return _Keying(KeyMaker(identity), None)
    namespace = credential_namespace(cache, credential()) if remote_ttl > 0 else None
    if namespace is None:
        return None
    return _Keying(KeyMaker(dataclasses.replace(identity, numerics=f"{identity.numerics}#{namespace}")), remote_ttl)


@dataclass
class _Work:
    """Pairs in flight: the unique pairs, their cache keys, and the logits found so far.

    ``keys`` are under the cache identity of candidate ``keyed_index`` (the one expected to serve);
    a fallback that serves stores under its own identity.
    """

    plan: Plan
    cache: ScoreCache | None
    pairs: list[Pair]
    remote_ttl: float = 0.0
    logits: dict[Pair, float] = field(default_factory=dict)
    keys: dict[Pair, str] = field(default_factory=dict)
    keyed_index: int | None = None
    keyed_expire: float | None = None
    cache_hits: int = 0
    tokens: int | None = 0  # what the misses' backend read (None: it did not say)
    backend: Backend | None = None
    failures: list[tuple[str, BackendError]] = field(default_factory=list)

    @property
    def misses(self) -> list[Pair]:
        return [pair for pair in self.pairs if pair not in self.logits]

    @property
    def untried(self) -> list[tuple[int, Backend]]:
        """The candidates neither tried nor ruled out yet, with their index in the plan."""
        return list(enumerate(self.plan.candidates))[len(self.failures) :]

    def store(self, index: int, pairs: list[Pair], logits: list[float]) -> None:
        """Keep what candidate ``index`` scored, and cache it under that candidate's identity."""
        fresh = dict(zip(pairs, logits, strict=True))
        self.logits.update(fresh)
        if self.cache is None:
            return
        keys, expire = self.keys, self.keyed_expire
        if index != self.keyed_index:
            try:
                keying = _keying(self.plan, index, self.cache, self.remote_ttl)
            except BackendError:
                return  # a candidate whose numerics cannot be named is not cached
            if keying is None:
                return
            keys, expire = {pair: keying.make(*pair) for pair in fresh}, keying.expire
        elif not keys:
            return  # the keyed candidate's scores are not cached (a remote with TTL 0)
        self.cache.set_many({keys[pair]: logit for pair, logit in fresh.items()}, expire=expire)

    def served_by(self) -> ServedBy:
        details = self.backend.describe() if self.backend is not None else {}
        return ServedBy(
            backend=self.backend.name if self.backend is not None else "cache",
            model=self.plan.identity.model_id,
            cache_hits=self.cache_hits,
            scored=len(self.pairs) - self.cache_hits,
            fallbacks=[name for name, _ in self.failures],
            device=details.get("device"),
            dtype=details.get("dtype"),
            kernels=details.get("kernels"),
        )


class Reranker:
    """Serves rerank requests; owns its backends' resources (HTTP clients); thread- and task-safe.

    ``dheera_local.rerank`` uses a default instance (made on first use, closed by
    :func:`dheera_local.close_all`). Make your own to inject settings, a cache store, backends, an
    httpx transport or a retry policy, and close it when done (or use it as a context manager).

    Args:
        settings: What the environment would say (default: :meth:`Settings.from_env`, read now).
        cache: The store of open score caches (default: the shared tier ``DHEERA_CACHE_URL`` names, else
            the process's disk caches); a :class:`~dheera_local.RedisCacheStore` shares scores across hosts.
        backends: What builds the backends (default: one from ``settings``, ``retry`` and the transports).
        retry: Timeouts, attempts and backoff for remote calls (ignored with ``backends``).
        transport: An ``httpx.BaseTransport`` for the sync client (tests pass a MockTransport).
        async_transport: An ``httpx.AsyncBaseTransport`` for the async clients.
        local_wrapper: Called with each local backend planned; returns the backend to use (the proxy's
            micro-batcher). Ignored with ``backends``.
    """

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        cache: CacheStore | RedisCacheStore | None = None,
        backends: Backends | None = None,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
        local_wrapper: Callable[[ModelBackend], Backend] | None = None,
    ) -> None:
        self.settings = settings if settings is not None else Settings.from_env()
        self.caches = cache if cache is not None else default_store(self.settings)
        self.backends = backends or Backends(
            self.settings, clients=HttpClients(transport, async_transport), retry=retry, local_wrapper=local_wrapper
        )
        self.selector = Selector(self.backends, self.settings)

    def __enter__(self) -> Reranker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def plan(self, model: str, options: RerankOptions | None = None, **values: Any) -> Plan:
        """What would serve ``model`` with ``options`` (a :class:`RerankOptions`, and/or the keyword options
        of ``rerank``): the candidates in order, the local backend if any, the model's identity. Loads nothing."""
        return self.selector.plan(parse_model(model), merge_options(options, values))

    def rerank(
        self, model: str, query: str, documents: list[Any], top_n: int | None = None,
        return_documents: bool = False, *, options: RerankOptions | None = None, **values: Any,
    ) -> RerankResponse:  # fmt: skip
        """Validate and serve one request; see :func:`dheera_local.rerank`. The engine options are ``options``
        (made once, e.g. by an adapter) and/or the keyword options of ``rerank``."""
        request = build_request(model, query, documents, top_n, return_documents, options=options, **values)
        return self.run(request)

    async def arerank(
        self, model: str, query: str, documents: list[Any], top_n: int | None = None,
        return_documents: bool = False, *, options: RerankOptions | None = None, **values: Any,
    ) -> RerankResponse:  # fmt: skip
        """The async twin of :meth:`rerank`; blocking work runs in worker threads."""
        request = build_request(model, query, documents, top_n, return_documents, options=options, **values)
        return await self.arun(request)

    def run(self, request: RerankRequest) -> RerankResponse:
        """Serve a validated request."""
        if not request.texts:
            return _empty_response(request)
        work, windows = self._prepare_request(request, self.selector.plan(request.model, request.options))
        self._fill(work)
        return _response(request, work, windows)

    async def arun(self, request: RerankRequest) -> RerankResponse:
        """The async twin of :meth:`run`."""
        if not request.texts:
            return _empty_response(request)
        plan = self.selector.plan(request.model, request.options)  # file checks only: no weights load
        if self._prepared_quickly(request, plan):
            # A cache lookup is one SQLite SELECT (WAL: readers never wait on writers): cheaper on the
            # event loop than the ~1 ms a worker-thread round trip costs on a busy machine.
            work, windows = self._prepare_request(request, plan)
        else:
            work, windows = await asyncio.to_thread(self._prepare_request, request, plan)
        await self._afill(work)
        return _response(request, work, windows)

    def _prepare_request(self, request: RerankRequest, plan: Plan) -> tuple[_Work, list[list[str]]]:
        windows = self._windows(request, plan)
        pairs = [(request.query, window) for document in windows for window in document]
        return self._lookup(plan, request.options, pairs), windows

    def score_pairs(
        self, model: str, pairs: list[Pair], options: RerankOptions | None = None, **values: Any
    ) -> PairScores:
        """Logits for (query, document) pairs with any mix of queries, through the cache.

        Args:
            model: As for :meth:`rerank`.
            pairs: ``(query, document)`` strings.
            options: The engine options, made once (``score`` and Ray pass theirs to every chunk).
            **values: The keyword options of :func:`dheera_local.rerank` (backend, device, ...).
        """
        ref, opts = parse_model(model), merge_options(options, values)
        if not pairs:
            return _no_pairs(ref.name, opts)
        work = self._plan_and_lookup(ref, opts, pairs)
        self._fill(work)
        return _pair_scores(work, pairs, opts)

    async def ascore_pairs(
        self, model: str, pairs: list[Pair], options: RerankOptions | None = None, **values: Any
    ) -> PairScores:
        """The async twin of :meth:`score_pairs`."""
        ref, opts = parse_model(model), merge_options(options, values)
        if not pairs:
            return _no_pairs(ref.name, opts)
        work = await asyncio.to_thread(self._plan_and_lookup, ref, opts, pairs)
        await self._afill(work)
        return _pair_scores(work, pairs, opts)

    def _plan_and_lookup(self, ref: Any, options: RerankOptions, pairs: list[Pair]) -> _Work:
        return self._lookup(self.selector.plan(ref, options), options, pairs)

    def _open_cache(self, options: RerankOptions) -> ScoreCache | None:
        if not options.cache:
            return None
        return self.caches.open(options.cache_dir or self.settings.cache_dir, self.settings.cache_size_limit)

    def _lookup(self, plan: Plan, options: RerankOptions, pairs: list[Pair]) -> _Work:
        cache = self._open_cache(options)
        work = _Work(plan, cache, list(dict.fromkeys(pairs)), self.settings.remote_cache_ttl)
        if cache is None:
            return work
        for index, backend in work.untried:
            try:
                keying = _keying(plan, index, cache, work.remote_ttl)  # a reduced-precision model loads here
            except BackendError as exc:
                _record_failure(work, backend, exc)
                continue
            work.keyed_index = index
            if keying is None:
                break  # the candidate expected to serve is not cached: nothing to look up
            work.keys = {pair: keying.make(*pair) for pair in work.pairs}
            work.keyed_expire = keying.expire
            found = cache.get_many(list(work.keys.values()))
            work.logits = {pair: found[key] for pair, key in work.keys.items() if key in found}
            work.cache_hits = len(work.logits)
            break
        return work

    def _fill(self, work: _Work) -> None:
        misses = work.misses
        if not misses:
            return
        for index, backend in work.untried:
            try:
                logits = backend.score_pairs(misses)
            except BackendError as exc:
                _record_failure(work, backend, exc)
                continue
            work.backend, work.tokens = backend, tokens_of(logits)
            work.store(index, misses, logits)
            return
        raise _all_failed(work, self.settings.hub_cache)

    async def _afill(self, work: _Work) -> None:
        misses = work.misses
        if not misses:
            return
        for index, backend in work.untried:
            try:
                logits = await backend.ascore_pairs(misses)
            except BackendError as exc:
                _record_failure(work, backend, exc)
                continue
            work.backend, work.tokens = backend, tokens_of(logits)
            await asyncio.to_thread(work.store, index, misses, logits)
            return
        raise _all_failed(work, self.settings.hub_cache)

    def _prepared_quickly(self, request: RerankRequest, plan: Plan) -> bool:
        """True when preparing ``request`` does no slow first-time work (open a cache, load a model or
        a tokenizer), so it may run on the event loop."""
        options = request.options
        if options.cache:
            if not self.caches.is_open(options.cache_dir or self.settings.cache_dir):
                return False
            if plan.local is not None and not plan.local.numerics_known():
                return False  # naming the cache identity loads the model
        chunking = request.max_chunks_per_doc is not None or request.max_tokens_per_doc is not None
        return not chunking or plan.weights is None or self.backends.tokenizers.is_loaded(plan.weights.path)

    def _windows(self, request: RerankRequest, plan: Plan) -> list[list[str]]:
        settings = ChunkSettings(
            max_length=plan.max_length,
            max_chunks_per_doc=request.max_chunks_per_doc,
            max_tokens_per_doc=request.max_tokens_per_doc,
        )
        if not settings.enabled:
            return document_windows(request.query, request.texts, settings, TokenCounter.words())
        counter = self.backends.tokenizers.counter_for(plan.weights.path if plan.weights is not None else None)
        return document_windows(request.query, request.texts, settings, counter)

    def close(self) -> None:
        """Close the HTTP clients this reranker opened."""
        self.backends.close()

    async def aclose(self) -> None:
        """Close the HTTP clients, including this event loop's async client."""
        await self.backends.aclose()


def _record_failure(work: _Work, backend: Backend, exc: BackendError) -> None:
    work.failures.append((backend.name, exc))
    remaining = work.plan.candidates[len(work.failures) :]
    if remaining:
        logger.warning("%s backend failed (%s); falling back to %s", backend.name, exc, remaining[0].name)


def _no_pairs(model: str, options: RerankOptions) -> PairScores:
    return PairScores([], ServedBy(backend="none", model=model), options=options)


def _pair_scores(work: _Work, pairs: list[Pair], options: RerankOptions) -> PairScores:
    """Each pair's logit (duplicates included, scored once), what served them and the tokens read."""
    return PairScores([work.logits[pair] for pair in pairs], work.served_by(), work.tokens, options)


def _all_failed(work: _Work, hub_cache: Path) -> AllBackendsFailedError:
    tried = "; ".join(f"{name}: {error}" for name, error in work.failures)
    model = work.plan.identity.model_id
    hosted_only = all(name == "hf_hosted" for name, _ in work.failures)  # not an api_base of the caller's
    if hosted_only and work.plan.local is None and work.plan.identity.revision == "remote" and "/" in model:
        hint = (
            f"No weights for {model} on this machine either (searched {hub_cache}).{did_you_mean(model, hub_cache)} "
            f"Fix: run `dheera-local pull {model}` while online to score locally, "
            "check HF_TOKEN / api_key, or pass api_base for your own endpoint"
        )
    elif all(isinstance(error, LocalBackendError) for _, error in work.failures):
        hint = "Fix: check the model folder, device and dtype above, or pass api_base to fall back to an endpoint"
    else:
        hint = "Fix: check the endpoint and api_key above, or pass backend='local' / 'remote' to choose one"
    return AllBackendsFailedError(f"every backend failed for {model}: {tried}. {hint}", work.failures)


def _response(request: RerankRequest, work: _Work, windows: list[list[str]]) -> RerankResponse:
    scored = []
    for index, document in enumerate(windows):
        # A chunked document scores as its best window.
        logit = max(work.logits[(request.query, window)] for window in document)
        scored.append((index, relevance_score(logit, request.options)))
    scored.sort(key=lambda pair: (-pair[1], pair[0]))
    if request.top_n is not None:
        scored = scored[: request.top_n]
    # model_construct: these values were built here, not read from a user; validating them again
    # would be a third of the cost of a fully cached request.
    results = [
        RerankResult.model_construct(
            index=index,
            relevance_score=score,
            document=dict(request.documents[index]) if request.return_documents else None,
        )
        for index, score in scored
    ]
    units = search_units(sum(len(document) for document in windows))
    meta = RerankMeta.usage(units, work.tokens, work.served_by())
    return RerankResponse(results=results, id=str(uuid.uuid4()), meta=meta)


def search_units(windows: int) -> int:
    """Cohere's billing: one unit per query per 100 documents, a chunked document counting once per window."""
    return math.ceil(windows / DOCUMENTS_PER_SEARCH_UNIT)


def _empty_response(request: RerankRequest) -> RerankResponse:
    served = ServedBy(backend="none", model=request.model.name)
    return RerankResponse(results=[], id=str(uuid.uuid4()), meta=RerankMeta.usage(0, 0, served))
