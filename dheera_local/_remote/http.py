"""HTTP for every remote backend: pooled httpx clients, timeouts, retries and error translation.

Retries (exponential backoff with jitter, ``retry-after-ms`` or ``Retry-After`` honoured) cover
connection errors, timeouts and 429/502/503/504, within a bounded number of attempts and an overall
deadline. Other 4xx are not retried. (A loop of our own rather than tenacity or httpx-retries: each
attempt's time budget is cut from what is left of the deadline, and the server decides the delay;
neither library does both.) Time is bounded as a whole, not per socket read: one attempt takes at
most ``timeout`` seconds (headers and body included) and the whole call at most the policy's
``deadline``, so an endpoint that trickles its answer a byte at a time cannot hold a caller. An
answer is read up to :data:`MAX_RESPONSE_BYTES`. Errors carry the URL, the status and the
server's message, never a secret: tokens travel only in the ``Authorization`` header of requests
to the configured URL (redirects are not followed), and every message is masked (:mod:`.._secrets`).
"""

from __future__ import annotations

import asyncio
import email.utils
import inspect
import ipaddress
import json
import logging
import random
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from .._errors import RemoteBackendError
from .._secrets import mask
from .deadline import attempt_deadline, check_deadline, deadline_transport

logger = logging.getLogger("dheera_local")

