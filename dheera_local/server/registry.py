"""The configured models: each ``model_name`` with the ``rerank()`` arguments that serve it.

Every entry is planned at startup by the library's own :class:`~dheera_local._selector.Selector`
(no network call, no weights loaded), so a model that can never be served (a bad ``device``, a
Cohere-style name without ``api_base``, a decoder-only model) stops startup with a ConfigError
naming its key path, instead of failing every request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._errors import ConfigError, InvalidRequestError, ModelNotAvailableError
from .._hardware import dtype_name
from .._model_ref import parse_model
from .._request import build_options
from .._selector import Selector
from ..backends.local import LocalBackend
from ..backends.remote import RemoteFactory
from .config import ModelEntry, ServerConfig
from .errors import UnknownModelError


@dataclass(frozen=True)
class ServedModel:
    """One configured model: what clients call it, what serves it, and what the startup plan found."""

    name: str
    model: str
    options: dict[str, Any]
    model_id: str
    revision: str
    max_length: int
    backends: tuple[str, ...]
    local: LocalBackend | None = None

    @property
    def dtype(self) -> str | None:
        return dtype_name(self.local.dtype) if self.local is not None else None


class ModelRegistry:
    """Resolves the ``model`` of a request; the first configured model is the default."""

    def __init__(self, models: list[ServedModel]) -> None:
        self.models = {served.name: served for served in models}
        self.default = models[0]

    @classmethod
    def from_config(cls, config: ServerConfig) -> ModelRegistry:
        """Plan every entry; raises ConfigError naming the key path of the first one that cannot be served."""
        selector = Selector(RemoteFactory())
        return cls([_plan(config, index, entry, selector) for index, entry in enumerate(config.model_list)])

    @property
    def names(self) -> list[str]:
        return list(self.models)

    def resolve(self, name: str | None) -> ServedModel:
        """The model called ``name`` (the default when None); 404 listing the names otherwise."""
        if name is None:
            return self.default
        served = self.models.get(name)
        if served is None:
            raise UnknownModelError(
                f"model {name!r} is not served here; configured models: {', '.join(self.models)} "
                "(model_list in the server's config.yaml)",
                field="model",
            )
        return served


def model_options(config: ServerConfig, entry: ModelEntry) -> dict[str, Any]:
    """The keyword options of ``rerank()`` for one entry (secrets stay SecretStr)."""
    params, general = entry.dheera_ai_params, config.general_settings
    return {
        "api_base": params.api_base,
        "api_key": params.api_key,
        "backend": params.backend,
        "device": params.device,
        "dtype": params.dtype,
        "max_length": params.max_length,
        "timeout": params.timeout,
        "cache": general.cache if params.cache is None else params.cache,
        "cache_dir": general.cache_dir,
    }


def _plan(config: ServerConfig, index: int, entry: ModelEntry, selector: Selector) -> ServedModel:
    model = entry.dheera_ai_params.model
    options = model_options(config, entry)
    try:
        plan = selector.plan(parse_model(model), build_options(**options))
    except InvalidRequestError as exc:
        path = config.key_path(index, exc.field or "model")
        raise ConfigError(f"{config.source}: {path}: {exc}", path=path) from None
    except ModelNotAvailableError as exc:
        path = config.key_path(index, "model")
        raise ConfigError(f"{config.source}: {path}: {exc}", path=path) from None
    return ServedModel(
        name=entry.model_name,
        model=model,
        options=options,
        model_id=plan.identity.model_id,
        revision=plan.identity.revision,
        max_length=plan.identity.max_length,
        backends=tuple(backend.name for backend in plan.candidates),
        local=plan.local if "local" in {backend.name for backend in plan.candidates} else None,
    )
