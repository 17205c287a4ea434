"""``GET /metrics``: Prometheus text from prometheus-client, one registry per app.

==============================================  =========================================================
metric                                          what
==============================================  =========================================================
dheera_requests_total{route,model,status}       requests answered (429s and every error included)
dheera_request_duration_seconds{route,model}    time to answer (histogram)
dheera_pairs_scored_total{model,backend}        (query, document) pairs a backend scored (not the cached)
dheera_tokens_scored_total{model,backend}       tokens those pairs held (``meta.tokens``; unknown: not counted)
dheera_cache_hits_total{model}                  pairs answered from the score cache
dheera_fallbacks_total{model,backend}           backends that failed before another served
dheera_queue_pairs{model}                       pairs waiting for a local model's micro-batcher
dheera_running_pairs{model}                     pairs in the batcher's current forward passes
dheera_batch_pairs / dheera_batch_requests      histograms: pairs and requests merged per batch step
dheera_batch_rejected_total{model}              requests the full queue refused (answered 429)
dheera_key_requests_total{key,status}           requests per API key name (general_settings.api_keys)
dheera_key_pairs_scored_total{key}              pairs scored for each key
dheera_key_tokens_scored_total{key}             tokens scored for each key (what its ``tpm`` counts)
dheera_key_cache_hits_total{key}                pairs answered from the cache for each key
==============================================  =========================================================

``model`` is the configured ``model_name`` (the batchers': ``hub id on device``, a model folder by its name,
never its path); ``route`` the route's template (``/models/{model_name}/rerank``), so label values stay few
whatever clients send.

Like TEI's and infinity's, the endpoint is open by default: scrapers rarely carry keys, and it holds
counts and configured names, never a body, a query or a key. ``general_settings.metrics_require_auth:
true`` puts it behind the master key; ``metrics: false`` removes it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from .micro_batching import STEP_PAIRS_BUCKETS, STEP_REQUESTS_BUCKETS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """The app's metrics: request counters updated per answer, batcher figures read at scrape time."""

    def __init__(self, batcher_stats: Callable[[], dict[str, dict[str, Any]]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "dheera_requests", "Requests answered.", ["route", "model", "status"], registry=self.registry
        )
        self.duration = Histogram(
            "dheera_request_duration_seconds", "Time to answer a request.", ["route", "model"], registry=self.registry
        )
        self.pairs = Counter(
            "dheera_pairs_scored", "Pairs scored by a backend (cache hits excluded).", ["model", "backend"],
            registry=self.registry,
        )  # fmt: skip
        self.tokens = Counter(
            "dheera_tokens_scored", "Tokens of the pairs a backend scored (when it said).", ["model", "backend"],
            registry=self.registry,
        )  # fmt: skip
        self.cache_hits = Counter(
            "dheera_cache_hits", "Pairs answered from the cache.", ["model"], registry=self.registry
        )
        self.fallbacks = Counter(
            "dheera_fallbacks", "Backends that failed before another served.", ["model", "backend"],
            registry=self.registry,
        )  # fmt: skip
        self.key_requests = Counter(
            "dheera_key_requests", "Requests per API key name.", ["key", "status"], registry=self.registry
        )
        self.key_pairs = Counter(
            "dheera_key_pairs_scored", "Pairs scored per API key name.", ["key"], registry=self.registry
        )
        self.key_tokens = Counter(
            "dheera_key_tokens_scored", "Tokens scored per API key name.", ["key"], registry=self.registry
        )
        self.key_cache_hits = Counter(
            "dheera_key_cache_hits", "Pairs answered from the cache per API key name.", ["key"], registry=self.registry
        )
        self.registry.register(_BatcherCollector(batcher_stats))

    def observe(self, route: str, status: int, seconds: float, fields: dict[str, Any]) -> None:
        """Count one answered request; ``fields`` are what the route recorded (model, backend, ...)."""
        model = str(fields.get("model") or "")
        self.requests.labels(route, model, str(status)).inc()
        self.duration.labels(route, model).observe(seconds)
        if fields.get("scored"):
            self.pairs.labels(model, str(fields.get("backend"))).inc(fields["scored"])
        if fields.get("tokens"):
            self.tokens.labels(model, str(fields.get("backend"))).inc(fields["tokens"])
        if fields.get("cache_hits"):
            self.cache_hits.labels(model).inc(fields["cache_hits"])
        for backend in fields.get("fallbacks") or ():
            self.fallbacks.labels(model, backend).inc()
        key = fields.get("key")
        if key:  # general_settings.api_keys: the key's name, never the key
            self.key_requests.labels(key, str(status)).inc()
            self.key_pairs.labels(key).inc(fields.get("scored") or 0)
            self.key_tokens.labels(key).inc(fields.get("tokens") or 0)
            self.key_cache_hits.labels(key).inc(fields.get("cache_hits") or 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _BatcherCollector:
    """Reads the micro-batchers' counters when scraped (they keep their own, lock-protected)."""

    def __init__(self, stats: Callable[[], dict[str, dict[str, Any]]]) -> None:
        self.stats = stats

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        queued = GaugeMetricFamily("dheera_queue_pairs", "Pairs waiting for a local model.", labels=["model"])
        running = GaugeMetricFamily("dheera_running_pairs", "Pairs in the current forward passes.", labels=["model"])
        refused = "Requests refused by a full queue (429)."
        rejected = CounterMetricFamily("dheera_batch_rejected", refused, labels=["model"])
        pairs = HistogramMetricFamily("dheera_batch_pairs", "Pairs merged per batch step.", labels=["model"])
        requests = HistogramMetricFamily("dheera_batch_requests", "Requests merged per batch step.", labels=["model"])
        for model, stats in self.stats().items():
            queued.add_metric([model], stats["queued_pairs"])
            running.add_metric([model], stats["running_pairs"])
            rejected.add_metric([model], stats["rejected"])
            pairs.add_metric([model], _buckets(STEP_PAIRS_BUCKETS, stats["steps_by_pairs"]), stats["pairs"])
            merged = _buckets(STEP_REQUESTS_BUCKETS, stats["steps_by_requests"])
            requests.add_metric([model], merged, stats["stepped_requests"])
        return [queued, running, rejected, pairs, requests]


def _buckets(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, int]]:
    """Cumulative ``(le, count)`` pairs, as Prometheus histograms expose them."""
    total, out = 0, []
    for bound, count in zip(bounds, counts, strict=True):
        total += count
        out.append(("+Inf" if math.isinf(bound) else str(bound), total))
    return out
