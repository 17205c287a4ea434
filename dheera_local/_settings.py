"""Settings from the environment, read in one place: :meth:`Settings.from_env`.

A :class:`~dheera_local.Reranker` reads them once, when it is made (``Reranker(settings=...)``
injects them instead); the module-level functions use a default Reranker made on first use, so
``dheera_local.close_all()`` makes the next call read the environment again.

==========================  =========================================================================
variable                    setting
==========================  =========================================================================
DHEERA_CACHE_DIR            ``cache_dir`` (else ``$XDG_CACHE_HOME/dheera_local``, ``~/.cache/dheera_local``)
DHEERA_CACHE_SIZE_LIMIT     ``cache_size_limit`` in bytes (2 GiB)
DHEERA_REMOTE_CACHE_TTL     ``remote_cache_ttl``: seconds a remote endpoint's cached scores stay valid
                            (604800, 7 days; ``0``: remote scores are not cached). Local ones never expire
DHEERA_CACHE_URL            ``cache_url``: a shared score cache, ``redis://host:6379/0`` (``rediss://``,
                            ``unix://``); replicas that name one share their scores
DHEERA_CACHE_TTL            ``cache_ttl``: seconds an entry lives in the shared cache (none: until evicted)
DHEERA_CACHE_LOCAL          ``cache_local``: also keep the disk cache, in front of the shared one
DHEERA_CACHE_TIMEOUT        ``cache_timeout``: seconds for a shared-cache connect or command (0.25)
HF_HUB_CACHE, HF_HOME       ``hub_cache`` (huggingface_hub's precedence, ``~/.cache/huggingface/hub``)
HF_HUB_OFFLINE              ``hub_offline``: no call to HuggingFace (``TRANSFORMERS_OFFLINE`` too)
DHEERA_HF_INFERENCE_URL     ``hf_inference_url`` (``https://router.huggingface.co/hf-inference``)
HF_TOKEN                    ``hf_token`` (else ``HUGGING_FACE_HUB_TOKEN``, the token file of
                            ``hf auth login`` at ``HF_TOKEN_PATH`` / ``$HF_HOME/token``)
DHEERA_CPU_KERNELS          ``cpu_kernels``: ``auto`` (prepacked oneDNN linears, bf16 or fp32) or ``eager``
CO_API_KEY                  ``cohere_api_key`` (else ``COHERE_API_KEY``): sent to Cohere's own API only
(each provider's key_env)   ``provider_keys[name]``: the variables a registered provider names
                            (:mod:`dheera_local.providers`); ``provider_keys["cohere"]`` is ``cohere_api_key``
COHERE_API_BASE             ``cohere_api_base``: Cohere's API, for a proxy's ``cohere/NAME`` without ``api_base``
                            (``https://api.cohere.com``; LiteLLM reads the same variable)
DHEERA_<OPTION>             ``engine_env``: every engine option of ``rerank()`` (``DHEERA_DEVICE``,
                            ``DHEERA_DTYPE``, ``DHEERA_MAX_LENGTH``, ...; :func:`option_variable`), read by
                            the server and the CLI only (:func:`engine_options_from_env`); a flag or
                            ``config.yaml`` value wins over the variable
==========================  =========================================================================

The command line's own variables (:class:`CliSettings`): ``DHEERA_CONFIG``, ``DHEERA_HOST``,
``DHEERA_PORT``, ``DHEERA_ALLOW_UNAUTHENTICATED``, ``DHEERA_LOG_FORMAT``; the proxy's master key
``DHEERA_AI_API_KEY`` (:func:`master_key`). ``os.environ/NAME`` references in ``config.yaml`` are
resolved through :func:`environment`. A bad value of these is a :class:`~._errors.ConfigError` naming
the variable, never a traceback.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import SecretStr, TypeAdapter, ValidationError

from ._errors import ConfigError, InvalidRequestError
from ._secrets import clean_key, register
from .providers import registered_providers

logger = logging.getLogger("dheera_local")

DEFAULT_CACHE_SIZE_LIMIT = 2 * 1024**3
# A remote endpoint may change what stands behind a model name (a proxy remapped, a new deployment):
# its scores are trusted for a week, then fetched again.
DEFAULT_REMOTE_CACHE_TTL = 7 * 24 * 3600.0
DEFAULT_CACHE_TIMEOUT = 0.25
DEFAULT_COHERE_API_BASE = "https://api.cohere.com"
DEFAULT_HF_INFERENCE_URL = "https://router.huggingface.co/hf-inference"
CPU_KERNELS = ("auto", "eager")
LOG_FORMATS = ("text", "json")
DEFAULT_PORT = 4000
MASTER_KEY_ENV = "DHEERA_AI_API_KEY"
OPTION_PREFIX = "DHEERA_"
_TRUE = ("1", "ON", "YES", "TRUE")
_FALSE = ("0", "OFF", "NO", "FALSE")


@dataclass(frozen=True)
class Settings:
    """Everything dheera_local takes from the environment (see the module's table)."""

    cache_dir: Path
    hub_cache: Path
    cache_size_limit: int = DEFAULT_CACHE_SIZE_LIMIT
    remote_cache_ttl: float = DEFAULT_REMOTE_CACHE_TTL
    hub_offline: bool = False
    hf_inference_url: str = DEFAULT_HF_INFERENCE_URL
    cpu_kernels: str = "auto"
    hf_token_value: SecretStr | None = field(default=None, repr=False)
    hf_token_file: Path | None = field(default=None, repr=False)
    hf_token_lookup: bool = field(default=False, repr=False)
    cohere_api_key: SecretStr | None = field(default=None, repr=False)  # also provider_keys["cohere"]
    cache_url: SecretStr | None = field(default=None, repr=False)  # may carry the tier's password
    cache_ttl: int | None = None
    cache_local: bool = False
    cache_timeout: float = DEFAULT_CACHE_TIMEOUT
    cohere_api_base: str = DEFAULT_COHERE_API_BASE
    # DHEERA_<OPTION> as set, unchecked: only the server and the CLI use them (engine_options()).
    engine_env: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    provider_keys: Mapping[str, SecretStr] = field(default_factory=dict, repr=False, hash=False)  # a dict: not hashed

    def __post_init__(self) -> None:
        # cohere_api_key predates the provider registry: either spelling gives the other.
        if self.cohere_api_key is not None and "cohere" not in self.provider_keys:
            object.__setattr__(self, "provider_keys", {**self.provider_keys, "cohere": self.cohere_api_key})
        elif self.cohere_api_key is None and "cohere" in self.provider_keys:
            object.__setattr__(self, "cohere_api_key", self.provider_keys["cohere"])

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings the environment gives (``os.environ`` unless ``environ`` is passed)."""
        env = environment(environ)
        token = _env_key(env, "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
        return cls(
            cache_dir=_cache_dir(env),
            hub_cache=hub_cache_dir(env),
            cache_size_limit=_size_limit(env),
            remote_cache_ttl=_remote_ttl(env),
            hub_offline=_flag(env, "HF_HUB_OFFLINE") or _flag(env, "TRANSFORMERS_OFFLINE"),
            hf_inference_url=(env.get("DHEERA_HF_INFERENCE_URL") or DEFAULT_HF_INFERENCE_URL).rstrip("/"),
            cpu_kernels=_cpu_kernels(env),
            hf_token_value=SecretStr(token) if token else None,
            hf_token_file=_token_file(env),
            # huggingface_hub's own lookup (OIDC, Colab secrets) only where no token file is named.
            hf_token_lookup=not env.get("HF_TOKEN_PATH"),
            provider_keys=_provider_keys(env),
            cache_url=_cache_url(env),
            cache_ttl=_positive(env, "DHEERA_CACHE_TTL", int),
            cache_local=_flag(env, "DHEERA_CACHE_LOCAL"),
            cache_timeout=_positive(env, "DHEERA_CACHE_TIMEOUT", float) or DEFAULT_CACHE_TIMEOUT,
            cohere_api_base=(env.get("COHERE_API_BASE") or DEFAULT_COHERE_API_BASE).strip().rstrip("/"),
            engine_env=tuple(_engine_env(env).items()),
        )

    def engine_options(self) -> dict[str, object]:
        """The engine options ``DHEERA_<OPTION>`` variables set, checked (see :func:`engine_options_from_env`)."""
        return engine_options_from_env(dict(self.engine_env))

    @functools.cached_property
    def hf_token(self) -> SecretStr | None:
        """``HF_TOKEN``, else the saved token, else what huggingface_hub finds; read once, when first asked
        (a remote-only process that never calls HuggingFace never reads the token file)."""
        token = self.hf_token_value.get_secret_value() if self.hf_token_value is not None else None
        if token is None and self.hf_token_file is not None:
            token = _read_token(self.hf_token_file)
        if token is None and self.hf_token_lookup:
            token = _hub_login_token()
        register(token)
        return SecretStr(token) if token else None


def environment(environ: Mapping[str, str] | None = None) -> Mapping[str, str]:
    """``environ``, else the process's environment: the one place dheera_local reads ``os.environ``."""
    return os.environ if environ is None else environ


def option_variable(name: str) -> str:
    """The environment variable of engine option ``name``: ``device`` -> ``DHEERA_DEVICE``."""
    return OPTION_PREFIX + name.upper()


def _engine_env(env: Mapping[str, str]) -> dict[str, str]:
    from ._options import OPTION_NAMES  # the options' list, not a copy: a new option gets its variable for free

    found = {option_variable(name): name for name in OPTION_NAMES if env.get(option_variable(name), "").strip()}
    secrets = _secret_options() if found else frozenset()
    for variable, name in found.items():
        if name in secrets:
            register(env[variable].strip())  # masked from the moment it is read, as HF_TOKEN is
    return {variable: env[variable] for variable in found}


def _secret_options() -> frozenset[str]:
    """The engine options that hold a secret (typed SecretStr: ``api_key``)."""
    import typing

    from ._options import RerankOptions

    return frozenset(name for name, hint in typing.get_type_hints(RerankOptions).items() if "SecretStr" in repr(hint))


def engine_options_from_env(environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """The engine options set by ``DHEERA_<OPTION>`` variables (``DHEERA_DEVICE=cuda``,
    ``DHEERA_MAX_LENGTH=512``, ``DHEERA_CACHE=0``), converted to the option's type and checked as
    ``rerank()`` checks it. Raises ConfigError naming the variable (never a secret's value)."""
    import typing

    from ._options import RerankOptions

    env = _engine_env(environment(environ))
    hints = typing.get_type_hints(RerankOptions)
    options: dict[str, object] = {}
    for name in hints:
        variable = option_variable(name)
        if variable not in env:
            continue
        raw, secret = env[variable], "SecretStr" in repr(hints[name])  # as _secret_options() says
        shown_raw = "(value hidden)" if secret else repr(raw.strip())
        options[name] = _env_option(name, hints[name], raw, f"{variable}={shown_raw}", variable)
    return options


def _env_option(name: str, hint: object, raw: str, shown: str, variable: str) -> object:
    """Option ``name`` read from its variable's ``raw`` text, or a ConfigError showing ``shown``."""
    from ._options import build_options  # lazily, as above: _options imports this module

    try:
        value = TypeAdapter(hint).validate_python(raw.strip())
        return getattr(build_options(**{name: value}), name)
    except ValidationError as exc:
        problem = exc.errors()[0]["msg"].removeprefix("Input should be ").removeprefix("Value error, ")
        refusal = ConfigError(f"{shown}: {name} should be {problem}", path=variable)
    except InvalidRequestError as exc:
        refusal = ConfigError(f"{shown}: {exc}", path=variable)
    # Raised outside the except blocks: pydantic's error quotes the raw value (a secret, maybe), and an
    # exception raised inside one keeps it as __context__.
    raise refusal


@dataclass(frozen=True)
class CliSettings:
    """The command line's own variables: each a default its flag overrides (TEI's and infinity's containers
    are configured the same way)."""

    config: str | None = None
    host: str | None = None
    port: int = DEFAULT_PORT
    allow_unauthenticated: bool = False
    log_format: str = "text"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CliSettings:
        """Read ``DHEERA_CONFIG``, ``DHEERA_HOST``, ``DHEERA_PORT``, ``DHEERA_ALLOW_UNAUTHENTICATED`` and
        ``DHEERA_LOG_FORMAT``; ConfigError naming the variable for a bad value."""
        env = environment(environ)
        return cls(
            config=env.get("DHEERA_CONFIG", "").strip() or None,
            host=env.get("DHEERA_HOST", "").strip() or None,
            port=_port(env),
            allow_unauthenticated=_strict_flag(env, "DHEERA_ALLOW_UNAUTHENTICATED"),
            log_format=_one_of(env, "DHEERA_LOG_FORMAT", LOG_FORMATS, "text"),
        )


def master_key(environ: Mapping[str, str] | None = None) -> str | None:
    """``DHEERA_AI_API_KEY`` as set (unchecked: the proxy's config checks and masks it), None when unset."""
    value = environment(environ).get(MASTER_KEY_ENV, "")
    return value if value.strip() else None


def _port(env: Mapping[str, str]) -> int:
    raw = env.get("DHEERA_PORT", "").strip()
    if not raw:
        return DEFAULT_PORT
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise ConfigError(f"DHEERA_PORT={raw!r} is not a TCP port (1-65535)", path="DHEERA_PORT")
    return int(raw)


def _strict_flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip()
    if raw.upper() in _TRUE:
        return True
    if not raw or raw.upper() in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a flag: write 1, true, yes or on (0, false, no, off)", path=name)


def _one_of(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if raw.lower() not in choices:
        raise ConfigError(f"{name}={raw!r} is not one of {', '.join(choices)}", path=name)
    return raw.lower()


def hub_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The huggingface_hub cache folder, with huggingface_hub's precedence (it reads these at import;
    dheera_local when settings are made, so a process can point them elsewhere after import)."""
    env = environment(environ)
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(variable):
            return Path(env[variable]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    return _xdg_cache(env) / "huggingface" / "hub"


def _xdg_cache(env: Mapping[str, str]) -> Path:
    xdg = env.get("XDG_CACHE_HOME")
    return Path(xdg).expanduser() if xdg else Path.home() / ".cache"


def _provider_keys(env: Mapping[str, str]) -> dict[str, SecretStr]:
    """Each registered provider's key, from the first of its ``key_env`` variables that is set."""
    keys = {p.name: _registered(_env_key(env, *p.key_env)) for p in registered_providers() if p.key_env}
    return {name: key for name, key in keys.items() if key is not None}


def _registered(value: str | None) -> SecretStr | None:
    value = (value or "").strip()
    register(value)
    return SecretStr(value) if value else None


def _env_key(env: Mapping[str, str], *names: str) -> str:
    """The first of ``names`` set, stripped (a secret mounted from a file ends in a newline). One with a
    character no HTTP header can carry is ignored, with a warning naming the variable (never the value):
    local scoring must not fail over a token it may never send."""
    for name in names:
        if env.get(name):
            register(env[name].strip())
            try:
                return clean_key(env[name], name)
            except ValueError as exc:
                logger.warning("%s; ignoring it", exc)
                return ""
    return ""


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().upper() in _TRUE


def _cache_dir(env: Mapping[str, str]) -> Path:
    if env.get("DHEERA_CACHE_DIR"):
        return Path(env["DHEERA_CACHE_DIR"]).expanduser()
    return _xdg_cache(env) / "dheera_local"


def _size_limit(env: Mapping[str, str]) -> int:
    raw = env.get("DHEERA_CACHE_SIZE_LIMIT")
    if not raw:
        return DEFAULT_CACHE_SIZE_LIMIT
    try:
        return max(int(raw), 1)
    except ValueError:
        logger.warning("DHEERA_CACHE_SIZE_LIMIT=%r is not a number of bytes; using %d", raw, DEFAULT_CACHE_SIZE_LIMIT)
        return DEFAULT_CACHE_SIZE_LIMIT


def _remote_ttl(env: Mapping[str, str]) -> float:
    raw = env.get("DHEERA_REMOTE_CACHE_TTL", "").strip()
    if not raw:
        return DEFAULT_REMOTE_CACHE_TTL
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        logger.warning(
            "DHEERA_REMOTE_CACHE_TTL=%r is not a number of seconds (0 turns remote caching off); using %d",
            raw, DEFAULT_REMOTE_CACHE_TTL,
        )  # fmt: skip
        return DEFAULT_REMOTE_CACHE_TTL
    return value


def _cache_url(env: Mapping[str, str]) -> SecretStr | None:
    url = env.get("DHEERA_CACHE_URL", "").strip()
    if not url:
        return None
    register(urlsplit(url).password)
    return SecretStr(url)


def _positive(env: Mapping[str, str], name: str, kind: type[int] | type[float]) -> int | float | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = kind(raw)
    except ValueError:
        value = 0
    if value <= 0:
        logger.warning("%s=%r is not a positive number; ignoring it", name, raw)
        return None
    return value


def _cpu_kernels(env: Mapping[str, str]) -> str:
    value = env.get("DHEERA_CPU_KERNELS", "auto").strip().lower() or "auto"
    if value not in CPU_KERNELS:
        logger.warning("DHEERA_CPU_KERNELS=%r is not one of %s; using auto", value, ", ".join(CPU_KERNELS))
        return "auto"
    return value


def _token_file(env: Mapping[str, str]) -> Path:
    """The file ``hf auth login`` writes: ``HF_TOKEN_PATH``, else ``$HF_HOME/token``."""
    if env.get("HF_TOKEN_PATH"):
        return Path(os.path.expandvars(env["HF_TOKEN_PATH"])).expanduser()
    home = Path(env["HF_HOME"]).expanduser() if env.get("HF_HOME") else _xdg_cache(env) / "huggingface"
    return home / "token"


def _read_token(path: Path) -> str | None:
    try:
        token = clean_key(path.read_text(encoding="utf-8"), f"the token file {path}")
    except (OSError, UnicodeDecodeError):  # no file, or an unreadable one: no saved token
        return None
    except ValueError as exc:
        logger.warning("%s; ignoring it", exc)
        return None
    return token or None


def _hub_login_token() -> str | None:
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # a failed token exchange must not break scoring: no token, and the API says 401
        return None
