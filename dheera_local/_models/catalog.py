"""The catalog of known models, read from ``models.txt`` (the single source of truth), and the one rule
for what dheera_local scores (:func:`check_cross_encoder`): cross-encoders, and the LLM rerankers whose
prompt template it knows (:mod:`dheera_local._models.llm_templates`)."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .._errors import LocalBackendError, UnsupportedModelError
from .llm_templates import llm_architectures

CROSS_ENCODER = "cross-encoder"
LLM_RERANKER = "llm-reranker"
# A layerwise LLM reranker: its scoring layers live in a modeling file on the hub, which is code we do not run.
LLM_LAYERWISE = "llm-layerwise"


@dataclass(frozen=True)
class KnownModel:
    """One line of models.txt."""

    hub_id: str
    kind: str
    max_length: int
    params: str
    languages: str
    license: str

    @property
    def is_cross_encoder(self) -> bool:
        return self.kind == CROSS_ENCODER


def _models_txt() -> str:
    # Installed wheels carry models.txt inside the package; a source checkout keeps it at the repo root.
    packaged = resources.files("dheera_local").joinpath("models.txt")
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    return (Path(__file__).resolve().parents[2] / "models.txt").read_text(encoding="utf-8")


def parse_catalog(text: str) -> dict[str, KnownModel]:
    """Parse the models.txt format into ``{lower-cased hub id: KnownModel}``."""
    models: dict[str, KnownModel] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 6:
            raise ValueError(f"models.txt line {number}: expected 6 fields, got {len(fields)}: {line!r}")
        hub_id, kind, max_length, params, languages, license_ = fields
        if kind not in (CROSS_ENCODER, LLM_RERANKER, LLM_LAYERWISE):
            raise ValueError(f"models.txt line {number}: unknown kind {kind!r}")
        models[hub_id.lower()] = KnownModel(hub_id, kind, int(max_length), params, languages, license_)
    return models


@functools.cache
def known_models() -> dict[str, KnownModel]:
    """All models listed in models.txt, keyed by lower-cased hub id."""
    return parse_catalog(_models_txt())


def lookup(hub_id: str | None) -> KnownModel | None:
    """The catalog entry for a hub id (case-insensitive), or None when it is not listed."""
    if hub_id is None:
        return None
    return known_models().get(hub_id.lower())


def check_cross_encoder(model_id: str | None, folder: Path | None = None, *, strict: bool = True) -> None:
    """Refuse a model that would be scored with a random or wrong head.

    The rule, applied when a model is planned, pulled and loaded: not a layerwise LLM reranker of
    models.txt, and (given its ``folder``) a ``*ForSequenceClassification`` architecture with 1 or 2
    labels, or an LLM architecture scored through a registered family's prompt (:func:`llm_architectures`).

    Raises:
        UnsupportedModelError: The model is not a cross-encoder.
        LocalBackendError: The folder's config.json cannot be read (``strict``; else it passes).
    """
    known = lookup(model_id)
    if known is not None and known.kind == LLM_LAYERWISE:
        raise UnsupportedModelError(
            f"{known.hub_id} is a layerwise LLM reranker whose scoring layers are defined in custom modeling "
            "code downloaded from the hub (trust_remote_code), and dheera_local does not run code from the hub; "
            "it is not a cross-encoder either. Use BAAI/bge-reranker-v2-gemma or Qwen/Qwen3-Reranker-0.6B "
            "(LLM rerankers served here), or the cross-encoder BAAI/bge-reranker-v2-m3."
        )
    if folder is None:
        return
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        if not strict:
            return
        raise LocalBackendError(f"{model_id}: cannot read {folder / 'config.json'}: {exc}") from exc
    architectures = config.get("architectures") or []
    if any(a in llm_architectures() for a in architectures):
        return
    if architectures and not any(str(a).endswith("ForSequenceClassification") for a in architectures):
        raise UnsupportedModelError(
            f"{model_id} has architecture {architectures[0]}, not a *ForSequenceClassification "
            "cross-encoder; loading it would score with a randomly initialised head"
        )
    labels = config.get("num_labels", len(config.get("id2label") or {}) or 1)
    if labels > 2:
        raise UnsupportedModelError(f"{model_id} has {labels} labels; rerankers have 1 (or 2) outputs")
