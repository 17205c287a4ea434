"""The shared score-cache tier: the disk cache's keys and 8-byte logits in Redis (or Valkey).

Several replicas of the proxy behind one load balancer each keep a disk cache; a pair that one
replica scored is scored again by the next. Pointing them at one Redis (``DHEERA_CACHE_URL``, or
``cache_url:`` in the proxy's ``general_settings``) makes a pair scored anywhere a hit everywhere.

* Keys are the disk cache's (:class:`~dheera_local._cache.store.KeyMaker`: a SHA-256 of model, revision, max_length,
  numerics, query and document, so never a secret), under the ``dheera:score:`` prefix; values are
  the same 8 raw big-endian bytes; a value of any other length is a miss (never unpickled, never
  trusted beyond being a number).
* One request costs one round trip to read (MGET, 500 keys per command, pipelined) and one to write
  (pipelined SETs, with ``EX`` when a TTL is set).
* Connections come from a bounded pool (a request waits at most the timeout for one); connect, read
  and write time out (0.25 s by default) and redis-py's own retries are off, so a slow tier costs a
  request at most about that long.
* A tier that is down or slow never fails a rerank: the request is scored uncached, one warning is
  logged per minute at most, and the tier is not asked again for a few seconds (so a dead host does
  not add its timeout to every request).
* Optionally two levels (``DHEERA_CACHE_LOCAL=1``, ``cache_local: true``): the replica's own disk
  cache is asked first, the shared tier for what it misses (hits are copied to disk with the time they
  have left in the tier, so a remote endpoint's score keeps its ``DHEERA_REMOTE_CACHE_TTL``), and new
  scores are written to both.

The store (:class:`RedisCacheStore`) offers the orchestrator what :class:`~dheera_local._cache.store.CacheStore` does
(``open``, ``is_open``, ``close``), so ``Reranker(cache=RedisCacheStore(url))`` is all it takes.
redis-py is imported only when a store is made (``pip install 'dheera_local[redis]'``).
"""

from __future__ import annotations

import logging
import math
import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from .._errors import ConfigError
from .._secrets import register
from .._settings import Settings  # at run time too: typing.get_type_hints resolves from_settings' signature
from .store import DEFAULT_SIZE_LIMIT, SHARED_CACHES, CacheStore, PairCache

logger = logging.getLogger("dheera_local")

KEY_PREFIX = "dheera:score:"
# 32 random bytes, made by the first replica: the HMAC secret of remote endpoints' credential namespaces.
SECRET_KEY = "dheera:secret"
DEFAULT_TIMEOUT = 0.25  # seconds: connect, each read/write, and the wait for a pooled connection
DEFAULT_MAX_CONNECTIONS = 16
RETRY_AFTER = 5.0  # seconds a failed tier is left alone before it is asked again
WARN_EVERY = 60.0  # seconds between two warnings about an unreachable tier
SCHEMES = ("redis", "rediss", "unix")
_LOGIT = struct.Struct(">d")
_KEYS_PER_MGET = 500


