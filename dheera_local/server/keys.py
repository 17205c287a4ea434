"""Several API keys, each with a name, the models it may call, and requests- and tokens-per-minute limits.

::

    general_settings:
      master_key: os.environ/PROXY_KEY        # every model, no limit; named "master"
      api_keys:
        - key: os.environ/TEAM_A_KEY
          name: team-a                        # the label in /metrics and the logs (default: key-1, key-2, ...)
          models: [bge-reranker-base]         # default: every model
          rpm: 600                            # past it: 429 with Retry-After
          tpm: 200000                         # tokens scored a minute; past it: 429 with Retry-After

A presented key is compared with every configured one in constant time (digests of equal length,
``secrets.compare_digest``, no early exit), so timing reveals neither the key nor which one matched.
Only digests are kept; a key's name, never the key, reaches metrics and logs. The request's key is a
context variable: the auth middleware sets it before the body is read, the service checks the model.

``tpm`` counts what a request cost once it is answered (its ``meta.tokens.input_tokens``: the tokens a
model scored, cache hits free), as LiteLLM's limiter charges tokens after the call: a request is admitted
while the key's last minute holds fewer than ``tpm`` tokens, so the request that crosses the limit is
served and the ones after it get 429 until enough of the minute's tokens have aged out. A request whose
tokens are unknown (a remote that does not report usage) costs nothing against it.
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
from typing import Any

from .._errors import OverloadedError
from .errors import AuthenticationError

WINDOW = 60.0


@dataclass
class KeyPolicy:
    """What one key may do, and its requests of the last minute."""

    name: str
    models: frozenset[str] | None = None
    rpm: int | None = None
    tpm: int | None = None
    _starts: deque[float] = field(default_factory=deque, repr=False)
    _spent: deque[tuple[float, int]] = field(default_factory=deque, repr=False)  # (when, tokens) charged
    _spent_total: int = field(default=0, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def admit(self, clock: Callable[[], float] = time.monotonic) -> None:
        """Count one request; OverloadedError (429, Retry-After) past ``rpm`` requests, or with ``tpm``
        tokens or more already scored, in the last minute."""
        if self.rpm is None and self.tpm is None:
            return
        now = clock()
        with self._lock:
            self._check_tokens(now)
            if self.rpm is None:
                return
            while self._starts and self._starts[0] <= now - WINDOW:
                self._starts.popleft()
            if len(self._starts) >= self.rpm:
                wait = math.ceil(self._starts[0] + WINDOW - now)
                raise OverloadedError(
                    f"API key {self.name!r} is over its limit of {self.rpm} requests a minute; retry in {wait}s",
                    retry_after=max(wait, 1),
                )
            self._starts.append(now)

    def charge(self, tokens: int | None, clock: Callable[[], float] = time.monotonic) -> None:
        """Count the tokens an answered request scored against ``tpm`` (None, unknown: nothing)."""
        if self.tpm is None or not tokens:
            return
        with self._lock:
            self._spent.append((clock(), tokens))
            self._spent_total += tokens

    def _check_tokens(self, now: float) -> None:
        """OverloadedError while the last minute's tokens reach ``tpm``; its lock is held."""
        if self.tpm is None:
            return
        while self._spent and self._spent[0][0] <= now - WINDOW:
            self._spent_total -= self._spent.popleft()[1]
        if self._spent_total < self.tpm:
            return
        # Retry when enough of the oldest charges have aged out to bring the minute under the limit.
        left, frees_at = self._spent_total, now
        for when, tokens in self._spent:
            left, frees_at = left - tokens, when + WINDOW
            if left < self.tpm:
                break
        wait = math.ceil(frees_at - now)
        raise OverloadedError(
            f"API key {self.name!r} is over its limit of {self.tpm} tokens a minute "
            f"({self._spent_total} scored in the last {WINDOW:.0f}s); retry in {max(wait, 1)}s",
            retry_after=max(wait, 1),
        )

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


def key_ring(master_key: str | None, api_keys: list[tuple[Any, ...]]) -> KeyRing | None:
    """The ring for a config's keys (``(key, name, models, rpm[, tpm])`` each); None when there is no key
    (auth off)."""
    keys = [(master_key, KeyPolicy("master"))] if master_key is not None else []
    for index, (key, name, models, rpm, *tpm) in enumerate(api_keys, start=1):
        allowed = frozenset(models) if models else None
        keys.append((key, KeyPolicy(name or f"key-{index}", allowed, rpm, tpm[0] if tpm else None)))
    return KeyRing(keys) if keys else None
