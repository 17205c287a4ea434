"""What the rerank routes do, between a parsed body and the orchestrator.

Resolve the model name, enforce the document limit, validate with ``build_request`` (the same
rules as ``dheera_local.rerank``), run it through the :class:`~dheera_local.Reranker`, and shape
the answer as Cohere (``{"results", "id", "meta"}``) or TEI (a bare ``[{index, score[, text]}]``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import __version__
from .._engine.orchestrator import Reranker
from .._engine.request import RerankRequest, build_request
from .._errors import AllBackendsFailedError, DheeraError, OverloadedError, ShuttingDownError
from .._options import RerankOptions
from .._response import ApiVersion, RerankResponse, ServedBy
from .coalescing import Coalescer, request_key
from .config import GeneralSettings
from .errors import RequestTooLargeError
from .keys import CURRENT_KEY
from .registry import ModelRegistry, ServedModel
from .routing import Router
from .schemas import CohereRerankRequest, CohereV2RerankRequest, TEIRerankRequest

logger = logging.getLogger("dheera_local.server")


@dataclass
class Answer:
    """A route's JSON payload, and who served it (for the response headers and the access log)."""

    payload: Any
    served_by: ServedBy | None
    model_name: str
    documents: int
    tokens: int | None = None  # scored by a model for this answer (meta.tokens); None: a remote did not say


class RerankService:
    """Serves rerank requests for the configured models."""

    def __init__(
        self, reranker: Reranker, registry: ModelRegistry, settings: GeneralSettings,
        fallbacks: dict[str, list[str]] | None = None,
    ) -> None:  # fmt: skip
        self.reranker = reranker
        self.registry = registry
        self.settings = settings
        self.coalescer = Coalescer()
        self.router = Router(registry.groups, fallbacks or {})

    async def cohere(
        self, body: CohereRerankRequest | CohereV2RerankRequest, *, model: str | None, version: str
    ) -> Answer:
        """A Cohere-format request; ``model`` (from the URL) overrides the body's."""
        served = self.registry.resolve(model if model is not None else body.model)
        self._check_count(len(body.documents), "documents")

        def make(deployment: ServedModel) -> RerankRequest:
            return build_request(
                deployment.model, body.query, body.documents, body.top_n, body.return_documents,
                rank_fields=getattr(body, "rank_fields", None),
                max_chunks_per_doc=getattr(body, "max_chunks_per_doc", None),
                max_tokens_per_doc=body.max_tokens_per_doc, options=_body_options(deployment.options, body),
            )  # fmt: skip

        response = await self._run(served, make)
        response.meta.api_version = ApiVersion(version=version)
        meta = response.meta
        return Answer(response.model_dump(), meta.dheera_local, served.name, len(body.documents), response.input_tokens)

    async def tei(self, body: TEIRerankRequest, *, model: str | None) -> Answer:
        """A TEI-format request: all texts ranked best first (``top_n`` honoured as an extension)."""
        served = self.registry.resolve(model)
        self._check_count(len(body.texts), "texts")

        def make(deployment: ServedModel) -> RerankRequest:
            return build_request(
                deployment.model,
                body.query,
                body.texts,
                body.top_n,
                False,
                options=_body_options(deployment.options, body),
            )

        response = await self._run(served, make)
        ranks = [_tei_rank(result.index, result.relevance_score, body) for result in response.results]
        return Answer(ranks, response.meta.dheera_local, served.name, len(body.texts), response.input_tokens)

    async def _run(self, served: ServedModel, make: Callable[[ServedModel], RerankRequest]) -> RerankResponse:
        """Serve the request ``make`` builds for a deployment of ``served``'s group; identical requests in
        flight at the same time are computed once (the first build validates the request)."""
        policy = CURRENT_KEY.get()
        if policy is not None:
            policy.check_model(served.name)
        first = make(served)
        key = request_key(served.name, first)
        return await self.coalescer.run(key, lambda: self._failover(served, first, make))

    async def _failover(
        self, served: ServedModel, first: RerankRequest, make: Callable[[ServedModel], RerankRequest]
    ) -> RerankResponse:
        """Try the deployments in the router's order; the last failure is raised when all failed."""
        name = served.name
        failure: DheeraError | None = None
        order = self.router.order(name)
        for position, deployment in enumerate(order, start=1):
            request = first if deployment is served else make(deployment)
            self.router.window.started(deployment)
            try:
                return await self.reranker.arun(request)
            except (AllBackendsFailedError, OverloadedError) as exc:
                if isinstance(exc, ShuttingDownError):
                    raise
                if position < len(order):
                    logger.warning("%s: deployment %s failed (%s); trying the next", name, deployment.model, exc)
                failure = exc
        assert failure is not None  # a group has at least one deployment
        raise failure

    def _check_count(self, count: int, field: str) -> None:
        limit = self.settings.max_documents_per_request
        if count > limit:
            raise RequestTooLargeError(
                f"request too large: {count} {field} exceed max_documents_per_request={limit} "
                "(general_settings in the server's config); split the request",
                field=field,
            )

    def tei_info(self, served: ServedModel) -> dict[str, Any]:
        """``GET /info`` as TEI answers it, for ``served``."""
        return {
            "model_id": served.model_id,
            "model_sha": None if served.revision in ("remote", "") else served.revision,
            "model_dtype": served.dtype,  # None when a remote endpoint serves it
            "served_model_name": served.name,
            "model_type": {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}},
            "max_concurrent_requests": self.settings.max_queue_pairs,
            "max_input_length": served.max_length,
            "max_batch_tokens": served.local.identity.batch_tokens if served.local is not None else None,
            "max_batch_requests": None,
            "max_client_batch_size": self.settings.max_documents_per_request,
            "auto_truncate": True,
            "tokenization_workers": None,
            "version": __version__,
            "sha": None,
            "docker_label": None,
        }

    def health_request(self, served: ServedModel) -> Any:
        """The awaitable a health check runs for ``served``: one real, uncached pair."""
        options = served.options.replace(cache=False)
        return self.reranker.arerank(served.model, "health check", ["health check"], options=options)


def _tei_rank(index: int, score: float, body: TEIRerankRequest) -> dict[str, Any]:
    rank: dict[str, Any] = {"index": index, "score": score}
    if body.return_text:
        rank["text"] = body.texts[index]
    return rank


def _body_options(options: RerankOptions, body: Any) -> RerankOptions:
    """The model's configured options (checked at startup) with what the body may set: ``raw_scores``, and an
    LLM reranker's ``instruction``/``prompt`` (when it gives one) in place of config.yaml's. Only those are
    checked per request."""
    given = {name: getattr(body, name, None) for name in ("instruction", "prompt")}
    changes = {name: value for name, value in given.items() if value is not None}
    return options.replace(raw_scores=body.raw_scores, **changes)
