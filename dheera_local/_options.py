"""The engine options of ``rerank()``, defined once: :class:`RerankOptions`.

Each field carries how it is checked, how the command line spells it and whether ``config.yaml``
takes it. Everything else derives from here: :func:`build_options` (the SDK, the server, ``score``),
the CLI flags (:func:`add_engine_options`, :func:`engine_options`), the server's per-model
parameters (:func:`config_fields`) and, checked by a test, the explicit signatures of
``rerank``/``arerank`` (kept explicit for users and IDEs).

To add an option: a field here, its parameter in ``_api.rerank``/``arerank``, and its use.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import SecretStr

from . import _secrets as secrets
from ._errors import InvalidRequestError, shown
from ._hardware import check_device, check_dtype
from .providers import ProviderNames

BACKENDS = ("auto", "local", "remote")
API_FORMATS = ProviderNames()  # the registered providers' names, read when checked (dheera_local.providers)
MIN_MAX_LENGTH = 8


# Checks: each takes the raw value and its name, returns the value to use or raises InvalidRequestError.


def check_flag(value: object, name: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequestError(f"{name} must be true or false, got {shown(value)}", field=name)
    return value


def check_optional_int(value: object, name: str, minimum: int = 1) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(f"{name} must be an integer >= {minimum}, got {shown(value)}", field=name)
    if value < minimum:
        raise InvalidRequestError(f"{name} must be >= {minimum}, got {shown(value)}", field=name)
    return value


def _max_length(value: object, name: str) -> int | None:
    return check_optional_int(value, name, MIN_MAX_LENGTH)


def _optional_str(value: object, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InvalidRequestError(f"{name} must be a string, got {type(value).__name__}", field=name)


def _choice(choices: Sequence[str], optional: bool = False) -> Callable[[object, str], Any]:
    def check(value: object, name: str) -> str | None:
        if value is None and optional:
            return None
        if value not in choices:
            raise InvalidRequestError(f"{name} must be one of {', '.join(choices)}; got {shown(value)}", field=name)
        return str(value)

    return check


def _optional_path(value: object, name: str) -> Path | None:
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        try:
            return Path(value).expanduser()
        except RuntimeError:  # ~user with no such user
            raise InvalidRequestError(f"{name} {shown(str(value))}: no such user's home folder", field=name) from None
    raise InvalidRequestError(f"{name} must be a folder path, got {type(value).__name__}", field=name)


def _api_base(value: object, name: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        displayed = repr(secrets.mask(without_userinfo(value))) if isinstance(value, str) else shown(value)
        raise InvalidRequestError(f"{name} must be an http:// or https:// URL, got {displayed}", field=name)
    try:
        parts = urlsplit(value)
        user, password = parts.username, parts.password
    except ValueError:  # an unbalanced [IPv6] host
        raise InvalidRequestError(f"{name} is not a valid URL: {without_userinfo(value)!r}", field=name) from None
    if "@" in parts.netloc:
        # Credentials in a URL travel into every message that names the endpoint, and httpx would send
        # them as Basic auth in place of api_key: refused, and masked from here on in case they echo.
        secrets.register_userinfo(user, password)
        raise InvalidRequestError(
            f"{name} must not hold credentials (user:password@ in {without_userinfo(value)!r}); "
            "pass the key as api_key (sent as 'Authorization: Bearer')",
            field=name,
        )
    return value


def without_userinfo(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@``, for messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    return f"{scheme}{sep}{authority}{slash}{path}"


def _api_key(value: object, name: str) -> SecretStr | None:
    if value is None or value == "":
        return None
    raw = value.get_secret_value() if isinstance(value, SecretStr) else value
    if not isinstance(raw, str):
        raise InvalidRequestError(f"{name} must be a string", field=name)
    secrets.register(raw.strip())  # masked even when refused below
    try:
        key = secrets.clean_key(raw, name)
    except ValueError as exc:
        raise InvalidRequestError(str(exc), field=name) from None
    return SecretStr(key) if key else None


def _timeout(value: object, name: str) -> float | None:
    if value is None:
        return None
    seconds = value
    if isinstance(value, str):
        try:
            seconds = float(value)
        except ValueError as exc:
            raise InvalidRequestError(f"{name} must be a number of seconds, got {shown(value)}", field=name) from exc
    if isinstance(seconds, int) and not isinstance(seconds, bool):
        seconds = float(seconds) if seconds.bit_length() < 1024 else math.inf  # float() overflows past 1e308
    # NaN compares false both ways: "nan" and float("nan") are refused with the infinities.
    if not isinstance(seconds, float) or not 0 < seconds < math.inf:
        raise InvalidRequestError(
            f"{name} must be a positive, finite number of seconds, got {shown(value)}", field=name
        )
    return seconds


def _option(
    default: Any,
    check: Callable[[object, str], Any],
    help: str,  # noqa: A002 - argparse's word
    *,
    cli: dict[str, Any] | None = None,
    config: Any = None,
) -> Any:
    """A field of :class:`RerankOptions`. ``cli``: argparse keywords, ``{}`` for the defaults, None for
    no flag. ``config``: the type config.yaml accepts (None: not a per-model setting)."""
    metadata = {"check": check, "help": help, "cli": cli, "config": config}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class RerankOptions:
    """How to serve a request: backend choice, endpoint, cache and local-engine settings."""

    backend: str = _option(
        "auto", _choice(BACKENDS), "auto (local weights first, then remote), local or remote",
        cli={"choices": BACKENDS}, config=Literal["auto", "local", "remote"],
    )  # fmt: skip
    api_base: str | None = _option(
        None, _api_base, "a TEI-, Cohere- or HF-compatible endpoint URL", cli={}, config=str | None
    )
    api_key: SecretStr | None = _option(
        None, _api_key, "endpoint key (HF hosted defaults to $HF_TOKEN)", cli={}, config=SecretStr | None
    )
    api_format: str | None = _option(
        None, _choice(API_FORMATS, optional=True),
        "the endpoint's wire format, a registered provider (default: tei for huggingface/ORG/NAME, else cohere)",
        cli={"choices": API_FORMATS}, config=str | None,
    )  # fmt: skip
    cache: bool = _option(
        True, check_flag, "read and write the score cache", cli={"flag": "--no-cache", "negate": True},
        config=bool | None,
    )  # fmt: skip
    cache_dir: Path | None = _option(None, _optional_path, "score cache folder", cli={})
    device: str | None = _option(
        None, check_device, "torch device for the local backend (default: auto)", cli={}, config=str | None
    )
    dtype: str | None = _option(
        None, check_dtype, "auto, float32, bfloat16, float16 or int8", cli={}, config=str | None
    )
    max_length: int | None = _option(
        None, _max_length, "tokens per (query, document) pair; longer pairs are truncated",
        cli={"type": int}, config=int | None,
    )  # fmt: skip
    raw_scores: bool = _option(False, check_flag, "logits instead of sigmoid scores", cli={"action": "store_true"})
    timeout: float | None = _option(
        None, _timeout, "seconds one remote request may take, answer included", cli={"type": float},
        config=float | None,
    )  # fmt: skip
    instruction: str | None = _option(
        None, _optional_str, "Qwen3-Reranker's task instruction (default: the model card's web-search one)",
        cli={}, config=str | None,
    )  # fmt: skip
    prompt: str | None = _option(
        None, _optional_str, "bge-reranker-v2-gemma's prompt after the pair (default: FlagEmbedding's)",
        cli={}, config=str | None,
    )  # fmt: skip
    batch_tokens: int | None = _option(
        None, check_optional_int, "padded tokens per forward pass of the local backend (default: per device)",
        cli={"type": int}, config=int | None,
    )  # fmt: skip


OPTION_NAMES = tuple(f.name for f in dataclasses.fields(RerankOptions))


def build_options(**values: Any) -> RerankOptions:
    """Check the keyword options shared by every entry point; raises InvalidRequestError naming the field."""
    unknown = sorted(set(values) - set(OPTION_NAMES))
    if unknown:
        raise InvalidRequestError(
            f"unknown option {unknown[0]!r}; the options are {', '.join(OPTION_NAMES)}", field=unknown[0]
        )
    checked = {}
    for option in dataclasses.fields(RerankOptions):
        value = values.get(option.name, option.default)
        checked[option.name] = option.metadata["check"](value, option.name)
    return RerankOptions(**checked)


def add_engine_options(parser: argparse.ArgumentParser, *, exclude: tuple[str, ...] = ()) -> None:
    """Add a flag for every option that has one (``--api-base``, ``--no-cache``, ...)."""
    for option in dataclasses.fields(RerankOptions):
        spec = option.metadata["cli"]
        if spec is None or option.name in exclude:
            continue
        spec = dict(spec)
        flag = spec.pop("flag", "--" + option.name.replace("_", "-"))
        if spec.pop("negate", False):
            parser.add_argument(flag, dest=option.name, action="store_false", help=f"do not {option.metadata['help']}")
        else:
            spec.setdefault("default", option.default)
            parser.add_argument(flag, dest=option.name, help=option.metadata["help"], **spec)


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options the parsed flags set (those left unset keep their defaults)."""
    return {name: getattr(args, name) for name in OPTION_NAMES if hasattr(args, name)}


def config_fields() -> dict[str, tuple[Any, Any]]:
    """``config.yaml``'s per-model options, as pydantic ``(type, default)`` pairs (all default to None:
    unset means the option's own default)."""
    return {f.name: (f.metadata["config"], None) for f in dataclasses.fields(RerankOptions) if f.metadata["config"]}


def option_check(name: str) -> Callable[[object, str], Any]:
    """The check of option ``name``."""
    return {f.name: f.metadata["check"] for f in dataclasses.fields(RerankOptions)}[name]
