"""What every remote backend shares: split a request, send the parts concurrently, merge.

A provider subclass owns its payload (:meth:`RemoteBackend.call_for`), its parsing
(:meth:`RemoteBackend.parse`) and its limits (:meth:`RemoteBackend.split`); this class runs the
parts with bounded concurrency, halves a part the server calls too large, and puts the scores
back in input order.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import SecretStr

from .._backend import Logits, PairsByQuery, total_tokens
from .._errors import RemoteBackendError
from .._secrets import quote
from .http import Call, HttpClients, RetryPolicy, asend, gather_bounded, run_concurrently, send

MAX_BODY_BYTES = 2_000_000


class RemoteBackend(PairsByQuery):
    """Base class of the HTTP backends. Subclasses set ``name`` and ``label`` and the three hooks."""

    name = "remote"
    label = "endpoint"
    concurrency = 8

    def __init__(
        self, clients: HttpClients, policy: RetryPolicy, token: SecretStr | None, timeout: float | None
    ) -> None:
        self.clients = clients
        self.policy = policy
        self._token = token
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"

    # Provider hooks -------------------------------------------------------------------------

    def split(self, query: str, texts: list[str]) -> list[list[int]]:
        """Index groups, one request each."""
        raise NotImplementedError

    def call_for(self, query: str, texts: list[str]) -> Call:
        """The HTTP request scoring ``texts`` against ``query``."""
        raise NotImplementedError

    def parse(self, body: Any, count: int) -> list[float]:
        """Raw logits, in order, from a decoded response body for ``count`` texts."""
        raise NotImplementedError

    def usage(self, body: Any) -> int | None:
        """The input tokens the endpoint says it scored, from a decoded answer (None: it does not say)."""
        return None

    def describe(self) -> dict[str, str]:
        raise NotImplementedError

    def numerics(self) -> str:
        """The endpoint (and the model it is asked for): a remote's scores are its own."""
        return f"{self.name}:" + "#".join(self.describe().values())

    def prepare(self) -> None:
        """Blocking set-up before the first request (e.g. read the endpoint's limits)."""

    async def aprepare(self) -> None:
        """The async twin of :meth:`prepare`."""

    # Shared machinery ---------------------------------------------------------------------

    @property
    def token(self) -> str | None:
        return self._token.get_secret_value() if self._token is not None else None

    def credential(self) -> str | None:
        """The key or token this backend sends (None: none), whose namespace its cached scores live in
        (:func:`dheera_local._cache.store.credential_namespace`): a remote backend is one that has this method."""
        return self.token

    def score(self, query: str, texts: list[str]) -> list[float]:
        if not texts:
            return Logits(tokens=0)
        self.prepare()
        groups = self.split(query, texts)
        parts = run_concurrently(
            [functools.partial(self._score_part, query, [texts[i] for i in group]) for group in groups],
            self.concurrency,
        )
        return _merge(len(texts), groups, parts)

    async def ascore(self, query: str, texts: list[str]) -> list[float]:
        if not texts:
            return Logits(tokens=0)
        await self.aprepare()
        groups = self.split(query, texts)
        parts = await gather_bounded(
            [self._ascore_part(query, [texts[i] for i in group]) for group in groups], self.concurrency
        )
        return _merge(len(texts), groups, parts)

    def _score_part(self, query: str, texts: list[str]) -> Logits:
        try:
            return self._read(send(self.clients, self.call_for(query, texts), self.policy), len(texts))
        except RemoteBackendError as exc:
            if not self._too_large(exc, texts):
                raise
            half = len(texts) // 2
            return _joined(self._score_part(query, texts[:half]), self._score_part(query, texts[half:]))

    async def _ascore_part(self, query: str, texts: list[str]) -> Logits:
        try:
            return self._read(await asend(self.clients, self.call_for(query, texts), self.policy), len(texts))
        except RemoteBackendError as exc:
            if not self._too_large(exc, texts):
                raise
            half = len(texts) // 2
            first = await self._ascore_part(query, texts[:half])
            return _joined(first, await self._ascore_part(query, texts[half:]))

    def _read(self, body: Any, count: int) -> Logits:
        return Logits(self.parse(body, count), tokens=self.usage(body))

    def _too_large(self, exc: RemoteBackendError, texts: list[str]) -> bool:
        # TEI answers 413 (<= 1.8) or 422 (>= 1.9) when a batch exceeds its limits.
        message = str(exc).lower()
        return (
            len(texts) > 1
            and exc.status in (413, 422)
            and ("batch" in message or "length limit" in message or "too large" in message)
        )

    def unexpected(self, url: str, problem: str) -> RemoteBackendError:
        """The error for a well-formed JSON body of the wrong shape (the endpoint answered, badly: 502)."""
        return RemoteBackendError(
            f"{self.label} {url} answered with an unexpected body: {problem}", backend=self.name, url=url, status=200
        )


