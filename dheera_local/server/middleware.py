"""ASGI middleware: a request id and one log line per request; the request body size limit.

:class:`RequestContext` (outermost) gives every request an ``x-request-id`` (the client's, when
it is a plain token, else a new one), answers any exception that escaped the routes with a
JSON 500 instead of a traceback, and logs one line: id, method, path, status, time, and what the
route recorded (model, backend, cache hits, documents). Never a body, a header or a query string;
control characters in what the client chose (the path, the model name) are escaped, so one request is one line.
The same fields travel as the record's attributes (``extra=``), so ``--log-format json``
writes them as keys of the line's object (``request_id``, ``status``, ``latency_ms``, ``key_name``: the
key's name, never the key), not only inside its message.

:class:`BodyLimit` answers 413 when ``Content-Length`` exceeds the limit, before reading a byte,
and also counts a streamed (chunked) body as it arrives, so a body without ``Content-Length``
cannot exceed the limit either.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._secrets import RECORD_ATTRIBUTES, escape_controls, mask
from .errors import ApiError, NotReadyError, api_error

logger = logging.getLogger("dheera_local.server")

REQUEST_ID_HEADER = "x-request-id"
_PLAIN_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
LOG_FIELDS = ("model", "backend", "cache_hits", "documents", "tokens")
# A route's field whose attribute name differs from its own: "key_name" says it is never the key itself.
_RENAMED = {"key": "key_name"}


class RequestContext:
    """Request id, catch-all JSON 500, one access-log line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = time.perf_counter()
        status, response_started = 500, False

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            # uvicorn cancels what still runs after graceful_shutdown_timeout: answer it, as JSON, here
            # (re-raising would make uvicorn log a traceback and send a plain-text 500).
            if not response_started:
                error = NotReadyError("the server shut down before this request finished; retry it")
                await api_error(error).response()(scope, receive, send_with_id)
            status = 503
        except Exception as exc:  # noqa: BLE001 - answered as JSON; only the type and place are logged
            logger.error("request %s failed: %s at %s", request_id, type(exc).__name__, _where(exc))
            if not response_started:
                await api_error(exc).response()(scope, receive, send_with_id)
            status = 500
        finally:
            _log(scope, request_id, status, time.perf_counter() - started)


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _PLAIN_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex


def _where(exc: BaseException) -> str:
    trace = exc.__traceback__
    while trace is not None and trace.tb_next is not None:
        trace = trace.tb_next
    if trace is None:
        return "?"
    return f"{trace.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{trace.tb_lineno}"


def _log(scope: Scope, request_id: str, status: int, seconds: float) -> None:
    fields: dict[str, Any] = scope.get("state", {}).get("log") or {}
    _count(scope, status, seconds, fields)
    extra = "".join(f" {name}={fields[name]}" for name in LOG_FIELDS if fields.get(name) is not None)
    # The path (percent-decoded: %0a is a newline) and the model name are the client's: one line, masked.
    path, method = _loggable(scope.get("path", "")), _loggable(scope.get("method", ""))
    level = logging.WARNING if status >= 500 else logging.INFO
    record = _record_fields(scope, request_id, status, seconds, fields)
    logger.log(
        level, "%s %s %s %d %.1fms%s", request_id, method, path, status, seconds * 1000, _loggable(extra), extra=record
    )


def _record_fields(
    scope: Scope, request_id: str, status: int, seconds: float, fields: dict[str, Any]
) -> dict[str, Any]:
    """The request's fields as record attributes: numbers stay numbers, client-chosen text is masked."""
    record: dict[str, Any] = {
        "request_id": request_id,
        "method": _loggable(scope.get("method", "")),
        "path": _loggable(scope.get("path", "")),
        "route": getattr(scope.get("route"), "path", None),  # the template: /models/{model_name}/rerank
        "status": status,
        "latency_ms": round(seconds * 1000, 3),
    }
    for name, value in fields.items():
        if value is None:
            continue
        name = _RENAMED.get(name, name)
        if name in RECORD_ATTRIBUTES:  # logging refuses an extra= field named "name", "message", ...
            name = f"field_{name}"
        record[name] = _loggable(value) if isinstance(value, str) else value
    if isinstance(fields.get("cache_hits"), int) and isinstance(fields.get("scored"), int):
        record["pairs"] = fields["cache_hits"] + fields["scored"]  # unique pairs, after deduplication
    return record


def _loggable(value: str) -> str:
    return escape_controls(mask(value))


def _count(scope: Scope, status: int, seconds: float, fields: dict[str, Any]) -> None:
    state = getattr(getattr(scope.get("app"), "state", None), "dheera", None)
    metrics = getattr(state, "metrics", None)
    if metrics is not None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"  # the template: few label values
        metrics.observe(route, status, seconds, fields)


class BodyLimit:
    """413 for bodies over ``max_bytes``, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._too_large(declared).response()(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._too_large(size, streamed=True).response()(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    def _too_large(self, size: int, streamed: bool = False) -> ApiError:
        what = f"more than {self.max_bytes}" if streamed else str(size)
        return ApiError(
            413,
            "request_too_large",
            f"request body too large: {what} bytes exceed max_request_body_bytes={self.max_bytes} "
            "(general_settings in the server's config); send fewer or shorter documents",
            "body",
        )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the buffered body over once, then waits on the real one (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
