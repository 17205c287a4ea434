"""Bearer-key auth: ``Authorization: Bearer <master key>`` on every rerank and model route.

The key is compared in constant time (digests of equal length, ``secrets.compare_digest``) and
never logged or echoed. Without a master key auth is off, and ``serve`` binds loopback only.
"""

from __future__ import annotations

import hashlib
import secrets

from fastapi import Request

from .errors import AuthenticationError


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
