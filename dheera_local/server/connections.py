"""Connection limits uvicorn lacks: a deadline to read a request, and a cap on open connections.

uvicorn closes an *idle* keep-alive connection (``timeout_keep_alive``) but waits forever for a request
that trickles in: 300 sockets sending a header byte now and then stayed open, and under a 256-file limit
they made every legitimate request fail with ``Too many open files`` (issue 26). This h11 protocol
(uvicorn's own, subclassed) adds:

* ``header_timeout``: from the connection (or the end of the previous response) to a complete request
  head; past it the client gets a 408 and the connection is closed.
* ``body_timeout``: from the request head to the body's last byte; past it the connection is closed (the
  handler sees a disconnect).
* ``max_connections``: a connection beyond it gets a 503 in the documented JSON shape and is closed at once,
  so the file descriptors in use stay bounded whatever a client opens. The default is half the process's
  open-file limit, at most 1,024, leaving the other half to the models, the cache and remote calls.
* ``backlog``: asyncio accepts up to this many queued connections in one go, before any is answered or
  closed, so a burst holds up to cap + 2 x backlog descriptors beside what the process holds anyway (the
  model's files, the cache, the logs): it is an eighth of the open-file limit (at most uvicorn's 2,048),
  leaving a quarter of it to those. With uvicorn's 2,048 a burst of 300 sockets under a 256-file limit hit
  ``EMFILE``; with a quarter it still did, now and then, on a loaded 2-core CI machine.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger("dheera_local.server")

_READING = (h11.IDLE, h11.SEND_BODY)


def _open_file_limit() -> int:
    try:
        import resource  # POSIX only
    except ImportError:
        return 2048  # Windows: no per-process descriptor limit of this kind; gives the 1,024 cap
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def default_max_connections() -> int:
    """Half the soft open-file limit (each connection holds one), at most 1,024 and at least 16."""
    return max(16, min(1024, _open_file_limit() // 2))


def default_backlog() -> int:
    """An eighth of the soft open-file limit, between 16 and 2,048 (see the module docstring)."""
    return max(16, min(2048, _open_file_limit() // 8))


@dataclass(frozen=True)
class ConnectionLimits:
    """What one connection may hold: see the module docstring."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_connections: int = 1024
    backlog: int = 2048


def limited_protocol(limits: ConnectionLimits) -> type[H11Protocol]:
    """uvicorn's h11 protocol enforcing ``limits`` (pass it as ``uvicorn.Config(http=...)``)."""
    return type("LimitedH11Protocol", (LimitedH11Protocol,), {"limits": limits})


class LimitedH11Protocol(H11Protocol):
    """H11Protocol with a read deadline per request and a cap on connections."""

    limits = ConnectionLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._reading_body = False
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self._refuse(transport)
            return
        super().connection_made(transport)
        self._arm(self.limits.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # drained, never parsed
        super().data_received(data)
        self._follow_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow_request()  # the next request's head is timed from here (pipelined data included)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if not self._refused:
            super().connection_lost(exc)

    def _follow_request(self) -> None:
        """Arm the deadline for the phase the request is in: head, body, or none (read in full)."""
        state = self.conn.their_state
        if self.transport.is_closing() or state not in _READING:
            self._disarm()
        elif state is h11.SEND_BODY and not self._reading_body:
            self._reading_body = True
            self._arm(self.limits.body_timeout)
        elif state is h11.IDLE and (self._reading_body or self._deadline is None):
            self._reading_body = False
            self._arm(self.limits.header_timeout)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._reading_body:
            logger.warning("closing a connection from %s: its request body took over %gs (body_timeout)",
                           _peer(self.client), self.limits.body_timeout)  # fmt: skip
            self.transport.close()
            return
        logger.warning("closing a connection from %s: no complete request head in %gs (header_timeout)",
                       _peer(self.client), self.limits.header_timeout)  # fmt: skip
        if self.conn.our_state is h11.IDLE:
            self.transport.write(_answer(408, "Request Timeout", "request_timeout",
                                         f"no complete request in {self.limits.header_timeout:g} s"))  # fmt: skip
        self.transport.close()

    def _refuse(self, transport: asyncio.Transport) -> None:
        self._refused = True
        self.transport = transport
        logger.warning("refusing a connection: %d open, the limit is max_connections=%d",
                       len(self.connections), self.limits.max_connections)  # fmt: skip
        message = f"the server holds its maximum of {self.limits.max_connections} connections; retry shortly"
        transport.write(_answer(503, "Service Unavailable", "service_unavailable", message))
        # Closed now, not after reading the request: lingering would hold the descriptor the cap protects. A
        # request already received makes the close a reset, but loopback and LAN clients have the 503 by then
        # (Linux hands a client the data it received before the reset).
        transport.close()


def _answer(status: int, reason: str, kind: str, message: str) -> bytes:
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": str(status)}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n" + ("retry-after: 1\r\n" if status == 503 else "") + "\r\n"
    )
    return head.encode("ascii") + body


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "a client"