def group_by_limits(
    query: str,
    texts: Sequence[str],
    max_texts: int,
    max_bytes: int = MAX_BODY_BYTES,
    query_per_text: bool = False,
) -> list[list[int]]:
    """Consecutive index groups of at most ``max_texts`` texts and about ``max_bytes`` of JSON.

    ``query_per_text``: the payload repeats the query beside every text (HF hosted's pairs).
    """
    query_bytes = len(json.dumps(query))
    overhead = query_bytes + 200
    per_text = query_bytes + 32 if query_per_text else 2
    groups: list[list[int]] = []
    current: list[int] = []
    size = overhead
    for index, text in enumerate(texts):
        cost = len(json.dumps(text)) + per_text
        if current and (len(current) >= max_texts or size + cost > max_bytes):
            groups.append(current)
            current, size = [], overhead
        current.append(index)
        size += cost
    if current:
        groups.append(current)
    return groups


def _merge(count: int, groups: list[list[int]], parts: list[Logits]) -> Logits:
    out = [math.nan] * count
    for group, scores in zip(groups, parts, strict=True):
        for index, score in zip(group, scores, strict=True):
            out[index] = score
    return Logits(out, tokens=total_tokens(parts))


def _joined(first: Logits, second: Logits) -> Logits:
    return Logits([*first, *second], tokens=total_tokens([first, second]))


def usage_count(value: Any) -> int | None:
    """A token count from an answer's usage field: a non-negative whole number (``12`` or ``12.0``), else None.
    Usage only informs: a missing or odd one never fails the scores it came with."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return None
    return int(value) if value >= 0 else None


def as_float(value: Any) -> float | None:
    """A finite float from a JSON number, else None (JSON integers have no size limit: 1e400 overflows)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def scores_in_order(
    entries: list[Any], count: int, score_field: str, refuse: Callable[[str], Exception], *, kind: str, of: str
) -> list[float]:
    """The scores of ``[{"index", score_field}]`` entries in input order; ``refuse(problem)`` unless every
    index 0..count-1 appears exactly once (an integer, not ``true``) with a finite score. ``kind`` names an
    entry ("rank", "result") and ``of`` what was sent ("texts", "documents") in the messages."""
    scores: dict[int, float] = {}
    for item in entries:
        index = item.get("index") if isinstance(item, dict) else None
        score = as_float(item.get(score_field)) if isinstance(item, dict) else None
        if type(index) is not int or not 0 <= index < count or score is None:
            raise refuse(f"bad {kind} entry {quote(item, 80)}")
        if index in scores:
            raise refuse(f"index {index} appears twice")
        scores[index] = score
    if len(scores) != count:
        raise refuse(f"{len(scores)} {kind}s for {count} {of}")
    return [scores[i] for i in range(count)]


def probability_to_logit(score: float) -> float:
    """The logit whose sigmoid is ``score``; a score outside [0, 1] is already a logit."""
    if not 0.0 <= score <= 1.0:
        return score
    clamped = min(max(score, 1e-15), 1.0 - 1e-15)
    return math.log(clamped / (1.0 - clamped))
