"""Parsing of the ``model`` argument into what it names.

The documented rule, applied here and in the selector and nowhere else:

* ``huggingface/ORG/NAME`` or bare ``ORG/NAME`` names a HuggingFace hub model: its local weights
  when they are on this machine, else the HF hosted API;
* with ``api_base``, ``huggingface/ORG/NAME`` goes to a TEI-compatible endpoint, and any name
  without that prefix (bare ``ORG/NAME`` included) to a Cohere-compatible one (another
  dheera-local server, Cohere, infinity, Voyage); ``cohere/NAME`` always means the latter;
* an existing folder (or anything spelled like a path: ``/``, ``./``, ``../``, ``~``) is a local model.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from .._errors import InvalidRequestError, shown

HF_PREFIX = "huggingface/"
COHERE_PREFIX = "cohere/"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
# PATH_MAX on Linux; hub ids are far shorter (96 characters per part).
MAX_MODEL_CHARS = 4096
_PATH_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")
_HUB_PART = re.compile(r"^\w(?:[\w.\-]*\w)?$")
MAX_HUB_PART = 96


class ModelKind(str, Enum):
    HUB = "hub"
    PATH = "path"
    NAMED = "named"


@dataclass(frozen=True)
class ModelRef:
    """What a model string names. ``name`` is what a remote server is told."""

    text: str
    kind: ModelKind
    name: str
    hub_id: str | None = None
    path: Path | None = None


def parse_model(model: object) -> ModelRef:
    """Parse a model string; raises InvalidRequestError naming the ``model`` field."""
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequestError(
            f"model must be a non-empty string such as 'huggingface/BAAI/bge-reranker-base', got {shown(model)}",
            field="model",
        )
    text = model.strip()
    _check_spelling(text)
    if text.startswith(HF_PREFIX):
        return _hub_ref(text, text[len(HF_PREFIX) :])
    if text.startswith(COHERE_PREFIX) and len(text) > len(COHERE_PREFIX):
        return ModelRef(text, ModelKind.NAMED, name=text[len(COHERE_PREFIX) :])
    folder = _existing_folder(text)
    if folder is not None:
        return ModelRef(text, ModelKind.PATH, name=text, path=folder.resolve())
    if text.startswith(_PATH_PREFIXES):
        raise InvalidRequestError(f"model folder {_shown(text)} does not exist", field="model")
    if _HUB_ID.match(text):
        _check_hub_id(text, text)
        return ModelRef(text, ModelKind.HUB, name=text, hub_id=text)
    return ModelRef(text, ModelKind.NAMED, name=text)


def _check_spelling(text: str) -> None:
    """A model string is sent to endpoints and written in logs: no lone surrogate, no control character,
    and no longer than a path may be."""
    if len(text) > MAX_MODEL_CHARS:
        raise InvalidRequestError(
            f"model is {len(text):,} characters; a hub id, folder or served name has at most {MAX_MODEL_CHARS:,}",
            field="model",
        )
    bad = next((char for char in text if unicodedata.category(char) in ("Cc", "Cs")), None)
    if bad is not None:
        raise InvalidRequestError(
            f"model {shown(text)} holds the character {bad!r}; model names are printable UTF-8 text", field="model"
        )


def _hub_ref(text: str, hub_id: str) -> ModelRef:
    if not _HUB_ID.match(hub_id):
        raise InvalidRequestError(
            f"model {_shown(text)}: after 'huggingface/' expected a hub id ORG/NAME, e.g. "
            "'huggingface/BAAI/bge-reranker-base'",
            field="model",
        )
    _check_hub_id(text, hub_id)
    return ModelRef(text, ModelKind.HUB, name=hub_id, hub_id=hub_id)


def _existing_folder(text: str) -> Path | None:
    try:
        folder = Path(text).expanduser()
        return folder if folder.is_dir() else None
    except (OSError, RuntimeError, ValueError):  # a name too long for a path, no home for ~user, a NUL
        return None


def _check_hub_id(text: str, hub_id: str) -> None:
    """huggingface_hub's rules for a repo id, checked here so that a bad one is an InvalidRequestError
    naming ``model`` rather than its HFValidationError from deep inside a cache lookup."""
    org, name = hub_id.split("/")
    problem = None
    if len(org) > MAX_HUB_PART or len(name) > MAX_HUB_PART:
        problem = f"each part is at most {MAX_HUB_PART} characters"
    elif not (_HUB_PART.match(org) and _HUB_PART.match(name)):
        problem = "a part cannot start or end with '-' or '.'"
    elif "--" in hub_id or ".." in hub_id:
        problem = "'--' and '..' are not allowed"
    elif hub_id.endswith(".git"):
        problem = "it cannot end in '.git'"
    if problem is not None:
        raise InvalidRequestError(
            f"model {_shown(text)} is not a valid HuggingFace hub id ORG/NAME: {problem}. (For a name only an "
            "api_base endpoint knows, write cohere/NAME.)",
            field="model",
        )


def _shown(text: str) -> str:
    """``text`` quoted for a message, cut: the value is the caller's and may be huge."""
    return repr(text) if len(text) <= 120 else repr(text[:100]) + f"... ({len(text)} characters)"
