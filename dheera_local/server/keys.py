"""Several API keys, each with a name, the models it may call and a requests-per-minute limit.

::

    general_settings:
      master_key: os.environ/PROXY_KEY        # every model, no limit; named "master"
      api_keys:
        - key: os.environ/TEAM_A_KEY
          name: team-a                        # the label in /metrics and the logs (default: key-1, key-2, ...)
          models: [bge-reranker-base]         # default: every model
          rpm: 600                            # past it: 429 with Retry-After

A presented key is compared with every configured one in constant time (digests of equal length,
``secrets.compare_digest``, no early exit), so timing reveals neither the key nor which one matched.
Only digests are kept; a key's name, never the key, reaches metrics and logs. The request's key is a
context variable: the auth middleware sets it before the body is read, the service checks the model.
"""

from __future__ import annotations

import contextvars
import hashlib
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .._errors import OverloadedError
from .errors import AuthenticationError

WINDOW = 60.0


@dataclass
class KeyPolicy:
    """What one key may do, and its requests of the last minute."""

    name: str
    models: frozenset[str] | None = None
    rpm: int | None = None
    _starts: deque[float] = field(default_factory=deque, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def admit(self, clock: Callable[[], float] = time.monotonic) -> None:
        """Count one request; OverloadedError (429, Retry-After) past ``rpm`` in the last minute."""
        if self.rpm is None:
            return
        now = clock()
        with self._lock:
            while self._starts and self._starts[0] <= now - WINDOW:
                self._starts.popleft()
            if len(self._starts) >= self.rpm:
                wait = math.ceil(self._starts[0] + WINDOW - now)
                raise OverloadedError(
                    f"API key {self.name!r} is over its limit of {self.rpm} requests a minute; retry in {wait}s",
                    retry_after=max(wait, 1),
                )
            self._starts.append(now)

    def check_model(self, model_name: str) -> None:
        if self.models is not None and model_name not in self.models:
            allowed = ", ".join(sorted(self.models))
            raise AuthenticationError(
                f"API key {self.name!r} may not call model {model_name!r}; it may call: {allowed}"
            )


CURRENT_KEY: contextvars.ContextVar[KeyPolicy | None] = contextvars.ContextVar("dheera_key", default=None)


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8")).digest()


class KeyRing:
    """The configured keys (the master key first); holds digests only."""

    def __init__(self, keys: list[tuple[str, KeyPolicy]]) -> None:
        self._keys = [(_digest(key), policy) for key, policy in keys]

    def __repr__(self) -> str:
        return f"KeyRing({[policy.name for _, policy in self._keys]})"

    def identify(self, candidate: str) -> KeyPolicy | None:
        """The policy of the key ``candidate`` is, or None; every key is compared (constant time)."""
        digest = _digest(candidate)
        found = None
        for known, policy in self._keys:
            if secrets.compare_digest(digest, known) and found is None:
                found = policy
        return found

    def matches(self, candidate: str) -> bool:
        return self.identify(candidate) is not None


def key_ring(
    master_key: str | None, api_keys: list[tuple[str, str | None, list[str] | None, int | None]]
) -> KeyRing | None:
    """The ring for a config's keys (``(key, name, models, rpm)`` each); None when there is no key (auth off)."""
    keys = [(master_key, KeyPolicy("master"))] if master_key is not None else []
    for index, (key, name, models, rpm) in enumerate(api_keys, start=1):
        keys.append((key, KeyPolicy(name or f"key-{index}", frozenset(models) if models else None, rpm)))
    return KeyRing(keys) if keys else None
