"""The on-disk score cache: raw logits keyed by (model identity, max_length, query, document).

Built on diskcache (SQLite, safe across threads and processes), with two hardenings against
CVE-2025-69872 (diskcache unpickles values, so whoever can write the folder could run code in
every reader): keys are strings and values are 8 raw bytes, and :class:`SafeDisk` refuses any
pickled row it is asked to read. The folder is created owner-only (0700).

A cache that cannot be opened, read or written never fails a rerank: it logs a warning and the
call goes on uncached.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import stat
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import diskcache
from diskcache.core import MODE_PICKLE, MODE_RAW

logger = logging.getLogger("dheera_local")

DEFAULT_SIZE_LIMIT = 2 * 1024**3
_KEY_VERSION = 1
_LOGIT = struct.Struct(">d")
_KEYS_PER_SELECT = 500


class PickledRowRefused(OSError):
    """A cache row holds a pickle; diskcache treats an OSError from fetch as a miss."""


class SafeDisk(diskcache.Disk):
    """A diskcache Disk that stores raw bytes only and refuses to unpickle anything."""

    def store(self, value, read, key=diskcache.core.UNKNOWN):  # noqa: ANN001, ANN201 (diskcache's signature)
        if not isinstance(value, bytes):
            raise TypeError(f"score cache stores raw bytes only, got {type(value).__name__}")
        return super().store(value, read, key=key)

    def fetch(self, mode, filename, value, read):  # noqa: ANN001, ANN201
        if mode == MODE_PICKLE:
            logger.warning("score cache: refusing a pickled row (someone wrote it outside dheera_local)")
            raise PickledRowRefused("pickled row refused")
        return super().fetch(mode, filename, value, read)

    def get(self, key, raw):  # noqa: ANN001, ANN201
        if not raw:
            raise PickledRowRefused("pickled key refused")
        return super().get(key, raw)


@dataclass(frozen=True)
class ModelIdentity:
    """What makes two scores interchangeable: the same weights, read the same way."""

    model_id: str
    revision: str
    max_length: int


def cache_key(identity: ModelIdentity, query: str, document: str) -> str:
    """A fixed-size string key for one pair (see :class:`KeyMaker` for many)."""
    return KeyMaker(identity)(query, document)


class KeyMaker:
    """Keys for one model identity: the identity is hashed once, each pair costs one hash update.

    Every field is length-prefixed, so field boundaries are unambiguous.
    """

    def __init__(self, identity: ModelIdentity) -> None:
        self._prefix = hashlib.sha256()
        fields = (str(_KEY_VERSION), identity.model_id.lower(), identity.revision, str(identity.max_length))
        for value in fields:
            self._prefix.update(_field(value))

    def __call__(self, query: str, document: str) -> str:
        digest = self._prefix.copy()
        digest.update(_field(query))
        digest.update(_field(document))
        return digest.hexdigest()


def _field(value: str) -> bytes:
    data = value.encode("utf-8", "surrogatepass")
    return len(data).to_bytes(8, "big") + data


def default_cache_dir() -> Path:
    """``$DHEERA_CACHE_DIR``, else ``$XDG_CACHE_HOME/dheera_local``, else ``~/.cache/dheera_local``."""
    if os.environ.get("DHEERA_CACHE_DIR"):
        return Path(os.environ["DHEERA_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "dheera_local"


def _size_limit() -> int:
    raw = os.environ.get("DHEERA_CACHE_SIZE_LIMIT")
    if not raw:
        return DEFAULT_SIZE_LIMIT
    try:
        return max(int(raw), 1)
    except ValueError:
        logger.warning("DHEERA_CACHE_SIZE_LIMIT=%r is not a number of bytes; using %d", raw, DEFAULT_SIZE_LIMIT)
        return DEFAULT_SIZE_LIMIT


class ScoreCache:
    """Raw logits on disk. Every method degrades to a miss (with a warning) instead of raising."""

    def __init__(self, directory: Path, size_limit: int | None = None) -> None:
        self.directory = directory
        _make_private_dir(directory)
        self._cache = diskcache.Cache(str(directory), disk=SafeDisk, size_limit=size_limit or _size_limit(), timeout=10)
        self._warned_write = False

    def get_many(self, keys: list[str]) -> dict[str, float]:
        """The cached logits among ``keys``; unreadable rows count as misses.

        One SELECT per 500 keys instead of one ``Cache.get`` per key (10x faster for a 100-document
        request). Equivalent here: values are raw 8-byte rows, entries never expire, and the
        least-recently-stored eviction policy records nothing on reads.
        """
        found: dict[str, float] = {}
        try:
            for start in range(0, len(keys), _KEYS_PER_SELECT):
                found.update(self._select(keys[start : start + _KEYS_PER_SELECT]))
        except (sqlite3.Error, OSError, diskcache.Timeout) as exc:
            logger.warning("score cache %s could not be read (%s); scoring without it", self.directory, exc)
        return found

    def _select(self, keys: list[str]) -> dict[str, float]:
        marks = ",".join("?" * len(keys))
        rows = self._cache._sql(f"SELECT key, raw, mode, value FROM Cache WHERE key IN ({marks})", keys).fetchall()
        found = {}
        for key, raw, mode, value in rows:
            if not raw or mode != MODE_RAW:
                logger.warning("score cache: refusing a pickled row (someone wrote it outside dheera_local)")
                continue
            if isinstance(value, bytes) and len(value) == _LOGIT.size:
                found[key] = _LOGIT.unpack(value)[0]
        return found

    def set_many(self, logits: dict[str, float]) -> None:
        """Store logits in one transaction; a full or read-only disk only logs a warning."""
        if not logits:
            return
        try:
            with self._cache.transact(retry=True):
                for key, logit in logits.items():
                    self._cache.set(key, _LOGIT.pack(logit), retry=True)
        except (sqlite3.Error, OSError, diskcache.Timeout) as exc:
            if not self._warned_write:
                logger.warning("score cache %s could not be written (%s); results are not cached", self.directory, exc)
                self._warned_write = True

    def stats(self) -> dict[str, object]:
        """Entries, bytes on disk and limits."""
        return {
            "directory": str(self.directory),
            "entries": len(self._cache),
            "size_bytes": self._cache.volume(),
            "size_limit_bytes": self._cache.size_limit,
        }

    def clear(self) -> int:
        """Remove every entry; returns how many were removed."""
        return self._cache.clear(retry=True)

    def close(self) -> None:
        self._cache.close()


def _make_private_dir(directory: Path) -> None:
    if not directory.exists():
        directory.mkdir(parents=True, mode=0o700)
        os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
        return
    mode = directory.stat().st_mode
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        logger.warning("score cache %s is writable by other users; consider chmod 700", directory)


_open_caches: dict[Path, ScoreCache] = {}
_open_lock = threading.Lock()


def _cache_key_path(directory: Path | None) -> Path:
    return (directory or default_cache_dir()).expanduser().resolve()


def is_cache_open(directory: Path | None = None) -> bool:
    """True when this process already opened the cache for ``directory`` (later lookups are fast)."""
    path = _cache_key_path(directory)
    with _open_lock:
        return path in _open_caches


def open_cache(directory: Path | None = None) -> ScoreCache | None:
    """The process-wide cache for ``directory`` (default: :func:`default_cache_dir`), or None.

    None (after a warning) when the folder cannot be created or its database cannot be opened.
    """
    directory = _cache_key_path(directory)
    with _open_lock:
        cache = _open_caches.get(directory)
        if cache is None:
            try:
                cache = ScoreCache(directory)
            except (sqlite3.Error, OSError, diskcache.Timeout) as exc:
                logger.warning("score cache %s cannot be opened (%s); scoring without a cache", directory, exc)
                return None
            _open_caches[directory] = cache
        return cache


def close_all() -> None:
    """Close every cache this process opened (tests and servers call this on shutdown)."""
    with _open_lock:
        for cache in _open_caches.values():
            cache.close()
        _open_caches.clear()
