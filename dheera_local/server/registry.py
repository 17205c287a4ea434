"""The configured models: each ``model_name`` with the ``rerank()`` arguments that serve it.

Every entry is planned at startup by the server's own Reranker (:meth:`~dheera_local.Reranker.plan`:
no network call, no weights loaded), so a model that can never be served (a bad ``device``, a
Cohere-style name without ``api_base``, a decoder-only model) stops startup with a ConfigError
naming its key path, instead of failing every request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._backend import ModelBackend
from .._engine.orchestrator import Reranker
from .._errors import ConfigError, InvalidRequestError, ModelNotAvailableError
from .._models.model_ref import COHERE_PREFIX
from .._options import RerankOptions, build_options
from .._settings import option_variable
from .config import ModelEntry, ServerConfig
from .errors import UnknownModelError


@dataclass(frozen=True)
class ServedModel:
    """One configured model: what clients call it, what serves it, and what the startup plan found."""

    name: str
    model: str
    options: RerankOptions  # made once, at startup: requests add only their body's raw_scores / prompt
    model_id: str
    revision: str
    max_length: int
    backends: tuple[str, ...]
    local: ModelBackend | None = None
    weight: float = 1.0  # a deployment's share of its group's requests
    rpm: int | None = None

    @property
    def dtype(self) -> str | None:
        return self.local.identity.dtype if self.local is not None else None


class ModelRegistry:
    """Resolves the ``model`` of a request; the first configured model is the default.

    ``models`` holds each name's first deployment (what /info and /health describe); ``groups`` all of
    them, in config order (a repeated ``model_name`` is a group, as in LiteLLM).
    """

    def __init__(self, models: list[ServedModel]) -> None:
        self.groups: dict[str, list[ServedModel]] = {}
        for served in models:
            self.groups.setdefault(served.name, []).append(served)
        self.models = {name: deployments[0] for name, deployments in self.groups.items()}
        self.default = models[0]

    @classmethod
    def from_config(cls, config: ServerConfig, reranker: Reranker) -> ModelRegistry:
        """Plan every entry; raises one ConfigError listing each entry that cannot be served, by key path."""
        served, problems = [], []
        env = reranker.settings.engine_options()  # ConfigError naming the variable for a bad value
        for index, entry in enumerate(config.model_list):
            try:
                served.append(_plan(config, index, entry, reranker, env))
            except ConfigError as exc:
                problems.append(exc)
        if len(problems) == 1:
            raise problems[0]
        if problems:  # the same report as config.py's: one line per problem under a count
            prefix = f"{config.source}: "
            listed = "".join(f"\n  {str(problem).removeprefix(prefix)}" for problem in problems)
            raise ConfigError(f"{prefix}{len(problems)} problems:{listed}", path=problems[0].path)
        return cls(served)

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


def model_options(config: ServerConfig, entry: ModelEntry, env: dict[str, Any] | None = None) -> dict[str, Any]:
    """The keyword options of ``rerank()`` for one entry: those it sets, then the server-wide settings,
    then ``env`` (the ``DHEERA_<OPTION>`` variables, :meth:`~.._settings.Settings.engine_options`), as TEI's
    and infinity's containers are configured (secrets stay SecretStr)."""
    params, general, env = entry.dheera_ai_params, config.general_settings, env or {}
    options = {**env, **{name: value for name, value in params if name != "model" and value is not None}}
    if params.cache is not None:
        options["cache"] = params.cache
    elif "cache" in general.model_fields_set or "cache" not in env:
        options["cache"] = general.cache
    if general.cache_dir is not None or "cache_dir" not in env:
        options["cache_dir"] = general.cache_dir
    if "timeout" not in options and config.router_settings.timeout is not None:
        options["timeout"] = config.router_settings.timeout
    return options


def _cohere_api(model: str, options: dict[str, Any], reranker: Reranker) -> dict[str, Any]:
    """LiteLLM's ``cohere/NAME`` without ``api_base`` calls Cohere's API with ``CO_API_KEY``/``COHERE_API_KEY``."""
    if not model.startswith(COHERE_PREFIX) or options.get("api_base"):
        return options
    settings = reranker.settings
    key = options.get("api_key") or settings.cohere_api_key
    return {**options, "api_base": settings.cohere_api_base, "api_key": key, "api_format": "cohere"}


def _plan(config: ServerConfig, index: int, entry: ModelEntry, reranker: Reranker, env: dict[str, Any]) -> ServedModel:
    model = entry.dheera_ai_params.model
    try:
        options = build_options(**_cohere_api(model, model_options(config, entry, env), reranker))
        plan = reranker.plan(model, options)
    except InvalidRequestError as exc:
        path = config.key_path(index, exc.field or "model")
        if exc.field in env and getattr(entry.dheera_ai_params, exc.field, None) is None:
            path = f"{path} (from {option_variable(exc.field)})"  # the value came from the environment
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
        backends=plan.backend_names,
        local=plan.local,
        weight=entry.routing.weight,
        rpm=entry.routing.rpm,
    )
