"""The catalog of known models, read from ``models.txt`` (the single source of truth)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

CROSS_ENCODER = "cross-encoder"
LLM_RERANKER = "llm-reranker"


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
    return (Path(__file__).resolve().parent.parent / "models.txt").read_text(encoding="utf-8")


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
        if kind not in (CROSS_ENCODER, LLM_RERANKER):
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