def redacted(url: str) -> str:
    """``url`` without its user name and password, for messages."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def check_url(url: str, where: str = "DHEERA_CACHE_URL") -> str:
    """``url`` when its scheme is one Redis speaks; ConfigError naming ``where`` otherwise."""
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise ConfigError(
            f"{where}: {redacted(url)!r} is not a Redis URL; write redis://host:6379/0, rediss://... (TLS) "
            "or unix:///path/to/redis.sock",
            path=where,
        )
    return url


class _Breaker:
    """Whether to ask the tier now, and when to warn: after a failure the tier is skipped for
    ``retry_after`` seconds, and a warning is logged at most once per ``warn_every`` seconds."""

    def __init__(self, name: str, retry_after: float, warn_every: float, clock: Callable[[], float]) -> None:
        self.name = name
        self.retry_after = retry_after
        self.warn_every = warn_every
        self._clock = clock
        self._skip_until = float("-inf")
        self._next_warning = float("-inf")
        self._down = False
        self._lock = threading.Lock()
        self.failures = 0

    def available(self) -> bool:
        return self._clock() >= self._skip_until

    def failed(self, action: str, exc: BaseException) -> None:
        now = self._clock()
        with self._lock:
            self.failures += 1
            self._down = True
            self._skip_until = now + self.retry_after
            warn = now >= self._next_warning
            if warn:
                self._next_warning = now + self.warn_every
        if warn:
            logger.warning(
                "shared score cache %s could not %s (%s: %s); scoring without it, retrying in %gs "
                "(this warning repeats at most every %gs)",
                self.name, action, type(exc).__name__, exc, self.retry_after, self.warn_every,
            )  # fmt: skip

    def succeeded(self) -> None:
        if self._down:
            with self._lock:
                was_down, self._down = self._down, False
            if was_down:
                logger.info("shared score cache %s is reachable again", self.name)


class RedisScoreCache:
    """Logits in Redis under the disk cache's keys. Every method degrades to a miss instead of raising."""

    def __init__(self, client: Any, breaker: _Breaker, errors: tuple[type[BaseException], ...], ttl: int | None):
        self._client = client
        self._breaker = breaker
        self._errors = errors
        self.ttl = ttl

    def get_many(self, keys: list[str]) -> dict[str, float]:
        """The cached logits among ``keys`` (one pipelined round trip); nothing when the tier is down."""
        return {key: logit for key, (logit, _) in self.get_many_with_ttl(keys, ttl=False).items()}

    def get_many_with_ttl(self, keys: list[str], ttl: bool = True) -> dict[str, tuple[float, float | None]]:
        """The cached logits among ``keys``, each with the seconds it has left in the tier (None: no
        expiry), in the same pipelined round trip (PTTL per key); nothing when the tier is down."""
        if not keys or not self._breaker.available():
            return {}
        try:
            pipe = self._client.pipeline(transaction=False)
            for start in range(0, len(keys), _KEYS_PER_MGET):
                pipe.mget([KEY_PREFIX + key for key in keys[start : start + _KEYS_PER_MGET]])
            for key in keys if ttl else ():
                pipe.pttl(KEY_PREFIX + key)
            answers = pipe.execute()
        except self._errors as exc:
            self._breaker.failed("be read", exc)
            return {}
        self._breaker.succeeded()
        chunks = -(-len(keys) // _KEYS_PER_MGET)
        values = [value for chunk in answers[:chunks] for value in chunk]
        left = [_seconds_left(ms) for ms in answers[chunks:]] if ttl else [None] * len(keys)
        return {
            key: (_LOGIT.unpack(value)[0], seconds)
            for key, value, seconds in zip(keys, values, left, strict=True)
            if isinstance(value, bytes) and len(value) == _LOGIT.size
        }

    def set_many(self, logits: dict[str, float], expire: float | None = None) -> None:
        """Store logits (one pipelined round trip), each for the tier's TTL or ``expire`` seconds (a remote
        endpoint's scores), whichever is shorter."""
        if not logits or not self._breaker.available():
            return
        lifetimes = [t for t in (self.ttl, None if expire is None else max(1, math.ceil(expire))) if t is not None]
        ttl = min(lifetimes) if lifetimes else None
        try:
            pipe = self._client.pipeline(transaction=False)
            for key, logit in logits.items():
                pipe.set(KEY_PREFIX + key, _LOGIT.pack(logit), ex=ttl)
            pipe.execute()
        except self._errors as exc:
            self._breaker.failed("be written", exc)
            return
        self._breaker.succeeded()

    def secret(self) -> bytes | None:
        """The tier's secret for credential namespaces, shared by every replica (made by the first, SET NX),
        so a remote endpoint's scores keyed under one key's namespace are hits on every replica. None while
        the tier is down (remote scores are then not cached)."""
        if not self._breaker.available():
            return None
        try:
            self._client.set(SECRET_KEY, os.urandom(32), nx=True)
            secret = self._client.get(SECRET_KEY)
        except self._errors as exc:
            self._breaker.failed("be read", exc)
            return None
        return secret if isinstance(secret, bytes) and len(secret) == 32 else None

    def stats(self) -> dict[str, object]:
        """The tier's URL (without credentials), its TTL and how often it failed."""
        return {"url": self._breaker.name, "ttl_seconds": self.ttl, "failures": self._breaker.failures}


def _seconds_left(milliseconds: object) -> float | None:
    """PTTL's answer as seconds: None for no expiry (-1); 0 for a key gone meanwhile (-2)."""
    if milliseconds == -1:
        return None
    return max(milliseconds, 0) / 1000 if isinstance(milliseconds, int) else 0.0  # unknown: not copied


class TwoLevelCache:
    """A replica's disk cache in front of the shared tier: disk first, the tier for the rest."""

    def __init__(self, local: PairCache, shared: RedisScoreCache) -> None:
        self.local = local
        self.shared = shared

    def get_many(self, keys: list[str]) -> dict[str, float]:
        found = self.local.get_many(keys)
        missing = [key for key in keys if key not in found]
        if missing:
            remote = self.shared.get_many_with_ttl(missing)
            self._copy_to_disk(remote)
            found.update({key: logit for key, (logit, _) in remote.items()})
        return found

    def _copy_to_disk(self, remote: dict[str, tuple[float, float | None]]) -> None:
        """The tier's hits on disk too, so the next lookup stays on this machine, each expiring when it
        does in the tier: a remote endpoint's score (``DHEERA_REMOTE_CACHE_TTL``) or one under the tier's
        TTL must not outlive it on disk. Grouped by whole seconds left (rounded down), one write per group."""
        groups: dict[int | None, dict[str, float]] = {}
        for key, (logit, seconds) in remote.items():
            left = None if seconds is None else math.floor(seconds)
            if left is None or left >= 1:  # under a second left: not worth a disk write
                groups.setdefault(left, {})[key] = logit
        for left, logits in groups.items():
            self.local.set_many(logits, expire=left)

    def set_many(self, logits: dict[str, float], expire: float | None = None) -> None:
        self.local.set_many(logits, expire=expire)
        self.shared.set_many(logits, expire=expire)

    def secret(self) -> bytes | None:
        return self.shared.secret()  # the tier's: both levels hold the same keys


@dataclass(frozen=True)
class TierOptions:
    """How to reach the tier and what to keep there (``url`` may carry a password: never logged)."""

    url: str
    ttl: int | None = None
    local: bool = False
    timeout: float = DEFAULT_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS


class RedisCacheStore:
    """The shared tier as a cache store for ``Reranker(cache=...)``.

    Args:
        url: ``redis://[:password@]host:6379/0``, ``rediss://...`` (TLS) or ``unix:///path/redis.sock?db=0``.
        ttl: Seconds an entry lives (None: until Redis evicts it; set ``maxmemory-policy allkeys-lru``).
        local: Keep a disk cache (from ``local_store``, at the request's cache folder) in front of the tier.
        timeout: Seconds for a connect, a command, or the wait for a pooled connection.
        max_connections: The pool's bound; requests beyond it wait up to ``timeout``, then go uncached.
        local_store: The disk caches to use with ``local`` (default: the process's).
        retry_after, warn_every: Seconds a failed tier is skipped; seconds between two warnings.
    """

    def __init__(
        self, url: str, *, ttl: int | None = None, local: bool = False, timeout: float = DEFAULT_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS, local_store: CacheStore | None = None,
        retry_after: float = RETRY_AFTER, warn_every: float = WARN_EVERY, clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        check_url(url)
        if ttl is not None and ttl <= 0:
            ttl = None
        self.options = TierOptions(url, ttl, local, timeout, max_connections)
        self.name = redacted(url)
        password = urlsplit(url).password
        register(password)
        register(unquote(password or ""))  # redis-py sends the unquoted form
        self.local_store = local_store if local_store is not None else SHARED_CACHES
        client, errors = _client(url, timeout, max_connections)
        self._cache = RedisScoreCache(client, _Breaker(self.name, retry_after, warn_every, clock), errors, ttl)
        self._client = client

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> RedisCacheStore:
        """The tier ``settings`` name (``DHEERA_CACHE_URL`` and friends)."""
        if settings.cache_url is None:
            raise ConfigError("no shared cache is configured (DHEERA_CACHE_URL)", path="DHEERA_CACHE_URL")
        options = {
            "ttl": settings.cache_ttl, "local": settings.cache_local, "timeout": settings.cache_timeout,
            **overrides,
        }  # fmt: skip
        return cls(settings.cache_url.get_secret_value(), **options)

    def __repr__(self) -> str:
        return f"RedisCacheStore({self.name!r}, ttl={self.options.ttl}, local={self.options.local})"

    @property
    def shared(self) -> RedisScoreCache:
        return self._cache

    def is_open(self, directory: Path) -> bool:
        """Always False: a lookup is a network round trip, so the orchestrator runs it off the event loop."""
        return False

    def open(self, directory: Path, size_limit: int = DEFAULT_SIZE_LIMIT) -> PairCache | None:
        """The tier, behind the disk cache at ``directory`` when the store keeps one."""
        if not self.options.local:
            return self._cache
        disk = self.local_store.open(directory, size_limit)
        return self._cache if disk is None else TwoLevelCache(disk, self._cache)

    def ping(self) -> bool:
        """True when the tier answers now (for readiness reports; never raises)."""
        try:
            return bool(self._client.ping())
        except Exception:  # noqa: BLE001 - any failure means "not reachable"
            return False

    def close(self) -> None:
        """Close the pool's connections (a later request opens new ones)."""
        try:
            self._client.close()
            self._client.connection_pool.disconnect()
        except Exception as exc:  # noqa: BLE001 - closing must not fail a shutdown
            logger.debug("closing the shared score cache %s: %s", self.name, exc)


def _client(url: str, timeout: float, max_connections: int) -> tuple[Any, tuple[type[BaseException], ...]]:
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError as exc:
        raise ConfigError(
            f"a shared score cache ({redacted(url)}) needs redis-py: pip install 'dheera_local[redis]'",
            path="DHEERA_CACHE_URL",
        ) from exc
    try:
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout,  # the wait for a free connection
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # redis-py retries 3 times by default: a dead tier would cost 4 timeouts
            health_check_interval=30,
        )
    except ValueError as exc:
        raise ConfigError(f"DHEERA_CACHE_URL: {redacted(url)!r} is not a valid Redis URL ({exc})") from None
    return redis.Redis(connection_pool=pool), (redis.RedisError, OSError)


class SharedTiers:
    """The process's shared tiers, one per set of options; closed by :func:`dheera_local.close_all`."""

    def __init__(self) -> None:
        self._open: dict[TierOptions, RedisCacheStore] = {}
        self._lock = threading.Lock()

    def get(self, settings: Settings) -> RedisCacheStore:
        store = RedisCacheStore.from_settings(settings)
        with self._lock:
            existing = self._open.get(store.options)
            if existing is not None:
                store.close()
                return existing
            self._open[store.options] = store
            return store

    def close(self) -> None:
        with self._lock:
            stores, self._open = list(self._open.values()), {}
        for store in stores:
            store.close()


SHARED_TIERS = SharedTiers()


def default_store(settings: Settings) -> CacheStore | RedisCacheStore:
    """The store a Reranker uses unless given one: the shared tier when ``DHEERA_CACHE_URL`` names one,
    else the process's disk caches."""
    if getattr(settings, "cache_url", None) is None:
        return SHARED_CACHES
    return SHARED_TIERS.get(settings)
