"""The HuggingFace hosted inference API (hf-inference), text-classification over pairs.

``POST {base}/models/ORG/NAME`` with ``{"inputs": [{"text": query, "text_pair": doc}, ...],
"parameters": {"function_to_apply": "none", "top_k": 3}}`` answers raw logits as ``[{label, score}]``
or ``[[{label, score}], ...]`` (one list per input), in input order. ``base`` defaults to
``https://router.huggingface.co/hf-inference``; ``DHEERA_HF_INFERENCE_URL`` overrides it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from .._secrets import quote, register
from ._http import Call, HttpClients, RetryPolicy
from ._remote import RemoteBackend, as_float, group_by_limits

DEFAULT_HF_INFERENCE_URL = "https://router.huggingface.co/hf-inference"
PAIRS_PER_REQUEST = 32
# Labels asked for per pair. Without top_k the pipeline answers only the best label, which for a
# two-label head is not enough to compute the log-odds; 3 also exposes a head that is no reranker.
LABELS_PER_PAIR = 3


def hf_inference_base() -> str:
    return (os.environ.get("DHEERA_HF_INFERENCE_URL") or DEFAULT_HF_INFERENCE_URL).rstrip("/")


def hf_token(api_key: SecretStr | None) -> SecretStr | None:
    """``api_key``, else ``HF_TOKEN``, else the token huggingface_hub saved (``hf auth login``).

    The token found is registered for masking: an endpoint that echoes it cannot leak it.
    """
    if api_key is not None:
        return api_key
    for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(variable, "").strip():
            return _registered(os.environ[variable].strip())
    saved = saved_hf_token()
    if saved is None and not os.environ.get("HF_TOKEN_PATH"):
        saved = _hub_login_token()
    return _registered(saved) if saved else None


def _registered(token: str) -> SecretStr:
    register(token)
    return SecretStr(token)


def _hub_login_token() -> str | None:
    """What else huggingface_hub finds (OIDC trusted publishing, Colab secrets)."""
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # a failed token exchange must not break scoring: no token, and the API says 401
        return None


def saved_hf_token() -> str | None:
    """The token ``hf auth login`` saved, from the file the environment names now.

    huggingface_hub resolves ``HF_TOKEN_PATH`` / ``HF_HOME`` once, at import; reading them per call
    (with the same precedence) lets a process point them elsewhere later, as the hub cache lookup does.
    """
    path = os.environ.get("HF_TOKEN_PATH")
    if not path:
        home = os.environ.get("HF_HOME") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
        )
        path = os.path.join(home, "token")
    try:
        token = Path(os.path.expandvars(path)).expanduser().read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):  # no file, or an unreadable one: no saved token
        return None
    return token or None


class HFHostedBackend(RemoteBackend):
    """Scores through HuggingFace's hosted inference for ``hub_id``."""

    name = "hf_hosted"
    label = "HF hosted inference"
    concurrency = 4

    def __init__(
        self,
        hub_id: str,
        clients: HttpClients,
        policy: RetryPolicy,
        token: SecretStr | None = None,
        timeout: float | None = None,
        base: str | None = None,
    ) -> None:
        super().__init__(clients, policy, token, timeout)
        self.hub_id = hub_id
        self.url = f"{(base or hf_inference_base()).rstrip('/')}/models/{hub_id}"

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
            if score is None:
                raise self.unexpected(self.url, f"bad label entry {quote(label, 80)}")
            scores[str(label.get("label", ""))] = score
        if len(scores) == 1:
            return next(iter(scores.values()))
        if len(scores) == 2:
            # Two-class heads: log-odds of the second label, matching the local backend.
            negative, positive = (scores[name] for name in sorted(scores))
            return positive - negative
        raise self.unexpected(self.url, f"{len(scores)} labels per pair; rerankers have 1 or 2")
