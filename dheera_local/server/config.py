"""The server's ``config.yaml``: read with ``safe_load``, validated into :class:`ServerConfig` at startup.

::

    model_list:
      - model_name: bge-reranker-base             # what clients send as "model"
        dheera_ai_params:                         # or litellm_params: LiteLLM configs load unchanged
          model: huggingface/BAAI/bge-reranker-base
          api_key: os.environ/HF_TOKEN            # os.environ/VAR works for any value
          backend: auto                           # any option of rerank(): backend, api_format, device,
                                                  #   dtype, max_length, timeout, batch_tokens, cache
    general_settings:
      master_key: os.environ/PROXY_KEY            # else $DHEERA_AI_API_KEY; none: loopback only
      cache_dir: /var/cache/dheera                # and the limits below

Every problem is reported at once, in one :class:`ConfigError`: one problem is one line starting with the
file and the key path as written, e.g. ``config.yaml: model_list[1].litellm_params.model: Field required``;
several are listed one per line under ``config.yaml: N problems:``. An unset ``os.environ/VAR`` names the
variable; for an entry's ``api_key`` that its route never needs (no ``api_base`` of its own, or
``backend: local``) it is a warning and the key is left out, so a laptop without ``HF_TOKEN`` still starts
(the HuggingFace hosted fallback then uses the saved token, if any). LiteLLM-only settings (``rpm``,
``router_settings``, ...) are accepted and ignored with one warning, so a LiteLLM config loads.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
)

from .._errors import ConfigError
from .._options import config_fields, option_check
from .._secrets import clean_key, register
from .._settings import MASTER_KEY_ENV, environment, master_key

logger = logging.getLogger("dheera_local.server")

ENV_PREFIX = "os.environ/"
PARAMS_KEY = "dheera_ai_params"
PARAMS_ALIAS = "litellm_params"

# LiteLLM settings with no meaning here: accepted so that a LiteLLM config loads, then ignored.
IGNORED_SECTIONS = frozenset({"environment_variables", "callback_settings"})
# router_settings / litellm_settings keys that mean something here (routing.py); the others are dropped
# with the one warning. A repeated model_name is a group of deployments (LiteLLM's load balancing).
ROUTER_KEYS = frozenset({"fallbacks", "num_retries", "timeout", "routing_strategy"})
LITELLM_KEYS = frozenset({"fallbacks", "num_retries", "request_timeout"})
LITELLM_CACHE_KEYS = frozenset({"cache", "cache_params"})  # a Redis cache -> general_settings.cache_url
ROUTING_PARAMS = frozenset({"weight", "rpm"})
IGNORED_PARAMS = frozenset({
    "rpm", "tpm", "max_retries", "num_retries", "stream_timeout", "order", "weight", "max_parallel_requests",
    "custom_llm_provider", "drop_params", "input_cost_per_query", "input_cost_per_token", "output_cost_per_token",
    "tags", "region_name", "model_id", "mock_response",
})  # fmt: skip
IGNORED_GENERAL = frozenset({
    "database_url", "alerting", "background_health_checks", "health_check_interval", "health_check_details",
    "store_model_in_db", "disable_spend_logs", "proxy_batch_write_at", "database_connection_pool_limit",
    "allowed_routes", "public_routes", "admin_only_routes", "enforce_user_param", "disable_master_key_return",
})  # fmt: skip


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_option(value: Any, info: ValidationInfo) -> Any:
    """The option's own check (``dheera_local._options``), so config.yaml and ``rerank()`` agree; the
    value stays as written (the registry passes it to ``rerank()``)."""
    if value is not None:
        checked = option_check(info.field_name)(value, info.field_name)
        if info.field_name == "api_key":
            return checked  # the key as it will be sent: surrounding whitespace stripped
    return value


# How one configured name is served: ``model`` and the options of ``dheera_local.rerank``, derived
# from their one definition (an option left out means its default; ``cache`` overrides general_settings).
ModelParams = create_model(
    "ModelParams",
    __base__=_Section,
    __doc__="How one configured name is served: ``model`` and the options of ``dheera_local.rerank``.",
    __validators__={"check_options": field_validator(*config_fields())(_check_option)},
    model=(str, Field(min_length=1, description="huggingface/ORG/NAME, ORG/NAME, a model folder, or a remote name")),
    **config_fields(),
)


class Deployment(_Section):
    """How a group's requests are spread over its deployments (LiteLLM's simple shuffle)."""

    weight: float = Field(default=1.0, gt=0)
    rpm: int | None = Field(default=None, gt=0, description="requests a minute; past it the next deployment serves")


class RouterSettings(_Section):
    """What LiteLLM's ``router_settings`` (and ``litellm_settings``) say that means something here."""

    fallbacks: list[dict[str, list[str]]] = Field(default_factory=list, description="[{group: [other groups]}]")
    num_retries: int | None = Field(default=None, ge=0, description="general_settings.num_retries if unset there")
    timeout: float | None = Field(default=None, gt=0, description="seconds per request, where a model sets none")
    routing_strategy: str = "simple-shuffle"


