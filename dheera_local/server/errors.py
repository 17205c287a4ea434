"""Exceptions to HTTP answers, in one place.

Every error, on every route (Cohere and TEI formats alike), is answered as LiteLLM's proxy does::

    {"error": {"message": str, "type": str, "param": str | null, "code": "<status>"}}

=========================================  ======  ==========================
exception                                   status  type
=========================================  ======  ==========================
InvalidRequestError (bad value)             400     invalid_request_error
BodyValidationError (wrong shape / type)    422     invalid_request_error
AuthenticationError                         401     authentication_error
UnknownModelError                           404     not_found_error
RequestTooLargeError                        413     request_too_large
OverloadedError                             429     overloaded_error (+ Retry-After)
AllBackendsFailedError, remote unreachable  503     service_unavailable
AllBackendsFailedError, otherwise           502     backend_error
ModelNotAvailableError                      503     model_not_available
NotReadyError, ShuttingDownError            503     service_unavailable (+ Retry-After)
anything else                               500     internal_error
=========================================  ======  ==========================

Messages never carry a stack trace, a request body or a secret in use (masked by :func:`~dheera_local._secrets.mask`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .._errors import (
    AllBackendsFailedError,
    DheeraError,
    InvalidRequestError,
    ModelNotAvailableError,
    OverloadedError,
    RemoteBackendError,
    ShuttingDownError,
)
from .._secrets import mask

UNAVAILABLE_STATUSES = frozenset({429, 503, 504})


class BodyValidationError(InvalidRequestError):
    """The body does not match the route's schema (a missing field, a wrong type): 422."""


class UnknownModelError(InvalidRequestError):
    """The request names a model the config does not list: 404."""


class RequestTooLargeError(InvalidRequestError):
    """The body or the document list exceeds a configured limit: 413."""


class AuthenticationError(DheeraError):
    """No or a wrong ``Authorization: Bearer`` key: 401."""


class NotReadyError(DheeraError):
    """The server is starting or shutting down: 503."""


@dataclass
class ApiError:
    """An error answer: status, OpenAI/LiteLLM-style type, message, offending field."""

    status: int
    type: str
    message: str
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": str(self.status)}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers or None)


def api_error(exc: BaseException) -> ApiError:
    """The answer for ``exc``, masked; unexpected exceptions get a generic 500 that reveals nothing."""
    error = _classify(exc)
    error.message = mask(error.message)
    return error


def _classify(exc: BaseException) -> ApiError:
    if isinstance(exc, InvalidRequestError):
        return ApiError(_invalid_status(exc), _invalid_type(exc), str(exc), exc.param)
    if isinstance(exc, AuthenticationError):
        return ApiError(401, "authentication_error", str(exc), headers={"WWW-Authenticate": "Bearer"})
    if isinstance(exc, (ShuttingDownError, NotReadyError)):
        return ApiError(503, "service_unavailable", str(exc), headers={"Retry-After": "1"})
    if isinstance(exc, OverloadedError):
        retry = str(max(1, math.ceil(exc.retry_after)))
        return ApiError(429, "overloaded_error", str(exc), headers={"Retry-After": retry})
    if isinstance(exc, AllBackendsFailedError):
        return _backend_failure(exc)
    if isinstance(exc, ModelNotAvailableError):
        return ApiError(503, "model_not_available", str(exc), "model")
    if isinstance(exc, DheeraError):
        return ApiError(500, "internal_error", str(exc))
    return ApiError(500, "internal_error", "internal server error; see the server log for the request id")


def _invalid_status(exc: InvalidRequestError) -> int:
    if isinstance(exc, UnknownModelError):
        return 404
    if isinstance(exc, RequestTooLargeError):
        return 413
    if isinstance(exc, BodyValidationError):
        return 422
    return 400


def _invalid_type(exc: InvalidRequestError) -> str:
    if isinstance(exc, UnknownModelError):
        return "not_found_error"
    if isinstance(exc, RequestTooLargeError):
        return "request_too_large"
    return "invalid_request_error"


def _backend_failure(exc: AllBackendsFailedError) -> ApiError:
    last = exc.attempts[-1][1] if exc.attempts else None
    unreachable = isinstance(last, RemoteBackendError) and (last.status is None or last.status in UNAVAILABLE_STATUSES)
    if not unreachable:
        return ApiError(502, "backend_error", str(exc))
    headers = {}
    if isinstance(last, RemoteBackendError) and last.retry_after:
        headers["Retry-After"] = str(max(1, math.ceil(last.retry_after)))
    return ApiError(503, "service_unavailable", str(exc), headers=headers)


_HTTP_TYPES = {404: "not_found_error", 405: "invalid_request_error", 401: "authentication_error"}


def install_error_handlers(app: FastAPI) -> None:
    """Answer our errors, Starlette's (404 route, 405 method) and FastAPI's (422) in one format."""
    app.add_exception_handler(DheeraError, _dheera_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)


async def _dheera_handler(request: Request, exc: Exception) -> JSONResponse:
    return api_error(exc).response()


async def _http_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind = _HTTP_TYPES.get(exc.status_code, "invalid_request_error" if exc.status_code < 500 else "internal_error")
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}; see /docs for the routes"
    return ApiError(exc.status_code, kind, message, headers=dict(exc.headers or {})).response()


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    param = loc_to_param(tuple(first.get("loc", ()))[1:])
    return ApiError(422, "invalid_request_error", f"{param or 'request'}: {first['msg']}", param).response()


def loc_to_param(loc: tuple[Any, ...]) -> str | None:
    """A pydantic error location as a field path: ``("documents", 3, "str")`` -> ``documents[3]``."""
    if not loc:
        return None
    param = str(loc[0])
    for item in loc[1:]:
        if not isinstance(item, int):
            break  # union-member tags ("str", "dict[str,any]") say nothing to a client
        param += f"[{item}]"
    return param
