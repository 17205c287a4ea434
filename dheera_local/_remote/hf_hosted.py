"""The HuggingFace hosted inference API (hf-inference), text-classification over pairs.

``POST {base}/models/ORG/NAME`` (or a dedicated Inference Endpoint's URL) with
``{"inputs": [{"text": query, "text_pair": doc}, ...], "parameters": {"function_to_apply": "none",
"top_k": 3}}`` answers raw logits as ``[{label, score}]``
or ``[[{label, score}], ...]`` (one list per input), in input order. ``base`` defaults to
``https://router.huggingface.co/hf-inference`` (the settings' ``hf_inference_url``, from
``DHEERA_HF_INFERENCE_URL``). The token is ``api_key``, else the settings' ``hf_token`` for
HuggingFace's own hosts only (:func:`is_hf_host`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from .._secrets import quote
from .backend import RemoteBackend, as_float, group_by_limits
from .http import Call, HttpClients, RetryPolicy

# HuggingFace's own hosts over https: the hub and router, and dedicated Inference Endpoints.
HF_DOMAINS = ("huggingface.co", "endpoints.huggingface.cloud")
PAIRS_PER_REQUEST = 32
# Labels asked for per pair. Without top_k the pipeline answers only the best label, which for a
# two-label head is not enough to compute the log-odds; 3 also exposes a head that is no reranker.
LABELS_PER_PAIR = 3


def is_hf_host(url: str, inference_url: str) -> bool:
    """True where ``HF_TOKEN`` belongs: the configured hosted inference URL's host (scheme and port
    included), or https on HuggingFace's domains (``HF_DOMAINS`` and their sub-domains)."""
    parts, configured = urlsplit(url), urlsplit(inference_url)
    if (parts.scheme, parts.netloc) == (configured.scheme, configured.netloc):
        return True
    host = (parts.hostname or "").lower()
    return parts.scheme == "https" and any(host == d or host.endswith("." + d) for d in HF_DOMAINS)


class HFHostedBackend(RemoteBackend):
    """Scores through a text-classification endpoint at ``url``: ``{base}/models/ORG/NAME`` on HF hosted
    inference, or an Inference Endpoint's own URL (``api_format="hf"``)."""

    name = "hf_hosted"
    label = "HF hosted inference"
    concurrency = 4

    def __init__(
        self,
        url: str,
        clients: HttpClients,
        policy: RetryPolicy,
        token: SecretStr | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(clients, policy, token, timeout)
        self.url = url

    def describe(self) -> dict[str, str]:
        return {"endpoint": self.url}

    def split(self, query: str, texts: list[str]) -> list[list[int]]:
        return group_by_limits(query, texts, PAIRS_PER_REQUEST, query_per_text=True)

    def call_for(self, query: str, texts: list[str]) -> Call:
        body = {
            "inputs": [{"text": query, "text_pair": text} for text in texts],
            "parameters": {"function_to_apply": "none", "top_k": LABELS_PER_PAIR},
        }
        return Call("POST", self.url, self.label, self.name, body, self.token, self.timeout)

    def parse(self, body: Any, count: int) -> list[float]:
        if not isinstance(body, list):
            raise self.unexpected(self.url, f"expected a JSON array, got {type(body).__name__}")
        if count == 1 and len(body) > 1 and all(isinstance(item, dict) for item in body):
            body = [body]  # one input's labels, not one label per input
        if len(body) != count:
            raise self.unexpected(self.url, f"{len(body)} results for {count} pairs")
        return [self._logit(item) for item in body]

    def _logit(self, item: Any) -> float:
        labels = item if isinstance(item, list) else [item]
        scores = {}
        for label in labels:
            score = as_float(label.get("score")) if isinstance(label, dict) else None
            name = label.get("label", "") if isinstance(label, dict) else None
            if score is None or not isinstance(name, str):  # a label is a name (str() of a huge int raises)
                raise self.unexpected(self.url, f"bad label entry {quote(label, 80)}")
            if name in scores:  # which of the two is the score? refuse rather than guess
                raise self.unexpected(self.url, f"label {quote(name, 40)!r} appears twice for one pair")
            scores[name] = score
        if len(scores) == 1:
            return next(iter(scores.values()))
        if len(scores) == 2:
            # Two-class heads: log-odds of the second label, matching the local backend.
            negative, positive = (scores[name] for name in sorted(scores))
            return positive - negative
        raise self.unexpected(self.url, f"{len(scores)} labels per pair; rerankers have 1 or 2")