class ModelEntry(_Section):
    model_name: str = Field(min_length=1)
    dheera_ai_params: ModelParams
    model_info: dict[str, Any] | None = None  # LiteLLM's; kept for compatibility, unused
    routing: Deployment = Field(default_factory=lambda: Deployment())  # litellm_params.weight / rpm, moved here


class ApiKey(_Section):
    """One more API key (server/keys.py): a name for metrics and logs, the models it may call, a limit."""

    key: SecretStr
    name: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[\w.\-]+$")
    models: list[str] | None = None
    rpm: int | None = Field(default=None, gt=0)
    tpm: int | None = Field(default=None, gt=0, description="tokens scored a minute (meta.tokens); past it: 429")

    @field_validator("key")
    @classmethod
    def _secret(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value().strip()) < 8:
            raise ValueError("must be at least 8 characters")
        register(value.get_secret_value())
        return value


class GeneralSettings(_Section):
    """Server-wide settings: auth, cache, limits, micro-batching."""

    master_key: SecretStr | None = None
    api_keys: list[ApiKey] = Field(default_factory=list, description="more keys: name, models, rpm, tpm")
    cache: bool = True
    cache_dir: Path | None = None
    max_documents_per_request: int = Field(default=1000, ge=1)
    max_request_body_bytes: int = Field(default=10_000_000, ge=1024)
    max_queue_pairs: int = Field(default=8192, ge=1, description="per local model; beyond it: 429")
    max_batch_pairs: int = Field(default=1024, ge=1, description="pairs merged into one local scoring call")
    num_retries: int = Field(default=3, ge=0, description="retries of a failed remote call")
    health_check_timeout: float = Field(default=30.0, gt=0)
    metrics: bool = Field(default=True, description="serve Prometheus metrics at GET /metrics")
    metrics_require_auth: bool = Field(default=False, description="put /metrics behind the master key")
    graceful_shutdown_timeout: float = Field(default=30.0, gt=0)
    # Connection limits (server/connections.py); the CLI's --header-timeout etc. override them.
    header_timeout: float = Field(default=10.0, gt=0, description="seconds to a complete request head, else 408")
    body_timeout: float = Field(default=60.0, gt=0, description="seconds from the head to the body's end")
    keep_alive_timeout: float = Field(default=5.0, gt=0, description="idle seconds before a connection is closed")
    max_connections: int | None = Field(
        default=None, ge=1, description="beyond it: 503 and closed (default: half the open-file limit, <= 1,024)"
    )
    # The shared score-cache tier (dheera_local._cache.shared_tier); else DHEERA_CACHE_URL and friends.
    cache_url: SecretStr | None = Field(default=None, description="redis://host:6379/0, rediss://, unix://")
    cache_ttl: int | None = Field(default=None, gt=0, description="seconds an entry lives in the shared cache")
    cache_local: bool = Field(default=False, description="keep the disk cache in front of the shared one")
    cache_timeout: float = Field(default=0.25, gt=0, description="seconds for a shared-cache connect or command")

    @field_validator("cache_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            from urllib.parse import urlsplit

            url = value.get_secret_value().strip()
            register(urlsplit(url).password)
            if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
                raise ValueError("not a Redis URL; write redis://host:6379/0, rediss://... (TLS) or unix:///path")
            value = SecretStr(url)
        return value

    @field_validator("master_key")
    @classmethod
    def _not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        # Stripped like every key (a key file's trailing newline would otherwise lock every client out:
        # clients' bearer tokens are stripped too); a control character inside is refused.
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("must not be empty (omit it to run without auth on loopback)")
        return None if value is None else SecretStr(clean_key(value.get_secret_value(), "master_key"))


class ServerConfig(_Section):
    """A validated config.yaml. Build it with :func:`load_config` or :func:`parse_config`."""

    model_list: list[ModelEntry] = Field(min_length=1)
    general_settings: GeneralSettings = Field(default_factory=GeneralSettings)
    router_settings: RouterSettings = Field(default_factory=RouterSettings)
    source: str = Field(default="config", exclude=True, description="where it was read, for messages")
    params_keys: tuple[str, ...] = Field(default=(), exclude=True, description="the params key each entry used")

    @property
    def master_key(self) -> SecretStr | None:
        return self.general_settings.master_key

    def key_path(self, index: int, *names: str) -> str:
        """``model_list[i].<params key as written>.<names>``, for messages about one entry."""
        params = self.params_keys[index] if index < len(self.params_keys) else PARAMS_KEY
        return ".".join([f"model_list[{index}]", params, *names])


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> ServerConfig:
    """Read and validate a config file; raises ConfigError naming the file and the key path."""
    source = str(path)
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read the config file ({exc.strerror or exc})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {_yaml_problem(exc)}") from exc
    return parse_config(data, source=source, environ=environ)


def parse_config(data: Any, *, source: str = "config", environ: Mapping[str, str] | None = None) -> ServerConfig:
    """Validate already-parsed YAML; ``os.environ/VAR`` values are read from ``environ`` (default os.environ)."""
    env = environment(environ)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with a model_list, got {type(data).__name__}")
    problems: list[Problem] = []
    data = _resolve_env(data, "", env, problems)
    _leave_out_unneeded_keys(data, problems, source)
    data, params_keys = _normalize(data, source)
    try:
        config = ServerConfig.model_validate({**data, "source": source, "params_keys": params_keys})
    except ValidationError as exc:
        # An unset variable's None may fail its field too (a required one): the variable is the clue.
        unset = {path for path, _ in problems}
        problems += [p for p in _validation_problems(exc, params_keys) if p[0] not in unset]
        config = None
    # Raised outside the except: pydantic's error, which quotes the values, must not be the __context__.
    if config is not None:
        problems += _group_problems(config) + _limit_problems(config)
    if problems or config is None:
        raise _config_error(problems, source)
    from_env = master_key(env)
    if config.master_key is None and from_env is not None:
        try:
            key = clean_key(from_env, MASTER_KEY_ENV)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}", path=MASTER_KEY_ENV) from None
        settings = config.general_settings.model_copy(update={"master_key": SecretStr(key)})
        config = config.model_copy(update={"general_settings": settings})
    _register_secrets(config)
    return config


