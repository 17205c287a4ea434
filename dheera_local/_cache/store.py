"""The on-disk score cache: raw logits keyed by who computed them and on which pair.

The key is a hash of (model id, revision, max_length, numerics, query, document). *Numerics* names
what produced the number, so a cache never answers with scores of another precision or endpoint:
``float32`` for local fp32 on any device (they agree to 1e-5), ``bfloat16/cpu/onednn-packed`` and
the like for reduced precision, and the endpoint for a remote backend. A remote backend's numerics
also name its credential's namespace (:func:`credential_namespace`: an HMAC of the key with the
folder's secret, never the key), and its entries expire (``DHEERA_REMOTE_CACHE_TTL``); local entries
never do.

Built on diskcache (SQLite, safe across threads and processes). Whoever can write the folder is
not trusted (CVE-2025-69872: diskcache unpickles values, so that would be code execution in every
reader):

* keys are strings and values are 8 raw bytes; :class:`SafeDisk` refuses any pickled or file-backed
  row, and never deletes a file that is not one of diskcache's own inside the cache folder;
* the ``Settings`` table is checked before diskcache reads it (unknown keys, values that are not
  numbers, are refused), and every setting, SQLite PRAGMAs included, is ours, not the table's;
* the folder is created owner-only (0700);
* symlinks in it are never followed: the database and SQLite's side files (``-wal``, ``-shm``,
  ``-journal``) are checked with ``lstat`` before every connection (a link refuses the cache), and a value
  file is deleted through folders opened with ``O_NOFOLLOW`` (a linked sub-folder is left alone).

A cache that cannot be opened, read or written never fails a rerank: it logs a warning and the
call goes on uncached. One request never stores more than half the size limit, so a huge request
cannot evict everything else.

Eviction is ours, not diskcache's: diskcache culls 10 rows per ``set`` while the file's pages exceed the
limit, and pages freed inside a transaction are not returned until it commits, so one request of
``max_entries_per_write`` new rows deleted ten times as many (the cache, its own rows included, emptied).
Before a write, :meth:`ScoreCache._make_room` deletes the expired rows and then only as many of the
oldest as the new rows need, counting ``ENTRY_BYTES`` a row; it runs before the inserts, so the rows a
request writes are never among them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sqlite3
import stat
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import diskcache
from diskcache.core import DBNAME, DEFAULT_SETTINGS, METADATA, MODE_PICKLE, MODE_RAW

from .._models.identity import ModelIdentity
from .secret import cache_secret, derive

logger = logging.getLogger("dheera_local")

DEFAULT_SIZE_LIMIT = 2 * 1024**3  # as DHEERA_CACHE_SIZE_LIMIT's default (the settings pass the real one)
_KEY_VERSION = 2
_LOGIT = struct.Struct(">d")
_KEYS_PER_SELECT = 500
# Bytes one entry takes on disk (measured: ~220 with SQLite's index), to size writes against the limit.
ENTRY_BYTES = 256
# The names diskcache gives its value files (``ab/cd/<28 hex>.val``); any other name is planted.
_OWN_FILE = re.compile(r"^[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{28}\.val$")


class PickledRowRefused(OSError):
    """A cache row holds a pickle or a file; diskcache treats an OSError from fetch as a miss."""


class CorruptSettings(OSError):
    """The cache's Settings table holds something diskcache would paste into SQL or pass to Disk()."""


class SafeDisk(diskcache.Disk):
    """A diskcache Disk that stores raw bytes only, never unpickles or opens a file, and deletes
    only its own value files."""

    def store(self, value, read, key=diskcache.core.UNKNOWN):  # noqa: ANN001, ANN201 (diskcache's signature)
        if not isinstance(value, bytes):
            raise TypeError(f"score cache stores raw bytes only, got {type(value).__name__}")
        return super().store(value, read, key=key)

    def fetch(self, mode, filename, value, read):  # noqa: ANN001, ANN201
        if mode != MODE_RAW or filename is not None:
            _warn_refused(mode)
            raise PickledRowRefused("row refused")
        return super().fetch(mode, filename, value, read)

    def get(self, key, raw):  # noqa: ANN001, ANN201
        if not raw:
            raise PickledRowRefused("pickled key refused")
        return super().get(key, raw)

    def remove(self, file_path):  # noqa: ANN001, ANN201
        # diskcache deletes a replaced or cleared row's file, and the folders it leaves empty: a
        # planted absolute or ../ filename would point that at any file of this user.
        if not isinstance(file_path, str) or not _OWN_FILE.match(file_path.replace(os.sep, "/")):
            logger.warning("score cache: not deleting %r, which is not a file of this cache (a planted row)", file_path)
            return
        _unlink_inside(self._directory, file_path.replace(os.sep, "/"))


