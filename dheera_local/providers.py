"""Remote providers: the wire formats ``api_format`` names, registered in one place.

A provider is a name (the ``api_format`` value), the environment variables that hold its key, where
that key may be sent, and how to make the :class:`~dheera_local._backend.Backend` for one
endpoint. Everything that lists wire formats reads this registry: the ``api_format`` check, the
CLI's ``--api-format`` choices, config.yaml's ``api_format``, the key read from the environment
(:class:`~dheera_local.Settings`), :mod:`dheera_local.testing`'s fake reranker. The built-ins (``tei``,
``cohere``, ``hf``) register through :func:`register_provider`, as a plugin does:

>>> import dheera_local
>>> from dheera_local.providers import Provider
>>> def make(endpoint):  # endpoint: an Endpoint; returns a Backend (e.g. a RemoteBackend subclass)
...     ...
>>> dheera_local.register_provider(Provider("my-api", make, key_env=("MY_API_KEY",)))
>>> "my-api" in dheera_local.providers.provider_names()
True
>>> removed = dheera_local.unregister_provider("my-api")

A package registers its providers without being imported by the user through the
``dheera_local.providers`` entry-point group (``my-api = "my_package.rerank:PROVIDER"``, the
object a :class:`Provider`); they load on the first use of the registry, not at ``import dheera_local``.

This module imports nothing heavy (no httpx, no torch): the option checks and ``--help`` read it.
The remote toolkit a provider builds on (:class:`RemoteBackend`, :class:`Call`, the limits and
parsing helpers) loads from here when first asked for.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from pydantic import SecretStr

    from ._backend import Backend, PairsByQuery
    from ._remote.backend import RemoteBackend, group_by_limits, probability_to_logit, scores_in_order
    from ._remote.http import Call, HttpClients, RetryPolicy

logger = logging.getLogger("dheera_local")

ENTRY_POINT_GROUP = "dheera_local.providers"


@dataclass(frozen=True)
class Endpoint:
    """One endpoint a provider's backend is made for, with the shared resources to reach it.

    Attributes:
        api_base: The caller's URL; None when none was given (the provider's ``default_api_base``, or
            the provider's own default where it has one, e.g. ``hf``'s hosted inference).
        model: The model name the endpoint knows.
        api_key: The caller's key, else the provider's key from the environment where
            :meth:`Provider.sends_env_key` allows it; None: send none.
        timeout: Seconds one request may take (None: the retry policy's).
        clients: The pooled HTTP clients of the Reranker (closed with it).
        retry: Timeouts, attempts and backoff.
        settings: The Reranker's :class:`~dheera_local.Settings` (typed ``Any`` here: this module sits
            below ``_settings`` in the import graph, which reads each provider's ``key_env``).
        state: This provider's scratch space, shared by every backend one Reranker makes with it
            (e.g. TEI's batch limits, read once per endpoint).
    """

    api_base: str | None
    model: str
    api_key: SecretStr | None
    timeout: float | None
    clients: HttpClients
    retry: RetryPolicy
    settings: Any
    state: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Provider:
    """A remote rerank API: what ``api_format=<name>`` means.

    Args:
        name: The ``api_format`` value (lowercase letters, digits, ``-``, ``_``).
        make: Makes the backend for one :class:`Endpoint`. Its ``name`` is what responses report as
            the serving backend; its ``numerics()`` (e.g. ``"<name>:<endpoint>"``) keys its cached scores.
        key_env: Environment variables holding the provider's key, the first set wins; read with the
            other settings (:meth:`Settings.from_env <dheera_local.Settings.from_env>`).
        key_hosts: Which ``api_base`` may receive that key (default: the host of ``default_api_base``
            over https; without one, none): a key is never sent to a server it was not made for.
        default_api_base: The provider's own API, used when the caller gives no ``api_base``; None:
            ``api_format=<name>`` needs ``api_base``.
        description: One line for ``--help`` and the docs.
    """

    name: str
    make: Callable[[Endpoint], Backend]
    key_env: tuple[str, ...] = ()
    key_hosts: Callable[[str], bool] | None = None
    default_api_base: str | None = None
    description: str = ""

    def sends_env_key(self, api_base: str | None) -> bool:
        """Whether the key from ``key_env`` may go to ``api_base`` (None: the default API)."""
        if api_base is None:
            return self.default_api_base is not None
        if self.key_hosts is not None:
            return self.key_hosts(api_base)
        return self.default_api_base is not None and same_host(api_base, self.default_api_base)


def same_host(url: str, other: str) -> bool:
    """True when ``url`` is https on ``other``'s host (and port)."""
    parts, theirs = urlsplit(url), urlsplit(other)
    return parts.scheme == "https" and parts.netloc.lower() == theirs.netloc.lower()


class _Registry:
    """The providers by name; built-ins and entry points are added on first use."""

    def __init__(self) -> None:
        self._providers: dict[str, Provider] = {}
        self._lock = threading.RLock()
        self._loaded = False

    def register(self, provider: Provider, *, replace: bool = False) -> None:
        _check_name(provider)
        with self._lock:
            self._load()
            if provider.name in self._providers and not replace and self._providers[provider.name] != provider:
                raise ValueError(
                    f"a provider named {provider.name!r} is registered already; pass replace=True to replace it"
                )
            self._providers[provider.name] = provider

    def unregister(self, name: str) -> Provider:
        with self._lock:
            self._load()
            return self._providers.pop(name)

    def get(self, name: str) -> Provider:
        with self._lock:
            self._load()
            return self._providers[name]

    def names(self) -> tuple[str, ...]:
        with self._lock:
            self._load()
            return tuple(self._providers)

    def all(self) -> tuple[Provider, ...]:
        with self._lock:
            self._load()
            return tuple(self._providers.values())

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # first: the built-ins and plugins register through register(), which calls _load
        importlib.import_module("._remote.builtin", __package__)
        from importlib.metadata import entry_points  # ~50 ms of imports: paid on first use, not at import

        for point in entry_points(group=ENTRY_POINT_GROUP):
            _load_entry_point(self, point)


def _load_entry_point(registry: _Registry, point: Any) -> None:
    """Register the Provider an entry point names; a broken plugin is logged and skipped, never fatal."""
    try:
        provider = point.load()
        if not isinstance(provider, Provider):
            raise TypeError(f"{point.value} is a {type(provider).__name__}, not a dheera_local.providers.Provider")
        registry.register(provider)
    except Exception as exc:  # noqa: BLE001 - someone else's package must not break every rerank
        logger.warning("dheera_local: skipped provider entry point %r (%s): %s", point.name, point.value, exc)


def _check_name(provider: Provider) -> None:
    name = provider.name
    if not isinstance(name, str) or not name or not all(c.isascii() and (c.isalnum() or c in "-_") for c in name):
        raise ValueError(f"a provider's name is its api_format: letters, digits, - and _; got {name!r}")
    if name != name.lower():
        raise ValueError(f"a provider's name is lowercase (api_format values are); got {name!r}")
    if not callable(provider.make):
        raise TypeError(f"provider {name!r}: make must be callable, got {type(provider.make).__name__}")


_REGISTRY = _Registry()


def register_provider(provider: Provider, *, replace: bool = False) -> None:
    """Make ``api_format=provider.name`` serve requests with ``provider`` (in the SDK, the CLI, config.yaml).

    Raises:
        ValueError: The name is taken by another provider (``replace=True`` replaces it) or is not a
            valid ``api_format`` value.
    """
    _REGISTRY.register(provider, replace=replace)


def unregister_provider(name: str) -> Provider:
    """Remove the provider ``name`` and return it (KeyError if none is registered)."""
    return _REGISTRY.unregister(name)


def get_provider(name: str) -> Provider:
    """The provider registered as ``name`` (KeyError if none)."""
    return _REGISTRY.get(name)


def provider_names() -> tuple[str, ...]:
    """The registered ``api_format`` values, in registration order (the built-ins first)."""
    return _REGISTRY.names()


def registered_providers() -> tuple[Provider, ...]:
    """Every registered provider."""
    return _REGISTRY.all()


class ProviderNames(Sequence[str]):
    """A live view of :func:`provider_names`: the ``api_format`` choices wherever they are listed once
    (argparse ``choices``, the option check), so a provider registered later is accepted there too."""

    def __getitem__(self, index: Any) -> Any:
        return provider_names()[index]

    def __len__(self) -> int:
        return len(provider_names())

    def __iter__(self) -> Iterator[str]:
        return iter(provider_names())

    def __contains__(self, value: object) -> bool:
        return value in provider_names()

    def __repr__(self) -> str:
        return repr(provider_names())


# The remote toolkit, loaded on first use: importing it imports httpx.
_TOOLKIT = {
    "Backend": "._backend",
    "PairsByQuery": "._backend",
    "Call": "._remote.http",
    "HttpClients": "._remote.http",
    "RetryPolicy": "._remote.http",
    "RemoteBackend": "._remote.backend",
    "group_by_limits": "._remote.backend",
    "probability_to_logit": "._remote.backend",
    "scores_in_order": "._remote.backend",
}


def __getattr__(name: str) -> Any:
    module = _TOOLKIT.get(name)
    if module is None:
        raise AttributeError(f"module 'dheera_local.providers' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __package__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "ENTRY_POINT_GROUP",
    "Backend",
    "Call",
    "Endpoint",
    "HttpClients",
    "PairsByQuery",
    "Provider",
    "ProviderNames",
    "RemoteBackend",
    "RetryPolicy",
    "get_provider",
    "group_by_limits",
    "probability_to_logit",
    "provider_names",
    "register_provider",
    "registered_providers",
    "scores_in_order",
    "unregister_provider",
]
