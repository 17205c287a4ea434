"""``GET /metrics``: Prometheus text (parsed here by prometheus-client's own parser), per route, model
and status; pairs per backend, cache hits, fallbacks; the batchers' queue and merged batch sizes."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from dheera_local.testing import install_in_hub_cache
from loopback import Servers
from server_harness import MASTER_KEY, LiveServer

DOCS = ["washington is the capital", "a river in paris", "tokyo"]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as ``{(name, sorted labels): value}``."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def broken_local(tiny_bert: Path, hub_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny-org/broken-local in the HF cache, its weights cut short: it cannot load, so requests fall back."""
    folder = tmp_path_factory.mktemp("broken") / "model"
    shutil.copytree(tiny_bert, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return install_in_hub_cache(folder, "tiny-org/broken-local", hub_cache, revision="7" * 40)


@pytest.fixture(scope="module")
def server(
    tiny_bert: Path, hub_cache: Path, broken_local: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    with Servers() as upstream, pytest.MonkeyPatch.context() as env:
        env.setenv("HF_HUB_CACHE", str(hub_cache))
        # Module fixtures are made before each test's isolated_env: the cache folder (kernel verdicts) too.
        env.setenv("DHEERA_CACHE_DIR", str(tmp_path_factory.mktemp("module-cache")))
        tei = upstream.tei(tiny_bert)
        falls_back = {"model": "huggingface/tiny-org/broken-local", "api_base": tei.url, "cache": False}
        data = {
            "model_list": [
                {"model_name": "local", "dheera_ai_params": {"model": str(tiny_bert), "dtype": "float32"}},
                {"model_name": "falls-back", "dheera_ai_params": falls_back},
            ],
            "general_settings": {"master_key": MASTER_KEY, "cache_dir": str(tmp_path_factory.mktemp("cache"))},
        }
        live = LiveServer(data).start()
        yield live
        live.stop()


def test_metrics_count_requests_pairs_cache_hits_and_batches(server: LiveServer) -> None:
    before = samples(httpx.get(server.url + "/metrics").text)
    for _ in range(2):  # the second is answered from the cache
        assert server.post("/rerank", {"model": "local", "query": "capital", "documents": DOCS}).status_code == 200
    assert server.post("/rerank", {"model": "nope", "query": "q", "documents": DOCS}).status_code == 404
    assert server.post("/rerank", {"model": "local", "query": "q", "documents": DOCS}, key="wrong").status_code == 401
    response = httpx.get(server.url + "/metrics")  # open by default, as TEI's and infinity's
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    after = samples(response.text)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("dheera_requests_total", route="/rerank", model="local", status="200") == 2
    assert grew("dheera_requests_total", route="/rerank", model="", status="404") == 1
    assert grew("dheera_requests_total", route="unmatched", model="", status="401") == 1
    assert grew("dheera_pairs_scored_total", model="local", backend="local") == len(DOCS)
    assert grew("dheera_cache_hits_total", model="local") == len(DOCS)
    assert grew("dheera_request_duration_seconds_count", route="/rerank", model="local") == 2
    batcher = next(labels for name, labels in after if name == "dheera_batch_pairs_count")
    assert dict(batcher)["model"].endswith(" on cpu")
    assert value(after, "dheera_batch_pairs_sum", **dict(batcher)) >= len(DOCS)
    assert value(after, "dheera_batch_pairs_bucket", le="+Inf", **dict(batcher)) >= 1
    assert value(after, "dheera_queue_pairs", **dict(batcher)) == 0


def test_fallbacks_are_counted_by_the_backend_that_failed(server: LiveServer) -> None:
    before = samples(httpx.get(server.url + "/metrics").text)
    answer = server.post("/rerank", {"model": "falls-back", "query": "capital", "documents": DOCS})
    assert answer.status_code == 200 and answer.headers["x-dheera-fallbacks"] == "local"
    after = samples(httpx.get(server.url + "/metrics").text)
    assert (
        value(after, "dheera_fallbacks_total", model="falls-back", backend="local")
        - value(before, "dheera_fallbacks_total", model="falls-back", backend="local")
        == 1
    )
    assert value(after, "dheera_pairs_scored_total", model="falls-back", backend="tei") >= len(DOCS)


@pytest.mark.parametrize(("settings", "anonymous", "with_key"), [
    ({"metrics_require_auth": True}, 401, 200),
    ({"metrics": False}, 404, 404),
])  # fmt: skip
def test_metrics_can_require_the_key_or_be_off(tiny_bert: Path, settings: dict, anonymous: int, with_key: int) -> None:
    data = {
        "model_list": [{"model_name": "m", "dheera_ai_params": {"model": str(tiny_bert)}}],
        "general_settings": {"master_key": MASTER_KEY, "cache": False, **settings},
    }
    live = LiveServer(data).start()
    try:
        assert httpx.get(live.url + "/metrics").status_code == anonymous
        assert live.get("/metrics").status_code == with_key
    finally:
        live.stop()
