"""Bearer-key auth: ``Authorization: Bearer <master key>`` on every route but the public ones.

:class:`AuthGate` checks the header before a byte of the body is read, so an unauthenticated
client cannot make the server buffer a 10 MB body. The key is compared in constant time (digests
of equal length, ``secrets.compare_digest``) and never logged or echoed. Without a master key auth
is off, and ``serve`` binds loopback only. Public: the liveness and readiness probes, and the API
docs (``/docs``, ``/redoc``, ``/openapi.json``), which describe routes but reveal no configuration.
"""

from __future__ import annotations

import hashlib
import secrets

from fastapi import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from .._errors import OverloadedError
from .errors import AuthenticationError, api_error
from .keys import CURRENT_KEY, KeyRing

PUBLIC_PATHS = frozenset({
    "/health/liveliness", "/health/liveness", "/health/readiness", "/docs", "/docs/oauth2-redirect", "/redoc",
    "/openapi.json",
})  # fmt: skip


class MasterKey:
    """Holds only a digest of the key, so the key itself is not kept in the app's state."""

    def __init__(self, key: str) -> None:
        self._digest = _digest(key)

    def matches(self, candidate: str) -> bool:
        return secrets.compare_digest(_digest(candidate), self._digest)

    def __repr__(self) -> str:
        return "MasterKey('***')"


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer`` header, or None."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def check(master_key: MasterKey | None, request: Request) -> None:
    """Raise AuthenticationError unless ``request`` carries ``master_key`` (anything passes without one)."""
    if master_key is None:
        return
    token = bearer_token(request)
    if token is None:
        raise AuthenticationError(
            "missing API key: send the header 'Authorization: Bearer <master key>' "
            "(general_settings.master_key or DHEERA_AI_API_KEY on the server)"
        )
    if not master_key.matches(token):
        raise AuthenticationError("invalid API key: the bearer token is not this server's master key")


class AuthGate:
    """ASGI middleware: 401 for a missing or wrong key, before the body is read."""

    def __init__(
        self, app: ASGIApp, master_key: MasterKey | KeyRing | None, public: frozenset[str] = PUBLIC_PATHS
    ) -> None:
        self.app = app
        self.master_key = master_key
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.master_key is not None and scope.get("path") not in self.public:
            try:
                check(self.master_key, Request(scope))
                _admit(self.master_key, scope)
            except (AuthenticationError, OverloadedError) as exc:
                await api_error(exc).response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _admit(keys: MasterKey | KeyRing, scope: Scope) -> None:
    """With several keys: note which one this request carries (its name labels metrics and logs), and
    count it against its rpm (OverloadedError: 429 with Retry-After)."""
    if not isinstance(keys, KeyRing):
        return
    policy = keys.identify(bearer_token(Request(scope)) or "")
    if policy is None:
        return
    scope.setdefault("state", {})["log"] = {"key": policy.name}
    CURRENT_KEY.set(policy)
    policy.admit()
