"""Several proxies on one shared score-cache tier (a real redis-server): a pair scored through one
replica is a cache hit through the other, concurrent identical requests are computed at most once
per replica, and a tier that dies mid-run costs only the cache (requests still succeed, one warning)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from redis_server import RedisServer, running_server

from conftest import closed_port
from loopback import Fault, LoopbackServer, Servers
from server_harness import MASTER_KEY, LiveServer, wait_until_ready

DOCS = ["washington is the capital", "a river in france", "tokyo", "paris is a city"]
WARNING = "shared score cache"


@pytest.fixture
def tier(tmp_path: Path) -> Iterator[RedisServer]:
    with running_server(tmp_path / "redis") as server:
        yield server


@pytest.fixture
def upstream(tiny_bert: Path) -> Iterator[LoopbackServer]:
    """A TEI endpoint that counts what it scores: the replicas' only way to compute a pair."""
    with Servers() as servers:
        yield servers.tei(tiny_bert)


def config(upstream: LoopbackServer, tier_url: str, cache_dir: Path, **general: Any) -> dict[str, Any]:
    return {
        "model_list": [{
            "model_name": "reranker",
            "litellm_params": {
                "model": "huggingface/tiny-org/tiny-bert-reranker", "api_base": upstream.url, "backend": "remote",
            },
        }],
        "general_settings": {
            "master_key": MASTER_KEY, "cache_dir": str(cache_dir), "cache_url": tier_url, "num_retries": 0,
            **general,
        },
    }  # fmt: skip


@pytest.fixture
def replicas(tier: RedisServer, upstream: LoopbackServer, tmp_path: Path) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Two apps, each with its own disk cache in front of the one tier."""
    a = LiveServer(config(upstream, tier.url, tmp_path / "a", cache_local=True)).start()
    b = LiveServer(config(upstream, tier.url, tmp_path / "b", cache_local=True)).start()
    yield a, b
    a.stop()
    b.stop()


def body(query: str) -> dict[str, Any]:
    return {"model": "reranker", "query": query, "documents": DOCS}


def scored(upstream: LoopbackServer) -> int:
    """Pairs the upstream has scored so far."""
    return sum(len(recorded.body["texts"]) for recorded in upstream.scoring())


def test_a_pair_scored_through_one_replica_is_a_hit_through_the_other(
    replicas: tuple[LiveServer, LiveServer], upstream: LoopbackServer
) -> None:
    a, b = replicas
    first = a.post("/v1/rerank", body("capital city"))
    assert (first.status_code, first.headers["x-dheera-backend"]) == (200, "tei")
    assert scored(upstream) == len(DOCS)
    second = b.post("/v1/rerank", body("capital city"))
    assert second.headers["x-dheera-backend"] == "cache"
    assert second.headers["x-dheera-cache-hits"] == str(len(DOCS))
    assert second.json()["results"] == first.json()["results"]
    assert scored(upstream) == len(DOCS)  # B computed nothing


def test_concurrent_identical_requests_compute_at_most_once_per_replica(
    replicas: tuple[LiveServer, LiveServer], upstream: LoopbackServer
) -> None:
    a, b = replicas
    upstream.always = Fault(delay=0.5)  # every request is still in flight when the others arrive
    with ThreadPoolExecutor(8) as threads:
        answers = list(threads.map(lambda server: server.post("/v1/rerank", body("a river")), [a, b] * 4))
    assert [answer.status_code for answer in answers] == [200] * 8
    assert len({str(answer.json()["results"]) for answer in answers}) == 1
    assert len({answer.json()["id"] for answer in answers}) == 8  # each caller its own answer
    assert len(upstream.scoring()) <= 2  # once per replica at most (once, when B's lookup comes after A's write)
    assert scored(upstream) <= 2 * len(DOCS)


def test_killing_the_tier_mid_run_costs_only_the_cache(
    replicas: tuple[LiveServer, LiveServer], tier: RedisServer, upstream: LoopbackServer,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    a, b = replicas
    assert a.post("/v1/rerank", body("before")).headers["x-dheera-backend"] == "tei"
    assert b.post("/v1/rerank", body("before")).headers["x-dheera-backend"] == "cache"
    tier.kill()
    with caplog.at_level(logging.WARNING, logger="dheera_local"):
        after = [server.post("/v1/rerank", body(f"after {i}")) for i in range(3) for server in (a, b)]
        again = b.post("/v1/rerank", body("before"))  # B's own disk still answers what it copied
    assert [(r.status_code, r.headers["x-dheera-backend"]) for r in after] == [(200, "tei")] * 6
    assert again.headers["x-dheera-backend"] == "cache"
    warnings = [record.getMessage() for record in caplog.records if WARNING in record.getMessage()]
    assert len(warnings) == 2, warnings  # one per replica, not one per request


def test_a_replica_whose_tier_is_unreachable_from_the_start_serves_uncached(
    upstream: LoopbackServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"redis://127.0.0.1:{closed_port()}/0"
    server = LiveServer(config(upstream, url, tmp_path / "a")).start()
    try:
        with caplog.at_level(logging.WARNING, logger="dheera_local"):
            answers = [server.post("/v1/rerank", body("q")) for _ in range(3)]
    finally:
        server.stop()
    assert [(r.status_code, r.headers["x-dheera-backend"]) for r in answers] == [(200, "tei")] * 3
    assert sum(WARNING in record.getMessage() for record in caplog.records) == 1


def test_two_proxy_processes_share_one_tier(
    tier: RedisServer, upstream: LoopbackServer, tmp_path: Path, hub_cache: Path
) -> None:
    """Real `python -m dheera_local` processes, configured by file and by DHEERA_CACHE_URL."""
    ports = [closed_port(), closed_port()]
    processes = []
    try:
        for name, port in zip("ab", ports, strict=True):
            data = config(upstream, tier.url, tmp_path / name)
            del data["general_settings"]["cache_url"]  # from the environment instead
            path = tmp_path / f"{name}.yaml"
            path.write_text(yaml.safe_dump(data), encoding="utf-8")
            env = {**os.environ, "DHEERA_CACHE_URL": tier.url, "HF_HUB_CACHE": str(hub_cache)}
            command = [sys.executable, "-m", "dheera_local", "--config", str(path), "--host", "127.0.0.1"]
            processes.append(subprocess.Popen(
                [*command, "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                text=True,
            ))  # fmt: skip
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for url, process in zip(urls, processes, strict=True):
            wait_until_ready(url, process)
        headers = {"Authorization": f"Bearer {MASTER_KEY}"}
        first = httpx.post(urls[0] + "/v1/rerank", json=body("q"), headers=headers, timeout=60)
        second = httpx.post(urls[1] + "/v1/rerank", json=body("q"), headers=headers, timeout=60)
        assert (first.headers["x-dheera-backend"], second.headers["x-dheera-backend"]) == ("tei", "cache")
        assert second.json()["results"] == first.json()["results"]
        assert len(upstream.scoring()) == 1
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(30)