def _register_secrets(config: ServerConfig) -> None:
    """Mask the configured keys in every message of this process, from now on."""
    keys = [entry.dheera_ai_params.api_key for entry in config.model_list] + [config.master_key]
    for key in keys:
        if key is not None:
            register(key.get_secret_value())


# (key path, what is wrong there): every problem of a config, reported together.
Problem = tuple[str, str]


def _resolve_env(value: Any, path: str, env: Mapping[str, str], problems: list[Problem]) -> Any:
    """``os.environ/VAR`` values replaced by the variable's value; an unset or unnamed one is a problem,
    and None meanwhile, so the rest of the config is still checked (the reference as written would be
    checked as a value: registered as a secret, or named as the wrong type)."""
    if isinstance(value, dict):
        return {key: _resolve_env(item, _join(path, str(key)), env, problems) for key, item in value.items()}
    if isinstance(value, list):
        return [_resolve_env(item, f"{path}[{index}]", env, problems) for index, item in enumerate(value)]
    if isinstance(value, str) and value.startswith(ENV_PREFIX):
        name = value[len(ENV_PREFIX) :].strip()
        if not name:
            problems.append((path, f"{value!r} names no variable; write os.environ/NAME"))
            return None
        if name not in env:
            problems.append((path, _unset_message(name, value)))
            return None
        return env[name]
    return value


def _unset_message(name: str, written: str) -> str:
    return f"environment variable {name} is not set (the config says {written}); export {name} or change the value"


