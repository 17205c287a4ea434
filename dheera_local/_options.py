"""The engine options of ``rerank()``, defined once: :class:`RerankOptions`.

Each field carries (in its :class:`OptionSpec`) how it is checked, how the command line spells it,
whether ``config.yaml`` takes it and whether it changes the scores. Everything else derives from
here: :func:`build_options` (every edge: the SDK, the CLI, config.yaml, the adapters, the server),
the CLI flags (:func:`add_engine_options`, :func:`engine_options`), the server's per-model
parameters (:func:`config_fields`), ``score``'s resume key (:func:`numerics_fields`) and, checked by
a test, the explicit signatures of ``rerank``/``arerank`` (kept explicit for users and IDEs).

To add an option: a field here, its parameter in ``_api.rerank``/``arerank``, and its use
(ARCHITECTURE.md, "A new engine option").
"""

from __future__ import annotations

import argparse
import difflib
import functools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator

from . import _secrets as secrets
from ._errors import InvalidRequestError, shown
from .providers import ProviderNames

BACKENDS = ("auto", "local", "remote")
API_FORMATS = ProviderNames()  # the registered providers' names, read when checked (dheera_local.providers)
MIN_MAX_LENGTH = 8


# Device and precision names, checked without torch (a typo is refused before any load or network call;
# whether this machine has the device is _local.hardware's question, asked when a local model is planned).
DTYPE_NAMES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "int8": "int8",  # opt-in, CPU only: dynamic int8 linears (dheera_local._local.int8); never chosen by auto
}


# torch.device's types (torch 2.x), and "npu", the name Ascend's torch_npu gives torch's privateuse1 backend.
DEVICE_TYPES = (
    "cpu", "cuda", "mps", "xpu", "hip", "xla", "meta", "hpu", "mtia", "maia", "ipu", "ve", "fpga", "lazy", "vulkan",
    "opengl", "opencl", "ideep", "mkldnn", "privateuseone", "npu",
)  # fmt: skip
_DEVICE = re.compile(r"([a-z]+)(?::(0|[1-9][0-9]*))?")


def check_device(value: object, name: str = "device") -> str | None:
    """``value`` if it spells a torch device (``auto``, ``cpu``, ``cuda:1``...), checked without torch: a typo is
    refused when the request is made, whichever backend would serve it. Whether this machine has that device
    is :func:`resolve_device`'s question, asked when a local model is planned."""
    if value is None or value == "auto":
        return value
    if not isinstance(value, str):
        raise InvalidRequestError(f"{name} must be a string such as 'cpu' or 'cuda:0', got {shown(value)}", field=name)
    match = _DEVICE.fullmatch(value)
    if match is None or match.group(1) not in DEVICE_TYPES:
        kind = value.split(":", 1)[0].strip().lower()
        hint = ["cuda"] if kind == "gpu" else difflib.get_close_matches(kind, ("auto", *DEVICE_TYPES), n=1)
        raise InvalidRequestError(
            f"{name} {shown(value)} is not a torch device: use auto, cpu, cuda, cuda:N, mps or xpu"
            + (f" (did you mean {hint[0]!r}?)" if hint else ""),
            field=name,
        )
    return value


def check_dtype(value: object, name: str = "dtype") -> str | None:
    """``value`` if it names a precision (``auto``, ``float16``, ``bf16``...), checked without torch."""
    if value is None or value == "auto" or (isinstance(value, str) and value.lower() in DTYPE_NAMES):
        return value
    names = ("auto", *DTYPE_NAMES)
    hint = difflib.get_close_matches(value.lower(), names, n=1) if isinstance(value, str) else []
    raise InvalidRequestError(
        f"{name} {shown(value)} is not one of: {', '.join(sorted(names))}"
        + (f" (did you mean {hint[0]!r}?)" if hint else ""),
        field=name,
    )


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


def normalize_api_base(url: str) -> str:
    """The base of an endpoint URL, which the TEI and Cohere URLs and a named remote model's cache identity are
    built on: no trailing slash (``http://h:8080/`` is ``http://h:8080``). The option itself keeps the URL as
    given: an HF endpoint is called at it, and its cache entries are keyed by it."""
    return url.rstrip("/")


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


