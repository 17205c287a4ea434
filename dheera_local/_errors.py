"""The exceptions dheera_local raises.

Every error the library raises on purpose derives from :class:`DheeraError`::

    DheeraError
    ├── InvalidRequestError        bad input; names the field (and document index)
    ├── ModelNotAvailableError     no local weights and no remote path; says how to fix it
    │   └── UnsupportedModelError  a known model that is not a cross-encoder
    ├── BackendError               one backend failed to score
    │   ├── LocalBackendError      weights that won't load, inference failure after OOM back-off
    │   └── RemoteBackendError     an HTTP endpoint failed (status, url, server message)
    ├── AllBackendsFailedError     every candidate backend failed; lists what was tried
    ├── OverloadedError            a bounded queue is full; retry after ``retry_after`` seconds
    │   └── ShuttingDownError      the queue is closing (the server answers 503)
    └── ConfigError                a bad server config.yaml; names the key path

Foreign exceptions (torch, httpx, huggingface_hub) are translated where they are caught and
chained with ``raise ... from exc``. Every message is masked as it is made (:mod:`._secrets`): no
token, API key or master key in use appears in one.
"""

from __future__ import annotations

from ._secrets import mask


class DheeraError(Exception):
    """Base class of every error dheera_local raises on purpose. Messages are masked (no secrets)."""

    def __init__(self, message: str = "", *args: object) -> None:
        super().__init__(mask(str(message)), *args)


class InvalidRequestError(DheeraError, ValueError):
    """The request is malformed. ``field`` names the offending field, ``index`` the document."""

    def __init__(self, message: str, *, field: str | None = None, index: int | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.index = index

    @property
    def param(self) -> str | None:
        """The field path in the style of API error bodies, e.g. ``documents[3]``."""
        if self.field is None:
            return None
        return self.field if self.index is None else f"{self.field}[{self.index}]"


class ModelNotAvailableError(DheeraError):
    """The model can be served neither locally nor remotely with the given settings."""


class UnsupportedModelError(ModelNotAvailableError):
    """The model exists but is not a cross-encoder this library can score faithfully."""


class BackendError(DheeraError):
    """One backend failed to score the request."""

    backend: str = "backend"


class LocalBackendError(BackendError):
    """The local backend failed: weights that won't load, or inference that failed."""

    backend = "local"


class RemoteBackendError(BackendError):
    """A remote endpoint failed. ``status`` is the HTTP status, or None for transport errors."""

    def __init__(
        self,
        message: str,
        *,
        backend: str = "remote",
        url: str | None = None,
        status: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.backend = backend
        self.url = url
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after


class AllBackendsFailedError(DheeraError):
    """Every candidate backend failed. ``attempts`` holds ``(backend, error)`` in the order tried."""

    def __init__(self, message: str, attempts: list[tuple[str, BackendError]]) -> None:
        super().__init__(message)
        self.attempts = attempts

    @property
    def status(self) -> int | None:
        """The HTTP status of the last remote failure, if any (the server maps it to 502/503)."""
        for _, error in reversed(self.attempts):
            if isinstance(error, RemoteBackendError) and error.status is not None:
                return error.status
        return None


class OverloadedError(DheeraError):
    """A bounded queue is full (the server answers 429 with ``Retry-After``)."""

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ShuttingDownError(OverloadedError):
    """The micro-batch queue is closing: the request was not (or will not be) scored."""


class ConfigError(DheeraError):
    """A configuration file or value is invalid. ``path`` is the key path, e.g. ``model_list[1].model``."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


def shown(value: object, limit: int = 80) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters. Never fails: a caller's value may
    be an integer past Python's 4,300-digit ``repr`` limit, or a list of millions of items."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 4 * limit:
        return f"an integer of {value.bit_length():,} bits"
    if isinstance(value, (list, tuple, dict, set)) and len(value) > limit:
        return f"a {type(value).__name__} of {len(value):,} items"
    try:
        text = repr(value)
    except Exception:  # a nested huge int, or a caller's object whose __repr__ fails: any exception
        return f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = [
    "AllBackendsFailedError",
    "BackendError",
    "ConfigError",
    "DheeraError",
    "InvalidRequestError",
    "LocalBackendError",
    "ModelNotAvailableError",
    "OverloadedError",
    "RemoteBackendError",
    "ShuttingDownError",
    "UnsupportedModelError",
]
