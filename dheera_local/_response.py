"""The Cohere-style rerank response, as the seed docs and LiteLLM users expect it.

``model_dump()`` gives ``{"results": [{"index", "relevance_score"[, "document"]}], "id",
"meta": {"api_version", "billed_units", "dheera_local"}}``. ``document`` is omitted (never null)
unless documents were asked for; ``meta.dheera_local`` is our extra: which backend served the
request and how many scores came from the cache. ``resp["results"]`` works as in LiteLLM.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_serializer


class _ItemAccess:
    """``obj["field"]``, ``obj.get("field")`` and ``"field" in obj``, as LiteLLM's types allow."""

    def __getitem__(self, key: str) -> Any:
        if key not in type(self).model_fields:  # type: ignore[attr-defined]
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default) if key in type(self).model_fields else default  # type: ignore[attr-defined]

    def __contains__(self, key: object) -> bool:
        return key in type(self).model_fields and getattr(self, str(key)) is not None  # type: ignore[attr-defined]


class ApiVersion(_ItemAccess, BaseModel):
    version: str = "2"
    is_experimental: bool = False


class BilledUnits(_ItemAccess, BaseModel):
    search_units: int = 0


class ServedBy(_ItemAccess, BaseModel):
    """Where the scores came from."""

    backend: str = Field(description="backend that scored the misses: local, hf_hosted, tei, cohere, or cache")
    model: str
    cache_hits: int = 0
    scored: int = 0
    fallbacks: list[str] = Field(default_factory=list, description="backends that failed before this one")
    device: str | None = None
    dtype: str | None = None
    kernels: str | None = Field(default=None, description="local matmul kernels: onednn-packed or eager")


class RerankMeta(_ItemAccess, BaseModel):
    model_config = ConfigDict(extra="allow")

    api_version: ApiVersion = Field(default_factory=ApiVersion)
    billed_units: BilledUnits = Field(default_factory=BilledUnits)
    dheera_local: ServedBy | None = None

    @model_serializer(mode="wrap")
    def _omit_empty(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data.get("dheera_local") is None:
            data.pop("dheera_local", None)
        return data


class RerankResult(_ItemAccess, BaseModel):
    index: int
    relevance_score: float
    document: dict[str, Any] | None = None

    @model_serializer(mode="wrap")
    def _omit_missing_document(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data.get("document") is None:
            data.pop("document", None)
        return data


class RerankResponse(_ItemAccess, BaseModel):
    """A rerank answer: results sorted by ``relevance_score``, best first."""

    results: list[RerankResult]
    id: str
    meta: RerankMeta = Field(default_factory=RerankMeta)

    @property
    def backend(self) -> str | None:
        """Which backend served the request (``cache`` when every score was cached)."""
        return self.meta.dheera_local.backend if self.meta.dheera_local else None

    @property
    def cache_hits(self) -> int:
        """How many scores came from the disk cache."""
        return self.meta.dheera_local.cache_hits if self.meta.dheera_local else 0