def _unlink_inside(root: str, relative: str) -> None:
    """Delete ``root/relative`` and the folders it leaves empty, as diskcache does, without following a
    symlink on the way: ``ab`` linked to another folder would otherwise delete ``<that folder>/cd/<name>``."""
    if not {os.open, os.unlink, os.rmdir} <= os.supports_dir_fd or not hasattr(os, "O_NOFOLLOW"):
        return  # no safe way on this platform: a file left behind is harmless (rows never name one we wrote)
    *folders, name = relative.split("/")
    fds = [os.open(root, os.O_RDONLY | os.O_DIRECTORY)]
    try:
        for folder in folders:
            fds.append(os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fds[-1]))
        os.unlink(name, dir_fd=fds[-1])  # a link named like a value file is removed itself, not its target
        for depth in range(len(folders), 0, -1):
            os.rmdir(folders[depth - 1], dir_fd=fds[depth - 1])
    except OSError:
        pass  # gone already, not empty, or a link: diskcache suppresses these too
    finally:
        for fd in fds:
            os.close(fd)


def _warn_refused(mode: object) -> None:
    kind = "pickled" if mode == MODE_PICKLE else "file-backed or non-raw"
    logger.warning("score cache: refusing a %s row (someone wrote it outside dheera_local)", kind)


# Every setting diskcache reads from its Settings table, with our value: passed explicitly, so a
# planted value never takes effect. METADATA rows are counters that must stay numbers.
# cull_limit 0: diskcache never evicts on its own (see the module docstring); ScoreCache._make_room does.
_SETTINGS: dict[str, object] = {
    **DEFAULT_SETTINGS, "eviction_policy": "least-recently-stored", "statistics": 0, "cull_limit": 0,
}  # fmt: skip


class _HardenedCache(diskcache.Cache):
    """diskcache.Cache whose new connections apply our PRAGMAs, not those read from the Settings table."""

    @property
    def _con(self) -> sqlite3.Connection:
        # diskcache.Cache._con (5.6) re-reads the Settings table on each new thread's connection and
        # pastes every ``sqlite_*`` value into ``PRAGMA name = value``. Same, with our values.
        local_pid = getattr(self._local, "pid", None)
        if local_pid != os.getpid():
            self.close()
            self._local.pid = os.getpid()
        con = getattr(self._local, "con", None)
        if con is None:
            refuse_links(Path(self._directory))
            con = self._local.con = sqlite3.connect(
                os.path.join(self._directory, DBNAME), timeout=self._timeout, isolation_level=None
            )
            for key, value in _SETTINGS.items():
                if key.startswith("sqlite_"):
                    self.reset(key, value, update=False)
        return con


class LinkedDatabase(OSError):
    """The database or one of SQLite's side files in the cache folder is a symlink (or not a file)."""


_DB_FILES = (DBNAME, f"{DBNAME}-wal", f"{DBNAME}-shm", f"{DBNAME}-journal")


def refuse_links(directory: Path) -> None:
    """Raise LinkedDatabase when the database or a side file SQLite would open is anything but a plain
    file: SQLite follows links, so ``cache.db`` -> ``~/.bashrc`` would be written as a database."""
    for name in _DB_FILES:
        try:
            mode = os.lstat(directory / name).st_mode
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(mode):
            kind = "a symlink" if stat.S_ISLNK(mode) else "not a plain file"
            raise LinkedDatabase(f"{directory / name} is {kind} (planted?); not opening it")


def check_settings_table(directory: Path) -> None:
    """Raise CorruptSettings when the existing database's Settings table holds a key diskcache does not
    know (it would reach ``Disk(**kwargs)`` or a PRAGMA) or a counter that is not a number."""
    path = directory / DBNAME
    if not path.exists():
        return
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as con:
            rows = con.execute("SELECT key, value FROM Settings").fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return
        raise
    for key, value in rows:
        if key in METADATA:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise CorruptSettings(f"Settings.{key} is {value!r}, not a number")
        elif key not in _SETTINGS:
            raise CorruptSettings(f"Settings holds an unknown key {str(key)[:40]!r}")


def cache_key(identity: ModelIdentity, query: str, document: str) -> str:
    """A fixed-size string key for one pair (see :class:`KeyMaker` for many)."""
    return KeyMaker(identity)(query, document)