RETRY_STATUSES = frozenset({429, 502, 503, 504})
RETRY_AFTER_CAP = 60.0
# Rerank answers are a few bytes per document; anything near this is an endpoint misbehaving.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
# Worth another attempt: the request may never have reached the server, or it did not answer in time.
_RETRY_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
# Everything httpx raises for a request (an unparsable api_base raises InvalidURL, outside HTTPError).
_HTTPX_ERRORS = (httpx.HTTPError, httpx.InvalidURL)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one remote call.

    Args:
        max_attempts: Attempts in all, the first included.
        base_delay: Backoff before the first retry (doubling, with jitter), in seconds.
        max_delay: The longest backoff between two attempts.
        deadline: Seconds the whole call may take, every attempt, backoff and answer included.
        connect_timeout: Seconds to open a connection.
        read_timeout: Seconds without a byte from the server before an attempt fails; also the
            default bound on one attempt's whole duration when the call sets no ``timeout``.
    """

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0
    deadline: float = 120.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0

    def timeout(self, read_timeout: float | None, remaining: float | None = None) -> httpx.Timeout:
        """The httpx timeout of one attempt: ``read_timeout`` (else the policy's), cut to ``remaining``."""
        read = read_timeout or self.read_timeout
        if remaining is not None:
            read = max(min(read, remaining), 0.001)
        return httpx.Timeout(read, connect=min(self.connect_timeout, read))

    def backoff(self, attempt: int) -> float:
        """Delay before retry number ``attempt`` (1-based), with up to 25% jitter."""
        return min(self.base_delay * 2 ** (attempt - 1), self.max_delay) * (1 - 0.25 * random.random())


@dataclass(frozen=True)
class Call:
    """One HTTP request to make. ``label`` names the endpoint kind in messages, e.g. "TEI endpoint"."""

    method: str
    url: str
    label: str
    backend: str
    json_body: Any = None
    token: str | None = field(default=None, repr=False)
    timeout: float | None = None


class HttpClients:
    """The pooled clients remote backends share: one sync client, one async client per event loop."""

    def __init__(
        self,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._transport = transport
        self._async_transport = async_transport
        self._sync: httpx.Client | None = None
        # Per loop: the client and the async generator that closes it when the loop shuts down.
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[httpx.AsyncClient, Any]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def sync(self) -> httpx.Client:
        with self._lock:
            if self._sync is None:
                limits = httpx.Limits(max_connections=64)
                transport = self._transport or deadline_transport(limits)
                self._sync = httpx.Client(transport=transport, limits=limits, follow_redirects=False)
            return self._sync

    async def async_client(self) -> httpx.AsyncClient:
        """This event loop's client. Pooled connections belong to the loop that opened them."""
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._async.get(loop)
            if entry is not None:
                return entry[0]
            client = httpx.AsyncClient(
                transport=self._async_transport, limits=httpx.Limits(max_connections=64), follow_redirects=False
            )
            closer = _close_at_loop_shutdown(client)
            self._async[loop] = (client, closer)
        # A started async generator is registered with the loop: asyncio.run() (and uvicorn) close it
        # at shutdown, which closes the client's connections instead of leaking them. It runs to its
        # yield without suspending, so no other task of this loop can see the client before this.
        await closer.__anext__()
        return client

    def close(self) -> None:
        with self._lock:
            if self._sync is not None:
                self._sync.close()
                self._sync = None

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._async.pop(loop, None)
        if entry is not None:
            await entry[1].aclose()
            await entry[0].aclose()  # if the generator never started, its finally did not run


async def _close_at_loop_shutdown(client: httpx.AsyncClient) -> Any:
    try:
        yield
    finally:
        await client.aclose()


def send(clients: HttpClients, call: Call, policy: RetryPolicy) -> Any:
    """Make ``call`` with retries; returns the decoded JSON body or raises RemoteBackendError."""
    _warn_plain_http(call)
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        budget = _attempt_budget(call, policy, started)
        try:
            with attempt_deadline(budget):
                response = _fetch(clients.sync(), call, policy.timeout(call.timeout, budget))
            return decode(call, response)
        except (RemoteBackendError, *_HTTPX_ERRORS) as exc:
            time.sleep(_next_delay(call, exc, budget, attempt, started, policy))


async def asend(clients: HttpClients, call: Call, policy: RetryPolicy) -> Any:
    """The async twin of :func:`send`."""
    _warn_plain_http(call)
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        budget = _attempt_budget(call, policy, started)
        try:
            client = await clients.async_client()
            fetch = _afetch(client, call, policy.timeout(call.timeout, budget))
            try:
                response = await asyncio.wait_for(fetch, budget)
            except asyncio.TimeoutError as exc:  # the whole attempt, body included, ran out of time
                raise httpx.ReadTimeout("the attempt's time limit passed") from exc
            return decode(call, response)
        except (RemoteBackendError, *_HTTPX_ERRORS) as exc:
            await asyncio.sleep(_next_delay(call, exc, budget, attempt, started, policy))


def _next_delay(call: Call, exc: Exception, budget: float, attempt: int, started: float, policy: RetryPolicy) -> float:
    """Seconds to wait before the next attempt; raises the failure (as a RemoteBackendError) when there is none."""
    error = _as_backend_error(call, exc, budget)
    delay = _retry_delay(error, attempt, started, policy)
    if delay is None:
        if error is exc:
            raise error
        raise error from exc
    return delay


def _attempt_budget(call: Call, policy: RetryPolicy, started: float) -> float:
    """Seconds this attempt may take: the call's ``timeout`` (else the policy's read timeout), cut to
    what is left of the deadline."""
    remaining = policy.deadline - (time.monotonic() - started)
    return max(min(call.timeout or policy.read_timeout, remaining), 0.001)


def _fetch(client: httpx.Client, call: Call, timeout: httpx.Timeout) -> httpx.Response:
    request = client.build_request(call.method, call.url, json=call.json_body, headers=_headers(call), timeout=timeout)
    response = client.send(request, stream=True)
    try:
        body = _read_capped(call, response.iter_bytes())
    finally:
        response.close()
    return _buffered(response, body)


async def _afetch(client: httpx.AsyncClient, call: Call, timeout: httpx.Timeout) -> httpx.Response:
    request = client.build_request(call.method, call.url, json=call.json_body, headers=_headers(call), timeout=timeout)
    response = await client.send(request, stream=True)
    try:
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size = _count(call, size, chunk)
            chunks.append(chunk)
    finally:
        await response.aclose()
    return _buffered(response, b"".join(chunks))


def _read_capped(call: Call, chunks: Any) -> bytes:
    parts: list[bytes] = []
    size = 0
    for chunk in chunks:
        size = _count(call, size, chunk)
        parts.append(chunk)
        check_deadline()  # a transport without the deadline wrapper: check between chunks
    return b"".join(parts)


def _count(call: Call, size: int, chunk: bytes) -> int:
    size += len(chunk)
    if size > MAX_RESPONSE_BYTES:
        raise RemoteBackendError(
            f"{call.label} {call.url} answered more than {MAX_RESPONSE_BYTES // 2**20} MB; a rerank answer is a "
            "few bytes per document, so the endpoint is not a rerank server or is misbehaving",
            backend=call.backend,
            url=call.url,
        )
    return size


def _buffered(response: httpx.Response, body: bytes) -> httpx.Response:
    """A read response holding ``body`` (already decompressed: the encoding headers go)."""
    dropped = {"content-encoding", "content-length", "transfer-encoding"}
    headers = [(name, value) for name, value in response.headers.multi_items() if name.lower() not in dropped]
    return httpx.Response(response.status_code, headers=headers, content=body, request=response.request)


def _headers(call: Call) -> dict[str, str]:
    headers = {"Accept": "application/json", "User-Agent": "dheera-local"}
    if call.token:
        headers["Authorization"] = f"Bearer {call.token}"
    return headers


def decode(call: Call, response: httpx.Response) -> Any:
    """The JSON body of a 2xx answer, or a RemoteBackendError that says what went wrong."""
    if response.is_redirect:
        location = _masked(response.headers.get("location", "(no location)"), call.token)
        raise RemoteBackendError(
            f"{call.label} {call.url} answered {response.status_code}, a redirect to {location[:200]}; "
            "redirects are not followed so that the token stays with the configured host. "
            "Fix: set api_base to the final URL",
            backend=call.backend,
            url=call.url,
            status=response.status_code,
        )
    if response.status_code >= 400:
        error = RemoteBackendError(
            f"{call.label} {call.url} answered {response.status_code}: {server_message(response, call.token)}"
            + _status_hint(response.status_code),
            backend=call.backend,
            url=call.url,
            status=response.status_code,
            retryable=response.status_code in RETRY_STATUSES,
            retry_after=retry_after(response.headers),
        )
        raise error
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError) as exc:
        snippet = _masked(response.text, call.token)[:120]
        raise RemoteBackendError(
            f"{call.label} {call.url} answered {response.status_code} with a body that is not JSON: {snippet!r}",
            backend=call.backend,
            url=call.url,
            status=response.status_code,
        ) from exc


def _status_hint(status: int) -> str:
    if status == 401:
        return " (the API key or token was rejected: check api_key / HF_TOKEN)"
    if status == 403:
        return " (the token lacks permission for this model or endpoint)"
    return ""


# Room for a whole error of another dheera-local proxy (its tried backends and its "Fix:" line), while a
# server that answers a page of HTML still gets one line.
SERVER_MESSAGE_CHARS = 1200


def server_message(response: httpx.Response, token: str | None) -> str:
    """The server's own error text (JSON ``error``/``message``/``detail``, else the body), masked."""
    text = response.text
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("error", "message", "detail"):
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("message", value)
            if value:
                text = value if isinstance(value, str) else json.dumps(value)
                break
    # Mask before cutting: a token straddling the cut would otherwise leak its first characters.
    return _cut(_masked(" ".join(str(text).split()), token), SERVER_MESSAGE_CHARS) or "(empty body)"


def _cut(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters cut at a word and marked as cut: a message cut mid-word
    ran straight into the next one ("...to score locally, chec. Fix: check the endpoint")."""
    if len(text) <= limit:
        return text
    kept = text[:limit].rsplit(" ", 1)[0] if " " in text[:limit] else text[:limit]
    return f"{kept} [... {len(text) - len(kept)} more characters]"


def _masked(text: str, token: str | None) -> str:
    """``text`` without the call's token or any other secret in use."""
    return mask(text.replace(token, "***") if token else text)


def _as_backend_error(call: Call, exc: Exception, budget: float) -> RemoteBackendError:
    if isinstance(exc, RemoteBackendError):
        return exc
    if isinstance(exc, httpx.TimeoutException):
        kind = f"timed out (an attempt may take {budget:.3g} s: timeout, else RetryPolicy.read_timeout or deadline)"
    elif isinstance(exc, _RETRY_ERRORS):
        kind = "could not be reached"
    else:
        kind = "could not be called"
    detail = _masked(str(exc) or type(exc).__name__, call.token)
    return RemoteBackendError(
        f"{call.label} {call.url} {kind}: {detail}",
        backend=call.backend,
        url=call.url,
        retryable=isinstance(exc, _RETRY_ERRORS),
    )


def _retry_delay(error: RemoteBackendError, attempt: int, started: float, policy: RetryPolicy) -> float | None:
    """Seconds to wait before the next attempt, or None to give up now."""
    if not error.retryable or attempt >= policy.max_attempts:
        return None
    delay = error.retry_after
    if delay is None:
        delay = policy.backoff(attempt)
    if delay > RETRY_AFTER_CAP or time.monotonic() - started + delay > policy.deadline:
        return None
    logger.info("%s; retry %d/%d in %.2fs", error, attempt, policy.max_attempts - 1, delay)
    return delay


def retry_after(headers: httpx.Headers) -> float | None:
    """How long the server asks us to wait: ``retry-after-ms`` (milliseconds, as OpenAI and Azure send
    it, more precise) when present, else ``Retry-After`` (seconds or an HTTP date); None without either."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return max(float(milliseconds) / 1000, 0.0)
        except ValueError:
            pass  # a malformed value: fall back to Retry-After
    return retry_after_seconds(headers.get("retry-after"))


def retry_after_seconds(value: str | None) -> float | None:
    """Parse ``Retry-After`` (seconds or an HTTP date) into seconds, or None."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


_warned_hosts: set[str] = set()


def _warn_plain_http(call: Call) -> None:
    if not call.token:
        return
    parts = urlsplit(call.url)
    host = parts.hostname or ""
    if parts.scheme == "http" and not _is_loopback(host) and host not in _warned_hosts:
        _warned_hosts.add(host)
        logger.warning("sending an API key over plain http to %s; use https for non-local endpoints", host)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run_concurrently(tasks: list[Callable[[], Any]], limit: int) -> list[Any]:
    """Run blocking callables on up to ``limit`` threads; results in order, first error re-raised."""
    if len(tasks) <= 1 or limit <= 1:
        return [task() for task in tasks]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(limit, len(tasks))) as pool:
        futures = [pool.submit(task) for task in tasks]
        try:
            return [future.result() for future in futures]
        except BaseException:
            # One part failed for good: parts not yet started would only fail (and retry) too.
            for future in futures:
                future.cancel()
            raise


async def gather_bounded(coroutines: list[Any], limit: int) -> list[Any]:
    """Await coroutines with at most ``limit`` in flight; results in order, the rest cancelled on an error."""
    semaphore = asyncio.Semaphore(limit)

    async def bounded(coroutine: Any) -> Any:
        async with semaphore:
            return await coroutine

    tasks = [asyncio.ensure_future(bounded(c)) for c in coroutines]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        for coroutine in coroutines:
            if inspect.getcoroutinestate(coroutine) == inspect.CORO_CREATED:
                coroutine.close()  # never started: not an error, so no "never awaited" warning
        raise
