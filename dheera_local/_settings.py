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
==========================  =========================================================================
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

from pydantic import SecretStr

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
_TRUE = ("1", "ON", "YES", "TRUE")


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
        env = os.environ if environ is None else environ
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
        )

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


def hub_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The huggingface_hub cache folder, with huggingface_hub's precedence (it reads these at import;
    dheera_local when settings are made, so a process can point them elsewhere after import)."""
    env = os.environ if environ is None else environ
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