class KeyMaker:
    """Keys for one model identity: the identity is hashed once, each query once, each pair costs one
    hash update of its document.

    Every field is length-prefixed, so field boundaries are unambiguous.
    """

    def __init__(self, identity: ModelIdentity) -> None:
        self._prefix = hashlib.sha256()
        fields = (
            str(_KEY_VERSION), identity.model_id.lower(), identity.revision, str(identity.max_length),
            identity.numerics,
        )  # fmt: skip
        for value in fields:
            self._prefix.update(_field(value))
        if identity.prompt:
            self._prefix.update(_field(identity.prompt))
        self._query: str | None = None
        self._with_query = self._prefix

    def __call__(self, query: str, document: str) -> str:
        if query is not self._query and query != self._query:
            # A request repeats one (possibly long) query beside every document: hash it once.
            self._with_query = self._prefix.copy()
            self._with_query.update(_field(query))
            self._query = query
        digest = self._with_query.copy()
        digest.update(_field(document))
        return digest.hexdigest()


class PairCache(Protocol):
    """What the orchestrator asks of an open cache."""

    def get_many(self, keys: list[str]) -> dict[str, float]: ...

    def set_many(self, logits: dict[str, float], expire: float | None = None) -> None: ...

    def secret(self) -> bytes | None: ...


def credential_namespace(cache: PairCache, credential: str | None) -> str | None:
    """The name a remote backend's scores are cached under for ``credential`` (its API key or token):
    ``cred:<HMAC-SHA256 of the key with the cache folder's secret>``, ``cred:none`` without one. Two
    keys never share entries and a wrong key finds none of the right one's, yet neither the key nor
    anything checkable against it without the secret is stored. None when the folder cannot keep a
    secret (then remote scores are not cached)."""
    if not credential:
        return "cred:none"
    secret = cache.secret()
    if secret is None:
        return None
    return "cred:" + derive(secret, "remote-credential", credential.encode("utf-8", "surrogatepass"))


def _field(value: str) -> bytes:
    data = value.encode("utf-8", "surrogatepass")
    return len(data).to_bytes(8, "big") + data