@dataclass(frozen=True)
class OptionSpec:
    """What :class:`RerankOptions` knows of one option besides its type and default.

    ``check`` takes the raw value and its name and returns the value to keep (or raises InvalidRequestError);
    ``cli``: argparse keywords, ``{}`` for the defaults, None for no flag; ``config``: the type config.yaml
    accepts (None: not a per-model setting); ``numerics``: False for an option that changes how or where a
    score is computed but not the score (a resumed ``score`` run may change it, see :func:`numerics_fields`).
    """

    check: Callable[[object, str], Any]
    help: str
    cli: dict[str, Any] | None = None
    config: Any = None
    numerics: bool = True


class RerankOptions(BaseModel):
    """How to serve a request: backend choice, endpoint, cache and local-engine settings.

    Built and checked once where a request enters (``rerank()``, the CLI, config.yaml, an adapter, a server
    body) and passed down as is: immutable, so nothing below the edge checks it again. Making one raises
    :class:`InvalidRequestError` naming the field; :meth:`replace` checks only the fields it changes.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: Annotated[str, OptionSpec(
        _choice(BACKENDS), "auto (local weights first, then remote), local or remote",
        cli={"choices": BACKENDS}, config=Literal["auto", "local", "remote"],
    )] = "auto"  # fmt: skip
    api_base: Annotated[str | None, OptionSpec(
        _api_base, "a TEI-, Cohere- or HF-compatible endpoint URL", cli={}, config=str | None
    )] = None  # fmt: skip
    api_key: Annotated[SecretStr | None, OptionSpec(
        _api_key, "endpoint key (HF hosted defaults to $HF_TOKEN)", cli={}, config=SecretStr | None, numerics=False
    )] = None  # fmt: skip
    api_format: Annotated[str | None, OptionSpec(
        _choice(API_FORMATS, optional=True),
        "the endpoint's wire format, a registered provider (default: tei for huggingface/ORG/NAME, else cohere)",
        cli={"choices": API_FORMATS}, config=str | None,
    )] = None  # fmt: skip
    cache: Annotated[bool, OptionSpec(
        check_flag, "read and write the score cache", cli={"flag": "--no-cache", "negate": True},
        config=bool | None, numerics=False,
    )] = True  # fmt: skip
    cache_dir: Annotated[Path | None, OptionSpec(_optional_path, "score cache folder", cli={}, numerics=False)] = None
    # float32 scores the same on any device, as the score cache keys them; reduced precision is keyed by dtype.
    device: Annotated[str | None, OptionSpec(
        check_device, "torch device for the local backend (default: auto)", cli={}, config=str | None,
        numerics=False,
    )] = None  # fmt: skip
    dtype: Annotated[str | None, OptionSpec(
        check_dtype, "auto, float32, bfloat16, float16 or int8", cli={}, config=str | None
    )] = None  # fmt: skip
    max_length: Annotated[int | None, OptionSpec(
        _max_length, "tokens per (query, document) pair; longer pairs are truncated",
        cli={"type": int}, config=int | None,
    )] = None  # fmt: skip
    raw_scores: Annotated[bool, OptionSpec(
        check_flag, "logits instead of sigmoid scores", cli={"action": "store_true"}
    )] = False  # fmt: skip
    timeout: Annotated[float | None, OptionSpec(
        _timeout, "seconds one remote request may take, answer included", cli={"type": float},
        config=float | None, numerics=False,
    )] = None  # fmt: skip
    instruction: Annotated[str | None, OptionSpec(
        _optional_str, "Qwen3-Reranker's task instruction (default: the model card's web-search one)",
        cli={}, config=str | None,
    )] = None  # fmt: skip
    prompt: Annotated[str | None, OptionSpec(
        _optional_str, "bge-reranker-v2-gemma's prompt after the pair (default: FlagEmbedding's)",
        cli={}, config=str | None,
    )] = None  # fmt: skip
    # Batches are cut by tokens, and padding is masked: the budget changes speed and memory, not scores.
    batch_tokens: Annotated[int | None, OptionSpec(
        check_optional_int, "padded tokens per forward pass of the local backend (default: per device)",
        cli={"type": int}, config=int | None, numerics=False,
    )] = None  # fmt: skip

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
            return
        except ValidationError as exc:
            problem = _invalid_request(exc)
        # Raised outside the except block: pydantic's error echoes the input (an api_key, say), and an
        # exception raised inside would keep it as __context__ for any traceback printer to show.
        raise problem

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown(cls, values: Any) -> Any:
        if isinstance(values, dict):
            unknown = sorted(set(values) - set(cls.model_fields))
            if unknown:
                raise InvalidRequestError(
                    f"unknown option {unknown[0]!r}; the options are {', '.join(cls.model_fields)}", field=unknown[0]
                )
        return values

    @field_validator("*", mode="before")
    @classmethod
    def _check(cls, value: Any, info: ValidationInfo) -> Any:
        assert info.field_name is not None
        return option_spec(info.field_name, cls).check(value, info.field_name)

    def replace(self, **changes: Any) -> RerankOptions:
        """A copy with ``changes``, which alone are checked (the rest was checked when this was made)."""
        if not changes:
            return self
        fresh = type(self)(**changes)
        return self.model_copy(update={name: getattr(fresh, name) for name in changes})


def _invalid_request(exc: ValidationError) -> InvalidRequestError:
    """The InvalidRequestError an option's check raised, or one made of pydantic's first complaint."""
    first = exc.errors()[0]
    error = (first.get("ctx") or {}).get("error")
    if isinstance(error, InvalidRequestError):
        return error
    name = ".".join(str(part) for part in first["loc"]) or None
    return InvalidRequestError(f"{name}: {first['msg']}" if name else first["msg"], field=name)


def option_spec(name: str, options: type[RerankOptions] = RerankOptions) -> OptionSpec:
    """The :class:`OptionSpec` of option ``name``."""
    return next(item for item in options.model_fields[name].metadata if isinstance(item, OptionSpec))


@functools.cache
def option_specs(options: type[RerankOptions] = RerankOptions) -> dict[str, OptionSpec]:
    """Every option's spec, in definition order: what the CLI, config.yaml and the environment derive from."""
    return {name: option_spec(name, options) for name in options.model_fields}


