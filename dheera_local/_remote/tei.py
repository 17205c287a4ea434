"""A TEI-compatible ``/rerank`` endpoint (text-embeddings-inference, HF Inference Endpoints).

``POST {api_base}/rerank`` with ``{"query", "texts", "truncate": true, "raw_scores": true}``
answers a bare array ``[{"index", "score"}]``. Requests hold at most the endpoint's
``max_client_batch_size`` texts (read once from ``GET {api_base}/info``; 32 when it is absent)
and at most 2 MB of JSON. TEI has no ``top_n``: the orchestrator applies it.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from typing import Any

from pydantic import SecretStr

from .._errors import RemoteBackendError
from .._options import normalize_api_base
from .backend import RemoteBackend, group_by_limits, scores_in_order
from .http import Call, HttpClients, RetryPolicy, asend, send

DEFAULT_MAX_CLIENT_BATCH_SIZE = 32
INFO_TIMEOUT = 10.0


def tei_base(api_base: str) -> str:
    """``http://h:8080/``, ``http://h:8080/rerank`` -> ``http://h:8080`` (no double /rerank)."""
    base = normalize_api_base(api_base)
    return base[: -len("/rerank")] if base.endswith("/rerank") else base


class EndpointLimits:
    """``max_client_batch_size`` per endpoint, read once per process."""

    def __init__(self) -> None:
        self._known: dict[str, int] = {}
        self._lock = threading.Lock()

    def get(self, base: str) -> int | None:
        with self._lock:
            return self._known.get(base)

    def remember(self, base: str, info: Any) -> int:
        size = info.get("max_client_batch_size") if isinstance(info, dict) else None
        limit = size if isinstance(size, int) and size > 0 else DEFAULT_MAX_CLIENT_BATCH_SIZE
        with self._lock:
            self._known[base] = limit
        return limit


class TEIBackend(RemoteBackend):
    """Scores through a TEI-compatible endpoint."""

    name = "tei"
    label = "TEI endpoint"

    def __init__(
        self,
        api_base: str,
        limits: EndpointLimits,
        clients: HttpClients,
        policy: RetryPolicy,
        token: SecretStr | None = None,
        timeout: float | None = None,
    ) -> None:
        super().__init__(clients, policy, token, timeout)
        self.base = tei_base(api_base)
        self.limits = limits

    def describe(self) -> dict[str, str]:
        return {"endpoint": self.base + "/rerank"}

    def _info_call(self) -> Call:
        timeout = min(INFO_TIMEOUT, self.timeout or self.policy.read_timeout)
        return Call("GET", self.base + "/info", self.label, self.name, token=self.token, timeout=timeout)

    def _info_policy(self) -> RetryPolicy:
        # One try: /info is optional, and the /rerank call that follows has the retries.
        return dataclasses.replace(self.policy, max_attempts=1)

    def prepare(self) -> None:
        if self.limits.get(self.base) is None:
            try:
                self._remember_info(send(self.clients, self._info_call(), self._info_policy()))
            except RemoteBackendError as exc:
                self._remember_info(None, exc)

    async def aprepare(self) -> None:
        if self.limits.get(self.base) is None:
            try:
                self._remember_info(await asend(self.clients, self._info_call(), self._info_policy()))
            except RemoteBackendError as exc:
                self._remember_info(None, exc)

    def _remember_info(self, info: Any, error: RemoteBackendError | None = None) -> None:
        """The one rule for /info's outcome, whichever twin asked it."""
        if error is not None and error.status is None:
            return  # unreachable for now: read /info on the next call, not never
        # An answer with no /info (not every TEI-compatible server has it): the default limits apply.
        self.limits.remember(self.base, info if error is None else None)

    def split(self, query: str, texts: list[str]) -> list[list[int]]:
        return group_by_limits(query, texts, self.limits.get(self.base) or DEFAULT_MAX_CLIENT_BATCH_SIZE)

    def call_for(self, query: str, texts: list[str]) -> Call:
        body = {"query": query, "texts": texts, "truncate": True, "raw_scores": True}
        return Call("POST", self.base + "/rerank", self.label, self.name, body, self.token, self.timeout)

    def parse(self, body: Any, count: int) -> list[float]:
        url = self.base + "/rerank"
        if not isinstance(body, list):
            raise self.unexpected(url, f"expected a JSON array of {{index, score}}, got {type(body).__name__}")
        refuse = functools.partial(self.unexpected, url)
        return scores_in_order(body, count, "score", refuse, kind="rank", of="texts")
