"""The cache folder's own secret: keys derived from it name things the cache must not hold in clear.

A remote score is cached under the credential it was fetched with (a wrong ``api_key`` must not get
the right key's scores), yet the credential itself must never reach the cache: its namespace is
``HMAC-SHA256(secret, credential)``, with a random 32-byte secret made on first use in the cache
folder (``secret.key``, owner-only 0600). Without the secret a cache row says nothing about the key;
with it, only a guess can be checked. The kernel verdicts (:mod:`dheera_local._local.kernel_verdicts`) are signed with
it, so a verdict planted by a writer who cannot read the secret is ignored.

A secret file that is not a private regular file of 32 bytes (a symlink, another size, readable by
others) is replaced by a new one: what was derived from the old one is no longer found (misses, never
wrong answers). A folder where no secret can be kept gives None: callers then do not cache.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import stat
import tempfile
import threading
from pathlib import Path

logger = logging.getLogger("dheera_local")

SECRET_NAME = "secret.key"
SECRET_BYTES = 32

_known: dict[Path, bytes] = {}
_lock = threading.Lock()


class _Unusable(OSError):
    """The secret file is not a private 32-byte regular file."""


def cache_secret(directory: Path) -> bytes | None:
    """The secret of the cache folder ``directory`` (made now if it has none), or None (after a warning)
    when the folder cannot keep one. Read once per folder per process."""
    with _lock:
        secret = _known.get(directory)
        if secret is None:
            try:
                secret = _read_or_make(directory / SECRET_NAME)
            except OSError as exc:
                logger.warning("cache %s keeps no secret (%s); remote scores are not cached", directory, exc)
                return None
            _known[directory] = secret
        return secret


def derive(secret: bytes, purpose: str, data: bytes) -> str:
    """A key derived from ``secret`` for ``purpose`` (domain separation) and ``data``, as hex."""
    return hmac.new(secret, purpose.encode() + b"\0" + data, hashlib.sha256).hexdigest()


def _read_or_make(path: Path) -> bytes:
    try:
        return _read(path)
    except FileNotFoundError:
        made = _write_new(path, replace=False)
        return made if made is not None else _read(path)  # None: another process made it first
    except _Unusable as exc:
        logger.warning("cache secret %s is unusable (%s); making a new one", path, exc)
    except OSError as exc:
        if not path.is_symlink():
            raise
        logger.warning("cache secret %s is a symlink (%s); making a new one", path, exc)
    made = _write_new(path, replace=True)
    assert made is not None
    return made


def _read(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _Unusable("not a regular file")
        if info.st_mode & 0o077:
            raise _Unusable(f"mode {stat.S_IMODE(info.st_mode):o}, not 0600")
        data = os.read(fd, SECRET_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) != SECRET_BYTES:
        raise _Unusable(f"{len(data)} bytes, not {SECRET_BYTES}")
    return data


def _write_new(path: Path, *, replace: bool) -> bytes | None:
    """A new secret at ``path``, written whole before it appears there (a reader never sees half of one).
    ``replace=False``: None when another process made one meanwhile (theirs wins)."""
    secret = secrets.token_bytes(SECRET_BYTES)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".secret-")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(secret)
            file.flush()
            os.fsync(file.fileno())
        if replace:
            os.replace(temporary, path)
            return secret
        try:
            os.link(temporary, path)  # atomic, and fails if the name exists
        except FileExistsError:
            return None
        return secret
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)
