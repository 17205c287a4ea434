"""LiteLLM proxy configs for rerank start unchanged and mean what they mean in LiteLLM: ``cohere/NAME``
without ``api_base`` calls Cohere's API, a repeated ``model_name`` is a group of deployments (shuffled by
weight, rpm honoured, a failed one retried on the next), ``router_settings.fallbacks``, and the keys that
mean nothing here are accepted with one warning naming them. Upstreams are loopback servers."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dheera_local import ConfigError
from dheera_local.server import parse_config
from loopback import Fault, LoopbackServer, Servers
from server_harness import MASTER_KEY, LiveServer

DOCS = ["washington is the capital", "a river in france", "tokyo"]
COHERE_KEY = "co-test-key-123456"

# LiteLLM's documented proxy config for Cohere rerank (docs/rerank.md), as written.
LITELLM_COHERE = {
    "model_list": [{
        "model_name": "rerank-english-v3.0",
        "litellm_params": {"model": "cohere/rerank-english-v3.0", "api_key": "os.environ/COHERE_API_KEY"},
    }],
}  # fmt: skip


def tei_deployment(name: str, upstream: LoopbackServer, **params: Any) -> dict[str, Any]:
    return {
        "model_name": name,
        "litellm_params": {
            "model": "huggingface/tiny-org/tiny-bert-reranker", "api_base": upstream.url, "backend": "remote",
            **params,
        },
    }  # fmt: skip


@pytest.fixture
def live() -> Iterator[list[LiveServer]]:
    started: list[LiveServer] = []
    yield started
    for server in started:
        server.stop()


def start(live: list[LiveServer], data: dict[str, Any]) -> LiveServer:
    general = {"master_key": MASTER_KEY, "cache": False, "num_retries": 0, **data.get("general_settings", {})}
    server = LiveServer({**data, "general_settings": general}).start()
    live.append(server)
    return server


def rerank(server: LiveServer, model: str, query: str = "capital") -> Any:
    return server.post("/v1/rerank", {"model": model, "query": query, "documents": DOCS})


@pytest.mark.parametrize("variable", ["CO_API_KEY", "COHERE_API_KEY"])
def test_cohere_without_api_base_calls_cohere_with_its_key(
    servers: Servers, tiny_bert: Path, live: list[LiveServer], monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    cohere = servers.cohere(tiny_bert, token=COHERE_KEY)
    monkeypatch.setenv("COHERE_API_BASE", cohere.url)  # where "Cohere's API" is, as LiteLLM reads it
    monkeypatch.setenv(variable, COHERE_KEY)
    entry = {"model_name": "rerank-english-v3.0", "litellm_params": {"model": "cohere/rerank-english-v3.0"}}
    server = start(live, {"model_list": [entry]})
    answer = rerank(server, "rerank-english-v3.0")
    assert (answer.status_code, answer.headers["x-dheera-backend"]) == (200, "cohere")
    assert [r.body["model"] for r in cohere.scoring()] == ["rerank-english-v3.0"]
    assert cohere.scoring()[0].headers["authorization"] == f"Bearer {COHERE_KEY}"


def test_litellms_documented_cohere_config_starts_unchanged(
    servers: Servers, tiny_bert: Path, live: list[LiveServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    cohere = servers.cohere(tiny_bert, token=COHERE_KEY)
    monkeypatch.setenv("COHERE_API_BASE", cohere.url)
    monkeypatch.setenv("COHERE_API_KEY", COHERE_KEY)
    answer = rerank(start(live, LITELLM_COHERE), "rerank-english-v3.0")
    assert answer.status_code == 200 and len(answer.json()["results"]) == len(DOCS)


def test_the_default_cohere_api_is_cohere_com() -> None:
    from dheera_local._settings import Settings

    assert Settings.from_env({}).cohere_api_base == "https://api.cohere.com"


def test_a_repeated_model_name_spreads_requests_by_weight(
    servers: Servers, tiny_bert: Path, live: list[LiveServer]
) -> None:
    light, heavy = servers.tei(tiny_bert), servers.tei(tiny_bert)
    server = start(live, {"model_list": [
        tei_deployment("reranker", light, weight=1), tei_deployment("reranker", heavy, weight=9),
    ]})  # fmt: skip
    answers = [rerank(server, "reranker", f"query {i}") for i in range(40)]
    assert [a.status_code for a in answers] == [200] * 40
    assert len(light.scoring()) + len(heavy.scoring()) == 40
    assert len(heavy.scoring()) > len(light.scoring())  # 9:1 expected; a tie or worse has P < 1e-6


def test_a_failed_deployment_is_retried_on_the_next(
    servers: Servers, tiny_bert: Path, live: list[LiveServer], caplog: pytest.LogCaptureFixture
) -> None:
    broken, healthy = servers.tei(tiny_bert), servers.tei(tiny_bert)
    broken.always = Fault(500, body={"error": "exploded"})
    server = start(live, {"model_list": [tei_deployment("reranker", broken), tei_deployment("reranker", healthy)]})
    with caplog.at_level(logging.WARNING, logger="dheera_local.server"):
        answers = [rerank(server, "reranker", f"query {i}") for i in range(12)]
    assert [(a.status_code, a.headers["x-dheera-backend"]) for a in answers] == [(200, "tei")] * 12
    assert len(healthy.scoring()) == 12
    assert len(broken.scoring()) > 0  # the shuffle sent some there first (P(none in 12) = 1/4096)
    assert "trying the next" in caplog.text


def test_rpm_sends_the_rest_to_a_deployment_with_room(
    servers: Servers, tiny_bert: Path, live: list[LiveServer]
) -> None:
    limited, spare = servers.tei(tiny_bert), servers.tei(tiny_bert)
    server = start(live, {"model_list": [
        tei_deployment("reranker", limited, weight=1_000_000, rpm=2), tei_deployment("reranker", spare, weight=1),
    ]})  # fmt: skip
    answers = [rerank(server, "reranker", f"query {i}") for i in range(6)]
    assert [a.status_code for a in answers] == [200] * 6
    assert (len(limited.scoring()), len(spare.scoring())) == (2, 4)


def test_router_fallbacks_serve_a_group_whose_deployments_all_failed(
    servers: Servers, tiny_bert: Path, live: list[LiveServer]
) -> None:
    broken, backup = servers.tei(tiny_bert), servers.tei(tiny_bert)
    broken.always = Fault(503, body={"error": "down"})
    server = start(live, {
        "model_list": [tei_deployment("primary", broken), tei_deployment("backup", backup)],
        "router_settings": {"fallbacks": [{"primary": ["backup"]}], "num_retries": 0, "timeout": 5},
    })  # fmt: skip
    answer = rerank(server, "primary")
    assert answer.status_code == 200 and len(backup.scoring()) == 1
    assert server.state.registry.models["primary"].options.timeout == 5  # router_settings.timeout


def test_a_group_whose_deployments_all_failed_answers_their_error(
    servers: Servers, tiny_bert: Path, live: list[LiveServer]
) -> None:
    first, second = servers.tei(tiny_bert), servers.tei(tiny_bert)
    first.always = second.always = Fault(500, body={"error": "exploded"})
    server = start(live, {"model_list": [tei_deployment("reranker", first), tei_deployment("reranker", second)]})
    answer = rerank(server, "reranker")
    assert answer.status_code == 502 and answer.json()["error"]["type"]
    assert (len(first.scoring()), len(second.scoring())) == (1, 1)


def test_litellm_only_keys_are_accepted_with_one_warning_naming_them(caplog: pytest.LogCaptureFixture) -> None:
    data = {
        "model_list": [{
            "model_name": "m",
            "litellm_params": {"model": "org/name", "tags": ["free"], "rpm": 10, "weight": 2},
        }],
        "general_settings": {"allowed_routes": ["/rerank"], "master_key": "sk-1234"},
        "litellm_settings": {"drop_params": True, "set_verbose": False, "num_retries": 2},
        "router_settings": {"routing_strategy": "usage-based-routing-v2", "redis_host": "x", "timeout": 30},
    }  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="dheera_local.server"):
        config = parse_config(data)
    warnings = [r.getMessage() for r in caplog.records if "LiteLLM-only" in r.getMessage()]
    assert len(warnings) == 1
    for name in ("tags", "allowed_routes", "drop_params", "set_verbose", "redis_host", "usage-based-routing-v2"):
        assert name in warnings[0]
    assert (config.router_settings.num_retries, config.router_settings.timeout) == (2, 30)
    assert (config.model_list[0].routing.rpm, config.model_list[0].routing.weight) == (10, 2)


def test_a_fallback_to_an_unknown_group_stops_startup() -> None:
    data = {"model_list": [{"model_name": "m", "litellm_params": {"model": "org/name"}}],
            "router_settings": {"fallbacks": [{"m": ["nowhere"]}]}}  # fmt: skip
    with pytest.raises(ConfigError, match=r"router_settings.fallbacks\[0\]: 'nowhere' is not a model_name"):
        parse_config(data)


def test_litellms_redis_cache_settings_name_the_shared_tier(caplog: pytest.LogCaptureFixture) -> None:
    data = {
        "model_list": [{"model_name": "m", "litellm_params": {"model": "org/name"}}],
        "litellm_settings": {
            "cache": True,
            "cache_params": {"type": "redis", "host": "cache.internal", "port": 6380, "password": "pw-s3cret/x",
                             "ttl": 600, "namespace": "litellm.caching"},
        },
    }  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="dheera_local.server"):
        config = parse_config(data)
    general = config.general_settings
    assert general.cache_url is not None
    assert general.cache_url.get_secret_value() == "redis://:pw-s3cret%2Fx@cache.internal:6380/0"
    assert general.cache_ttl == 600
    assert "litellm_settings.cache_params.namespace" in caplog.text and "pw-s3cret" not in caplog.text
    assert "pw-s3cret" not in repr(config)


def test_litellms_in_memory_cache_is_accepted_and_named() -> None:
    data = {"model_list": [{"model_name": "m", "litellm_params": {"model": "org/name"}}],
            "litellm_settings": {"cache": True}}  # fmt: skip
    assert parse_config(data).general_settings.cache_url is None
