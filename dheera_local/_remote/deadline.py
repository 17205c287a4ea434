"""A deadline for a whole sync HTTP attempt, body included.

httpx bounds each socket read, not a whole answer: a server sending a byte every few seconds never
times out. The sync client's connections therefore wrap their socket operations (httpcore's public
``NetworkBackend`` interface) and cap each one's timeout by what is left of the calling thread's
attempt (:func:`attempt_deadline`). The async client needs none of this: ``asyncio.wait_for`` bounds it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpcore
import httpx

logger = logging.getLogger("dheera_local")

_attempt = threading.local()


class _DeadlineStream(httpcore.NetworkStream):
    """A network stream whose every read and write ends by this thread's attempt deadline."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _capped(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _capped(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        tls = self._stream.start_tls(ssl_context, server_hostname, _capped(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(tls)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network backend, handing out :class:`_DeadlineStream` connections."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, **kwargs: Any) -> httpcore.NetworkStream:
        stream = self._backend.connect_tcp(host, port, _capped(timeout, httpcore.ConnectTimeout), **kwargs)
        return _DeadlineStream(stream)

    def connect_unix_socket(self, path: str, timeout: float | None = None, **kwargs: Any) -> httpcore.NetworkStream:
        stream = self._backend.connect_unix_socket(path, _capped(timeout, httpcore.ConnectTimeout), **kwargs)
        return _DeadlineStream(stream)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def _capped(timeout: float | None, error: type[Exception]) -> float | None:
    ends = getattr(_attempt, "ends", None)
    if ends is None:
        return timeout
    remaining = ends - time.monotonic()
    if remaining <= 0:
        raise error("the attempt's time limit passed")
    return remaining if timeout is None else min(timeout, remaining)


def deadline_transport(limits: httpx.Limits) -> httpx.HTTPTransport:
    """httpx's transport, its connections bounded by the calling thread's attempt deadline."""
    transport = httpx.HTTPTransport(limits=limits)
    # httpx exposes no network-backend option; its pool does (httpcore's public NetworkBackend API).
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if isinstance(backend, httpcore.NetworkBackend):
        pool._network_backend = _DeadlineBackend(backend)  # type: ignore[union-attr]
    else:  # a future httpx: chunk-by-chunk checks in _read_capped still bound the body
        logger.debug("httpx transport without a network backend to wrap; per-read timeouts only")
    return transport


@contextlib.contextmanager
def attempt_deadline(seconds: float) -> Iterator[None]:
    """Bound every socket operation of this thread's requests to end within ``seconds`` from now."""
    _attempt.ends = time.monotonic() + seconds
    try:
        yield
    finally:
        _attempt.ends = None


def check_deadline() -> None:
    """Raise ReadTimeout when this thread's attempt is out of time."""
    _capped(None, httpcore.ReadTimeout)