OPTION_NAMES = tuple(RerankOptions.model_fields)
DEFAULT_OPTIONS = RerankOptions()


def build_options(**values: Any) -> RerankOptions:
    """Check the keyword options shared by every entry point; raises InvalidRequestError naming the field."""
    return RerankOptions(**values) if values else DEFAULT_OPTIONS


def merge_options(options: RerankOptions | None, values: dict[str, Any]) -> RerankOptions:
    """``options`` (checked already; None: the defaults) with the keyword ``values`` on top, those checked now.

    What the engine's entry points take: an options object made at the edge, keyword options, or both."""
    if options is None:
        return build_options(**values)
    if not isinstance(options, RerankOptions):
        raise InvalidRequestError(f"options must be a RerankOptions, got {type(options).__name__}", field="options")
    return options.replace(**values)


def numerics_fields(options: RerankOptions) -> dict[str, Any]:
    """The options that change what a score is (every option not marked ``numerics=False``), JSON-ready:
    what a resumed ``score`` run must share with the run it resumes."""
    out = {}
    for name, spec in option_specs(type(options)).items():
        if spec.numerics:
            value = getattr(options, name)
            out[name] = str(value) if isinstance(value, Path) else value
    return out


def add_engine_options(parser: argparse.ArgumentParser, *, exclude: tuple[str, ...] = ()) -> None:
    """Add a flag for every option that has one (``--api-base``, ``--no-cache``, ...)."""
    for name, option in option_specs().items():
        if option.cli is None or name in exclude:
            continue
        spec = dict(option.cli)
        flag = spec.pop("flag", "--" + name.replace("_", "-"))
        if spec.pop("negate", False):
            parser.add_argument(flag, dest=name, action="store_false", help=f"do not {option.help}")
        else:
            spec.setdefault("default", RerankOptions.model_fields[name].default)
            parser.add_argument(flag, dest=name, help=option.help, **spec)


def engine_options(args: argparse.Namespace) -> RerankOptions:
    """The options the parsed flags set (those left unset keep their defaults), checked."""
    return build_options(**{name: getattr(args, name) for name in OPTION_NAMES if hasattr(args, name)})


def config_fields() -> dict[str, tuple[Any, Any]]:
    """``config.yaml``'s per-model options, as pydantic ``(type, default)`` pairs (all default to None:
    unset means the option's own default)."""
    return {name: (spec.config, None) for name, spec in option_specs().items() if spec.config}


def option_check(name: str) -> Callable[[object, str], Any]:
    """The check of option ``name``."""
    return option_spec(name).check
