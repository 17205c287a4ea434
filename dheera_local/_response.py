"""The Cohere-style rerank response, as the seed docs and LiteLLM users expect it.

``model_dump()`` gives ``{"results": [{"index", "relevance_score"[, "document"]}], "id",
"meta": {"api_version", "billed_units", "tokens", "dheera_local"}}``. ``document`` is omitted (never null)
unless documents were asked for; ``meta.dheera_local`` is our extra: which backend served the
request and how many scores came from the cache. ``resp["results"]`` works as in LiteLLM.

Usage: ``meta.tokens.input_tokens`` (Cohere v2's field) and ``meta.billed_units.total_tokens`` (what
LiteLLM's per-token rerank pricing reads) are the tokens a model scored for this request: each
(query, document window) pair it ran, as its tokenizer encoded it (special tokens in, padding out).
Cache hits and repeated pairs cost none. Both are omitted when a remote that served the request did
not report its usage: an unknown count is left out, never guessed and never null.
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
    total_tokens: int | None = Field(default=None, description="tokens scored; omitted when not known")

    @model_serializer(mode="wrap")
    def _omit_unknown(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data.get("total_tokens") is None:
            data.pop("total_tokens", None)
        return data


class Tokens(_ItemAccess, BaseModel):
    """Cohere v2's ``meta.tokens``: a reranker reads input and writes none."""

    input_tokens: int
    output_tokens: int = 0


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
    tokens: Tokens | None = None
    dheera_local: ServedBy | None = None

    @model_serializer(mode="wrap")
    def _omit_empty(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        for name in ("tokens", "dheera_local"):
            if data.get(name) is None:
                data.pop(name, None)
        return data

    @classmethod
    def usage(cls, search_units: int, tokens: int | None, served_by: ServedBy | None) -> RerankMeta:
        """The meta of an answer that cost ``search_units`` and ``tokens`` (None: not known)."""
        return cls(
            billed_units=BilledUnits(search_units=search_units, total_tokens=tokens),
            tokens=Tokens(input_tokens=tokens) if tokens is not None else None,
            dheera_local=served_by,
        )


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
    def input_tokens(self) -> int | None:
        """Tokens a model scored for this request (cache hits cost none); None when a remote did not say."""
        return self.meta.tokens.input_tokens if self.meta.tokens is not None else None

    @property
    def cache_hits(self) -> int:
        """How many scores came from the disk cache."""
        return self.meta.dheera_local.cache_hits if self.meta.dheera_local else 0