class ScoreCache:
    """Raw logits on disk. Every method degrades to a miss (with a warning) instead of raising."""

    def __init__(self, directory: Path, size_limit: int = DEFAULT_SIZE_LIMIT) -> None:
        self.directory = directory
        # What "now" is when reading expiring (remote) entries; tests move it forward instead of sleeping.
        self.clock: Callable[[], float] = time.time
        _make_private_dir(directory)
        refuse_links(directory)
        check_settings_table(directory)
        settings = {**_SETTINGS, "size_limit": size_limit}
        self._cache = _HardenedCache(str(directory), disk=SafeDisk, timeout=10, **settings)
        self._warned_write = False
        self._warned_size = False

    @property
    def max_entries_per_write(self) -> int:
        """Entries one request may store: half the size limit, so it cannot evict everything else."""
        return max(self._cache.size_limit // (2 * ENTRY_BYTES), 1)

    @property
    def max_entries(self) -> int:
        """Entries the size limit holds (``ENTRY_BYTES`` each); a write evicts the oldest past it."""
        return max(self._cache.size_limit // ENTRY_BYTES, 1)

    def secret(self) -> bytes | None:
        """The folder's secret (credential namespaces); None when the folder cannot keep one."""
        return cache_secret(self.directory)

    def get_many(self, keys: list[str]) -> dict[str, float]:
        """The cached logits among ``keys``; unreadable rows count as misses.

        One SELECT per 500 keys instead of one ``Cache.get`` per key (10x faster for a 100-document
        request). Equivalent here: values are raw 8-byte rows, an expired entry is a miss as in
        ``Cache.get``, and the least-recently-stored eviction policy records nothing on reads.
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
        query = (
            f"SELECT key, raw, mode, filename, value FROM Cache WHERE key IN ({marks})"
            " AND (expire_time IS NULL OR expire_time > ?)"
        )
        rows = self._cache._sql(query, [*keys, self.clock()]).fetchall()
        found = {}
        for key, raw, mode, filename, value in rows:
            if not raw or mode != MODE_RAW or filename is not None:
                _warn_refused(mode)
                continue
            if isinstance(value, bytes) and len(value) == _LOGIT.size:
                found[key] = _LOGIT.unpack(value)[0]
        return found

    def set_many(self, logits: dict[str, float], expire: float | None = None) -> None:
        """Store logits in one transaction; a full or read-only disk only logs a warning. ``expire``:
        seconds they stay valid (remote scores), None for ever (local ones)."""
        if not logits:
            return
        if len(logits) > self.max_entries_per_write:
            self._warn_size(len(logits))
            logits = dict(list(logits.items())[: self.max_entries_per_write])
        try:
            with self._cache.transact(retry=True):
                self._make_room(list(logits))
                for key, logit in logits.items():
                    self._cache.set(key, _LOGIT.pack(logit), expire=expire, retry=True)
        except (sqlite3.Error, OSError, diskcache.Timeout) as exc:
            if not self._warned_write:
                logger.warning("score cache %s could not be written (%s); results are not cached", self.directory, exc)
                self._warned_write = True

    def _make_room(self, keys: list[str]) -> None:
        """Delete what must go for ``keys`` to fit under :attr:`max_entries`: expired rows, then the
        oldest stored. Called inside the write's transaction, before its inserts."""
        sql = self._cache._sql
        stored = sql("SELECT COUNT(*) FROM Cache").fetchone()[0]
        if stored + len(keys) <= self.max_entries:
            return
        sql("DELETE FROM Cache WHERE expire_time IS NOT NULL AND expire_time < ?", (time.time(),))
        stored = sql("SELECT COUNT(*) FROM Cache").fetchone()[0]
        excess = stored + len(keys) - self._count_present(keys) - self.max_entries
        if excess > 0:
            # Raw SQL, not diskcache's cull: no file is deleted (rows never name files; planted ones are refused).
            sql(
                "DELETE FROM Cache WHERE rowid IN (SELECT rowid FROM Cache ORDER BY store_time, rowid LIMIT ?)",
                (excess,),
            )

    def _count_present(self, keys: list[str]) -> int:
        """How many of ``keys`` are stored already (a rewrite adds no row)."""
        present = 0
        for start in range(0, len(keys), _KEYS_PER_SELECT):
            chunk = keys[start : start + _KEYS_PER_SELECT]
            marks = ",".join("?" * len(chunk))
            present += self._cache._sql(f"SELECT COUNT(*) FROM Cache WHERE key IN ({marks})", chunk).fetchone()[0]
        return present

    def _warn_size(self, count: int) -> None:
        if not self._warned_size:
            logger.warning(
                "score cache %s: a request of %d new scores would not fit beside the others "
                "(size limit %d bytes); storing its first %d. Raise DHEERA_CACHE_SIZE_LIMIT to keep more",
                self.directory, count, self._cache.size_limit, self.max_entries_per_write,
            )  # fmt: skip
            self._warned_size = True

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
    try:
        directory.mkdir(parents=True, mode=0o700)
    except FileExistsError:
        pass  # made earlier, or by another process starting at the same moment (checking first races)
    else:
        os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
        return
    mode = directory.stat().st_mode
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        logger.warning("score cache %s is writable by other users; consider chmod 700", directory)


class CacheStore:
    """The open caches, one per folder, shared by every thread; ``close`` closes them all.

    A process has one (:data:`SHARED_CACHES`, owned by the runtime: :func:`dheera_local.close_all`);
    pass another to ``Reranker(cache=...)`` to keep a reranker's caches apart.
    """

    def __init__(self) -> None:
        self._open: dict[Path, ScoreCache] = {}
        self._lock = threading.Lock()

    def is_open(self, directory: Path) -> bool:
        """True when this store already opened ``directory`` (later lookups are fast)."""
        path = directory.expanduser().resolve()
        with self._lock:
            return path in self._open

    def open(self, directory: Path, size_limit: int = DEFAULT_SIZE_LIMIT) -> ScoreCache | None:
        """The cache for ``directory``, or None (after a warning) when the folder cannot be created
        or its database cannot be opened or is corrupt."""
        directory = directory.expanduser().resolve()
        with self._lock:
            cache = self._open.get(directory)
            if cache is None:
                try:
                    cache = ScoreCache(directory, size_limit)
                # TypeError, KeyError, ValueError: what diskcache raises on a Settings table it cannot use.
                except (sqlite3.Error, OSError, diskcache.Timeout, TypeError, KeyError, ValueError) as exc:
                    logger.warning("score cache %s cannot be opened (%s); scoring without a cache", directory, exc)
                    return None
                self._open[directory] = cache
            return cache

    def close(self) -> None:
        """Close every cache this store opened (a later ``open`` opens it anew)."""
        with self._lock:
            for cache in self._open.values():
                cache.close()
            self._open.clear()


SHARED_CACHES = CacheStore()