def _leave_out_unneeded_keys(data: dict[str, Any], problems: list[Problem], source: str) -> None:
    """An entry's ``api_key`` from an unset variable, where its route never needs it, is left out with a
    warning: a local-only entry never sends it, and without an ``api_base`` of its own the HuggingFace
    hosted fallback finds a token itself (HF_TOKEN, else the saved login). Only an entry that calls its
    own endpoint needs its key to start."""
    entries = data.get("model_list")
    if not isinstance(entries, list):
        return
    for index, entry in enumerate(entries):
        for params_key in (PARAMS_KEY, PARAMS_ALIAS):
            params = entry.get(params_key) if isinstance(entry, dict) else None
            path = f"model_list[{index}].{params_key}.api_key"
            unset = next((p for p in problems if p[0] == path), None)
            if not isinstance(params, dict) or unset is None or _calls_own_endpoint(params):
                continue
            problems.remove(unset)
            del params["api_key"]
            logger.warning("%s: %s: %s; left out, as this entry never sends it to an endpoint of its own (a "
                           "HuggingFace hosted call uses HF_TOKEN or the saved login instead)",
                           source, path, unset[1].split(" (", 1)[0])  # fmt: skip


def _calls_own_endpoint(params: dict[str, Any]) -> bool:
    return bool(params.get("api_base")) and params.get("backend") != "local"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _normalize(data: dict[str, Any], source: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Accept ``litellm_params`` for ``dheera_ai_params``; drop LiteLLM-only settings with one warning."""
    ignored = sorted(key for key in data if key in IGNORED_SECTIONS)
    data = {key: value for key, value in data.items() if key not in IGNORED_SECTIONS}
    data, dropped = _router_settings(data)
    ignored += dropped
    general = data.get("general_settings")
    if isinstance(general, dict):
        ignored += [f"general_settings.{key}" for key in general if key in IGNORED_GENERAL]
        data["general_settings"] = {k: v for k, v in general.items() if k not in IGNORED_GENERAL}
    entries = data.get("model_list")
    params_keys: list[str] = []
    if isinstance(entries, list):
        normalized = []
        for index, entry in enumerate(entries):
            entry, key, dropped = _normalize_entry(entry, index, source)
            normalized.append(entry)
            params_keys.append(key)
            ignored += dropped
        data["model_list"] = normalized
    if ignored:
        logger.warning("%s: ignoring LiteLLM-only settings: %s", source, ", ".join(ignored))
    return data, tuple(params_keys)


def _normalize_entry(entry: Any, index: int, source: str) -> tuple[Any, str, list[str]]:
    if not isinstance(entry, dict) or PARAMS_ALIAS not in entry:
        return entry, PARAMS_KEY, _ignored_params(entry, index, PARAMS_KEY)
    if PARAMS_KEY in entry:
        path = f"model_list[{index}]"
        raise ConfigError(f"{source}: {path}: give {PARAMS_KEY} or {PARAMS_ALIAS}, not both", path=path)
    entry = {(PARAMS_KEY if key == PARAMS_ALIAS else key): value for key, value in entry.items()}
    return entry, PARAMS_ALIAS, _ignored_params(entry, index, PARAMS_ALIAS)


def _ignored_params(entry: Any, index: int, written: str) -> list[str]:
    params = entry.get(PARAMS_KEY) if isinstance(entry, dict) else None
    if not isinstance(params, dict):
        return []
    dropped = [key for key in params if key in IGNORED_PARAMS and key not in ROUTING_PARAMS]
    for key in dropped:
        del params[key]
    routing = {key: params.pop(key) for key in ROUTING_PARAMS if key in params}
    if routing:
        entry["routing"] = routing
    return [f"model_list[{index}].{written}.{key}" for key in dropped]


def _router_settings(data: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``router_settings`` and ``litellm_settings`` merged into ``router_settings`` (the router's win), keeping
    the keys that mean something here; the others are returned, to be named in the one warning."""
    merged: dict[str, Any] = {}
    dropped: list[str] = []
    for section, known in (("litellm_settings", LITELLM_KEYS), ("router_settings", ROUTER_KEYS)):
        values = data.pop(section, None)
        if not isinstance(values, dict):
            if values is not None:
                dropped.append(section)
            continue
        if section == "litellm_settings":
            dropped += _litellm_cache(values, data)
        for key, value in values.items():
            if key in LITELLM_CACHE_KEYS and section == "litellm_settings":
                continue
            if key == "routing_strategy" and value != "simple-shuffle":
                dropped.append(f"{section}.routing_strategy={value} (simple-shuffle is used)")
            elif key in known:
                merged["timeout" if key == "request_timeout" else key] = value
            else:
                dropped.append(f"{section}.{key}")
    if merged:
        data["router_settings"] = merged
    return data, dropped


def _litellm_cache(settings: dict[str, Any], data: dict[str, Any]) -> list[str]:
    """LiteLLM's ``cache: true`` with ``cache_params: {type: redis, host, port, password}`` is our shared
    score cache (unless ``general_settings.cache_url`` names one); its other cache settings are dropped."""
    params = settings.get("cache_params") if isinstance(settings.get("cache_params"), dict) else {}
    if settings.get("cache") is not True or params.get("type") != "redis":
        return [f"litellm_settings.{key}" for key in LITELLM_CACHE_KEYS if key in settings]
    general = data.setdefault("general_settings", {})
    if isinstance(general, dict) and "cache_url" not in general:
        if params.get("url"):
            general["cache_url"] = params["url"]
        else:
            password = params.get("password")
            auth = f":{quote(str(password), safe='')}@" if password else ""
            general["cache_url"] = f"redis://{auth}{params.get('host', 'localhost')}:{params.get('port', 6379)}/0"
        if params.get("ttl"):
            general.setdefault("cache_ttl", params["ttl"])
    used = {"type", "host", "port", "password", "url", "ttl"}
    return [f"litellm_settings.cache_params.{key}" for key in params if key not in used]


_SECTIONS: dict[tuple[str, int], type[BaseModel]] = {
    ("", 1): ServerConfig,
    ("general_settings", 2): GeneralSettings,
    ("router_settings", 2): RouterSettings,
    ("model_list", 3): ModelEntry,
    ("model_list", 4): ModelParams,
}


def _config_error(problems: list[Problem], source: str) -> ConfigError:
    """One problem: one line, ``source: path: problem``; several: one line each, under a count."""
    path, problem = problems[0]
    if len(problems) == 1:
        return ConfigError(f"{source}: {path}: {problem}", path=path)
    listed = "".join(f"\n  {where}: {what}" for where, what in problems)
    return ConfigError(f"{source}: {len(problems)} problems:{listed}", path=path)


def _validation_problems(exc: ValidationError, params_keys: tuple[str, ...]) -> list[Problem]:
    errors = exc.errors(include_url=False)
    # A misspelt key also makes the real one "missing" in its section; the unknown key is the better clue.
    misspelt = {tuple(error["loc"][:-1]) for error in errors if error["type"] == "extra_forbidden"}
    errors = [e for e in errors if not (e["type"] == "missing" and tuple(e["loc"][:-1]) in misspelt)]
    return [_validation_problem(error, params_keys) for error in errors]


def _validation_problem(error: Any, params_keys: tuple[str, ...]) -> Problem:
    loc = tuple(error["loc"])
    path = _key_path(loc, params_keys) or "(top level)"
    problem = error["msg"]
    if error["type"] == "extra_forbidden":
        section = _SECTIONS.get((str(loc[0]) if len(loc) > 1 else "", len(loc)))
        allowed = [name for name in section.model_fields if name not in ("source", "params_keys")] if section else []
        problem = f"unknown key; expected one of: {', '.join(allowed)}" if allowed else "unknown key"
    elif error["type"] == "missing":
        problem = "required key is missing"
    return path, problem


def _key_path(loc: tuple[Any, ...], params_keys: tuple[str, ...]) -> str:
    path = ""
    for position, item in enumerate(loc):
        if isinstance(item, int):
            path += f"[{item}]"
            continue
        name = str(item)
        if name == PARAMS_KEY and position == 2 and isinstance(loc[1], int) and loc[1] < len(params_keys):
            name = params_keys[loc[1]]
        path = _join(path, name)
    return path


def _group_problems(config: ServerConfig) -> list[Problem]:
    """A repeated model_name is a group of deployments; a fallback must name a group."""
    names = {entry.model_name for entry in config.model_list}
    problems = []
    for index, rule in enumerate(config.router_settings.fallbacks):
        for group, others in rule.items():
            problems += [
                (f"router_settings.fallbacks[{index}]",
                 f"{name!r} is not a model_name of model_list (configured: {', '.join(sorted(names))})")
                for name in [group, *others] if name not in names
            ]  # fmt: skip
    return problems


def _limit_problems(config: ServerConfig) -> list[Problem]:
    settings = config.general_settings
    if settings.max_documents_per_request <= settings.max_queue_pairs:
        return []
    return [(
        "general_settings.max_documents_per_request",
        f"{settings.max_documents_per_request} is larger than max_queue_pairs={settings.max_queue_pairs}, so a "
        "full-size request could never be queued; lower it or raise max_queue_pairs",
    )]  # fmt: skip


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(problem)
