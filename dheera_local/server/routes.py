"""The HTTP routes: thin functions from a request to :class:`~.service.RerankService` and back.

Authenticated (``Authorization: Bearer <master key>``): ``POST /rerank`` (Cohere or TEI body),
``/v1/rerank``, ``/v2/rerank``, ``/models/{model_name}/rerank``, ``GET /info``,
``/models/{model_name}/info``, ``/v1/models``, ``/health``. Open: ``GET /health/liveliness``
(alias ``/health/liveness``) and ``/health/readiness``. Rerank answers carry ``x-dheera-model``,
``x-dheera-backend``, ``x-dheera-cache-hits`` (and ``x-dheera-fallbacks`` after a fallback).
"""

from __future__ import annotations

from typing import Any

import pydantic_core
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .health import check_models
from .health import readiness as readiness_report
from .keys import CURRENT_KEY
from .metrics import CONTENT_TYPE
from .schemas import (
    COHERE_RESPONSE,
    ERROR_RESPONSES,
    TEI_RESPONSE,
    CohereRerankRequest,
    CohereV2RerankRequest,
    TEIRerankRequest,
    is_tei,
    openapi_body,
    parse_json,
    validate,
)
from .service import Answer
from .state import server_state

# Authenticated by AuthGate (auth.py), before the body is read.
api = APIRouter(responses=ERROR_RESPONSES)
public = APIRouter(tags=["health"])


@api.post(
    "/rerank",
    tags=["rerank"],
    summary="Rerank (Cohere or TEI body)",
    responses={**COHERE_RESPONSE, 200: {"description": "Cohere answer, or TEI's bare array for a TEI body"}},
    openapi_extra=openapi_body(CohereRerankRequest, TEIRerankRequest),
)
async def rerank(request: Request) -> JSONResponse:
    """LiteLLM's route: a Cohere body (``documents``) or a TEI body (``texts``, first model)."""
    return await _dispatch(request, model=None)


@api.post(
    "/models/{model_name}/rerank",
    tags=["rerank"],
    summary="Rerank with the model named in the URL (Cohere or TEI body)",
    responses=TEI_RESPONSE,
    openapi_extra=openapi_body(TEIRerankRequest, CohereRerankRequest),
)
async def model_rerank(model_name: str, request: Request) -> JSONResponse:
    """The TEI endpoint of one model: ``api_base=http://host:4000/models/NAME`` for TEI clients."""
    return await _dispatch(request, model=model_name)


@api.post(
    "/v1/rerank",
    tags=["rerank"],
    summary="Cohere v1 rerank",
    responses=COHERE_RESPONSE,
    openapi_extra=openapi_body(CohereRerankRequest),
)
async def rerank_v1(request: Request) -> JSONResponse:
    body = validate(CohereRerankRequest, parse_json(await request.body()))
    return _respond(request, await server_state(request).service.cohere(body, model=None, version="1"))


@api.post(
    "/v2/rerank",
    tags=["rerank"],
    summary="Cohere v2 rerank",
    responses=COHERE_RESPONSE,
    openapi_extra=openapi_body(CohereV2RerankRequest),
)
async def rerank_v2(request: Request) -> JSONResponse:
    body = validate(CohereV2RerankRequest, parse_json(await request.body()))
    return _respond(request, await server_state(request).service.cohere(body, model=None, version="2"))


@api.get("/info", tags=["models"], summary="TEI-style info for the first model")
async def info(request: Request) -> dict[str, Any]:
    state = server_state(request)
    return state.service.tei_info(state.registry.default)


@api.get("/models/{model_name}/info", tags=["models"], summary="TEI-style info for one model")
async def model_info(model_name: str, request: Request) -> dict[str, Any]:
    state = server_state(request)
    return state.service.tei_info(state.registry.resolve(model_name))


@api.get("/v1/models", tags=["models"], summary="The configured model names")
@api.get("/models", tags=["models"], include_in_schema=False)
async def list_models(request: Request) -> dict[str, Any]:
    state = server_state(request)
    data = [
        {"id": name, "object": "model", "created": state.started_at, "owned_by": "dheera-local"}
        for name in state.registry.names
    ]
    return {"object": "list", "data": data}


@api.get("/health", tags=["health"], summary="Run one uncached rerank per configured model")
async def health(request: Request) -> dict[str, Any]:
    return await check_models(server_state(request))


@public.get("/metrics", summary="Prometheus metrics (open unless general_settings.metrics_require_auth)")
async def metrics(request: Request) -> Response:
    collected = server_state(request).metrics
    if collected is None:
        raise StarletteHTTPException(404, "metrics are off (general_settings.metrics: false)")
    return Response(collected.render(), media_type=CONTENT_TYPE)


@public.get("/health/liveliness", summary="The process answers")
@public.get("/health/liveness", include_in_schema=False)
async def liveliness() -> str:
    return "I'm alive!"


@public.get("/health/readiness", summary="Started, not shutting down; the shared score cache's state")
async def readiness(request: Request) -> JSONResponse:
    status, body = await readiness_report(server_state(request))
    return JSONResponse(body, status_code=status)


async def _dispatch(request: Request, *, model: str | None) -> JSONResponse:
    data = parse_json(await request.body())
    service = server_state(request).service
    if is_tei(data):
        answer = await service.tei(validate(TEIRerankRequest, data), model=model)
    else:
        answer = await service.cohere(validate(CohereRerankRequest, data), model=model, version="2")
    return _respond(request, answer)


class RerankJSONResponse(JSONResponse):
    """JSON rendered by pydantic-core (Rust): a third of the cost of ``json.dumps`` for 100 results."""

    def render(self, content: Any) -> bytes:
        return pydantic_core.to_json(content)


def _respond(request: Request, answer: Answer) -> JSONResponse:
    headers = {"x-dheera-model": answer.model_name}
    log: dict[str, Any] = {"model": answer.model_name, "documents": answer.documents}
    served = answer.served_by
    if served is not None:
        headers["x-dheera-backend"] = served.backend
        headers["x-dheera-cache-hits"] = str(served.cache_hits)
        if served.fallbacks:
            headers["x-dheera-fallbacks"] = ",".join(served.fallbacks)
        log.update(backend=served.backend, cache_hits=served.cache_hits, scored=served.scored)
        log["fallbacks"] = served.fallbacks
    if answer.tokens is not None:  # also for TEI-format answers, which have no meta
        headers["x-dheera-tokens"] = str(answer.tokens)
        log["tokens"] = answer.tokens
    policy = CURRENT_KEY.get()
    if policy is not None:
        log["key"] = policy.name  # the key's name, never the key
        policy.charge(answer.tokens)  # its tpm: charged once answered, as LiteLLM does
    request.state.log = log
    return RerankJSONResponse(answer.payload, headers=headers)
