"""Several API keys: a name for metrics and logs, the models each may call, a requests-a-minute limit
(429 + Retry-After); keys compared in constant time, never shown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dheera_local import ConfigError
from dheera_local.server import parse_config
from dheera_local.server.keys import KeyPolicy, key_ring
from loopback import LoopbackServer, Servers
from server_harness import MASTER_KEY, LiveServer

TEAM_A = "sk-team-a-0123456789"
OTHER = "sk-other-9876543210"
DOCS = ["washington is the capital", "a river in france", "tokyo"]


def deployment(name: str, upstream: LoopbackServer) -> dict[str, object]:
    params = {"model": "huggingface/tiny-org/tiny-bert-reranker", "api_base": upstream.url, "backend": "remote"}
    return {"model_name": name, "litellm_params": params}


@pytest.fixture
def server(servers: Servers, tiny_bert: Path, tmp_path: Path) -> Iterator[LiveServer]:
    tei = servers.tei(tiny_bert)
    live = LiveServer({
        "model_list": [deployment("a", tei), deployment("b", tei)],
        "general_settings": {
            "master_key": MASTER_KEY, "cache_dir": str(tmp_path / "cache"), "num_retries": 0,
            "api_keys": [{"key": TEAM_A, "name": "team-a", "models": ["a"], "rpm": 3}, {"key": OTHER}],
        },
    }).start()  # fmt: skip
    yield live
    live.stop()


def rerank(server: LiveServer, key: str, model: str, query: str = "capital"):  # noqa: ANN201
    return server.post("/v1/rerank", {"model": model, "query": query, "documents": DOCS}, key=key)


def test_each_key_calls_what_it_may(server: LiveServer) -> None:
    assert rerank(server, TEAM_A, "a").status_code == 200
    refused = rerank(server, TEAM_A, "b")
    assert refused.status_code == 401 and "'team-a' may not call model 'b'" in refused.json()["error"]["message"]
    assert rerank(server, OTHER, "b").status_code == 200
    assert rerank(server, MASTER_KEY, "b").status_code == 200
    assert rerank(server, "sk-nobody-000000000", "a").status_code == 401


def test_rpm_answers_429_with_retry_after(server: LiveServer) -> None:
    answers = [rerank(server, TEAM_A, "a", f"q{i}") for i in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert 1 <= int(answers[-1].headers["retry-after"]) <= 60
    assert rerank(server, OTHER, "a").status_code == 200  # another key's budget is its own


def test_metrics_count_per_key_name_never_the_key(server: LiveServer) -> None:
    rerank(server, TEAM_A, "a")
    rerank(server, TEAM_A, "a")  # all cached
    rerank(server, OTHER, "a", "other query")
    text = server.get("/metrics").text
    assert 'dheera_key_requests_total{key="team-a",status="200"} 2.0' in text
    assert 'dheera_key_pairs_scored_total{key="team-a"} 3.0' in text
    assert 'dheera_key_cache_hits_total{key="team-a"} 3.0' in text
    assert 'dheera_key_requests_total{key="key-2",status="200"} 1.0' in text
    assert TEAM_A not in text and OTHER not in text and MASTER_KEY not in text


def test_a_short_key_stops_startup() -> None:
    data = {"model_list": [{"model_name": "m", "litellm_params": {"model": "org/name"}}],
            "general_settings": {"api_keys": [{"key": "short"}]}}  # fmt: skip
    with pytest.raises(ConfigError, match=r"general_settings.api_keys\[0\].key"):
        parse_config(data)


def test_the_ring_finds_each_key_and_shows_none() -> None:
    ring = key_ring(MASTER_KEY, [(TEAM_A, "team-a", ["a"], None), (OTHER, None, None, 5)])
    assert ring is not None
    assert [ring.identify(k).name for k in (MASTER_KEY, TEAM_A, OTHER)] == ["master", "team-a", "key-2"]
    assert ring.identify("sk-wrong") is None
    assert TEAM_A not in repr(ring) and MASTER_KEY not in repr(ring)
    assert key_ring(None, []) is None
    assert KeyPolicy("x").models is None
