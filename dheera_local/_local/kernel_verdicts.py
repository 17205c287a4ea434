"""The load-time kernel check's verdicts, remembered on disk so that a later process skips the check.

The check (:mod:`dheera_local._local.cpu_kernels`) runs the probe batch through the model three times, most of a cold
start's compute on a big model. Its verdict depends on nothing but what :class:`ProbeKey` names: the
weights (model id, revision and the size and mtime of their files), the dtype, the CPU (model name
and flags) and the torch version, plus the rule's own version. Another value of any of them is
another file, so a verdict is never reused for other weights, precision, CPU or torch.

Each verdict is a small JSON file ``<cache_dir>/kernel-verdicts/<sha256 of the key>.json``, written
to a temporary file and renamed (a reader sees a whole file or none), signed with the cache folder's
secret (:mod:`dheera_local._cache.secret`). A file that is not a private regular file, is too long, is not that
JSON, names another key, another verdict than the two known, or has a wrong signature is ignored:
the check runs again and rewrites it. The worst a planted verdict could do is pick between eager and
packed kernels, and a packing that raises still leaves the eager model.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import platform
import stat
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from .._cache.secret import cache_secret, derive
from .._models.discovery import LocalWeights, folder_fingerprint

logger = logging.getLogger("dheera_local")

FOLDER = "kernel-verdicts"
KERNELS = ("onednn-packed", "eager")  # cpu_kernels.PACKED, EAGER (this module imports no torch)
# Bumped when the check's rule or the probe batch changes: earlier verdicts then no longer apply.
RULE_VERSION = "1"
_MAX_BYTES = 4096
_PURPOSE = "kernel-verdict"


@dataclass(frozen=True)
class ProbeKey:
    """Everything a verdict depends on."""

    model_id: str
    revision: str
    files: str  # size and mtime of the weight, config and tokenizer files
    dtype: str
    cpu: str
    torch: str
    rule: str = RULE_VERSION

    def digest(self) -> str:
        return hashlib.sha256(_canonical(asdict(self))).hexdigest()


def probe_key(weights: LocalWeights, dtype: str, torch_version: str) -> ProbeKey | None:
    """The key for ``weights`` in ``dtype`` on this CPU under ``torch_version``; None when the weights'
    files cannot be read (then nothing is remembered)."""
    try:
        files = folder_fingerprint(Path(weights.path))
    except OSError:
        return None
    return ProbeKey(weights.model_id, weights.revision, files, dtype, cpu_identity(), torch_version)


def cpu_identity() -> str:
    """This CPU's model name and feature flags (Linux: /proc/cpuinfo), else what ``platform`` says."""
    name, flags = "", ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                field, _, value = line.partition(":")
                field = field.strip()
                if field == "model name" and not name:
                    name = value.strip()
                elif field in ("flags", "Features") and not flags:
                    flags = " ".join(sorted(value.split()))
                if name and flags:
                    break
    except OSError:
        pass
    return f"{platform.machine()}|{name or platform.processor()}|{flags}"


class VerdictStore:
    """Verdicts under the cache folder ``cache_dir``. Never raises: a store that cannot be read or
    written only means the check runs."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = Path(cache_dir).expanduser()
        self.folder = self.cache_dir / FOLDER

    def read(self, key: ProbeKey) -> str | None:
        """The remembered kernels for ``key`` (one of :data:`KERNELS`), or None."""
        path = self.folder / f"{key.digest()}.json"
        try:
            data = _read_private(path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.info("kernel verdict %s ignored (%s); the check runs again", path, exc)
            return None
        secret = cache_secret(self.cache_dir)
        kernels = _parse(data, key, secret) if secret is not None else None
        if kernels is None:
            logger.info("kernel verdict %s ignored (not a verdict for this key); the check runs again", path)
            return None
        logger.debug("kernel verdict for %s read from %s: %s", key.model_id, path, kernels)
        return kernels

    def write(self, key: ProbeKey, kernels: str, reason: str) -> None:
        """Remember ``kernels`` for ``key`` (atomically: a reader never sees half a file)."""
        try:
            _private_dir(self.cache_dir)
            _private_dir(self.folder)
            secret = cache_secret(self.cache_dir)
            if secret is None:
                return
            body = {"key": asdict(key), "kernels": kernels, "reason": reason[:500]}
            body["mac"] = derive(secret, _PURPOSE, _canonical(body))
            _replace(self.folder / f"{key.digest()}.json", json.dumps(body, sort_keys=True).encode())
        except OSError as exc:
            logger.info("kernel verdict not remembered in %s (%s)", self.folder, exc)


def _parse(data: bytes, key: ProbeKey, secret: bytes) -> str | None:
    try:
        body = json.loads(data)
    except ValueError:
        return None
    if not isinstance(body, dict) or set(body) != {"key", "kernels", "reason", "mac"}:
        return None
    mac = body.pop("mac")
    expected = derive(secret, _PURPOSE, _canonical(body))
    if not isinstance(mac, str) or not hmac.compare_digest(mac.encode(), expected.encode()):
        return None
    if body["key"] != asdict(key) or body["kernels"] not in KERNELS:
        return None
    return body["kernels"]


def _canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _read_private(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_BYTES:
            raise OSError("not a small regular file")
        return os.read(fd, _MAX_BYTES + 1)
    finally:
        os.close(fd)


def _private_dir(folder: Path) -> None:
    if folder.is_symlink():
        raise OSError(f"{folder} is a symlink")
    if not folder.exists():
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(folder, 0o700)  # mkdir's mode is filtered by the umask


def _replace(path: Path, data: bytes) -> None:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".verdict-")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)
