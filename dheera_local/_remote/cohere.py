"""A Cohere-compatible ``/rerank`` endpoint: another dheera-local server, Cohere, infinity, Voyage.

``POST {api_base}/rerank`` with the Cohere body; the answer's ``results[]`` (Cohere) or
``data[]`` (Voyage) carry ``index`` and ``relevance_score``. Scores in [0, 1] are turned back
into logits (the inverse sigmoid), so the orchestrator's sigmoid gives the server's score back.
The tokens it scored are read where the answer says: ``meta.tokens.input_tokens`` (Cohere v2's
shape, another dheera-local), ``meta.billed_units.total_tokens`` (LiteLLM's), ``usage.total_tokens``
(vLLM, Jina, Voyage, infinity); Cohere's own API reports only search units, so there it is unknown.
"""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from .._options import normalize_api_base
from .backend import RemoteBackend, group_by_limits, probability_to_logit, scores_in_order, usage_count
from .http import Call, HttpClients, RetryPolicy

DOCUMENTS_PER_REQUEST = 1000


COHERE_HOSTS = ("api.cohere.com", "api.cohere.ai")


def is_cohere_api(api_base: str) -> bool:
    """True for Cohere's own API (https, its hosts), where ``CO_API_KEY`` belongs."""
    parts = urlsplit(api_base)
    return parts.scheme == "https" and (parts.hostname or "") in COHERE_HOSTS


def rerank_url(api_base: str) -> str:
    base = normalize_api_base(api_base)
    return base if base.endswith("/rerank") else base + "/rerank"


class CohereBackend(RemoteBackend):
    """Scores through a Cohere-compatible endpoint, sending ``model`` as the server knows it."""

    name = "cohere"
    label = "Cohere-compatible endpoint"
    concurrency = 4

    def __init__(
        self,
        api_base: str,
        model: str,
        clients: HttpClients,
        policy: RetryPolicy,
        token: SecretStr | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(clients, policy, token, timeout)
        self.url = rerank_url(api_base)
        self.model = model

    def describe(self) -> dict[str, str]:
        return {"endpoint": self.url, "model": self.model}

    def split(self, query: str, texts: list[str]) -> list[list[int]]:
        return group_by_limits(query, texts, DOCUMENTS_PER_REQUEST)

    def call_for(self, query: str, texts: list[str]) -> Call:
        body = {
            "model": self.model,
            "query": query,
            "documents": texts,
            "top_n": len(texts),
            "return_documents": False,
        }
        return Call("POST", self.url, self.label, self.name, body, self.token, self.timeout)

    def parse(self, body: Any, count: int) -> list[float]:
        results = None
        if isinstance(body, dict):
            results = body.get("results", body.get("data"))
        if not isinstance(results, list):
            raise self.unexpected(self.url, "expected an object with a results (or data) array")
        refuse = functools.partial(self.unexpected, self.url)
        scores = scores_in_order(results, count, "relevance_score", refuse, kind="result", of="documents")
        return [probability_to_logit(score) for score in scores]

    def usage(self, body: Any) -> int | None:
        meta, usage = _field(body, "meta"), _field(body, "usage")
        for found in (
            _field(_field(meta, "tokens"), "input_tokens"),
            _field(_field(meta, "billed_units"), "total_tokens"),
            _field(usage, "total_tokens"),
        ):
            count = usage_count(found)
            if count is not None:
                return count
        return None


def _field(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, dict) else None
