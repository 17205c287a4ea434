"""The shared score-cache tier against a real redis-server: keys, values, TTL, two levels, and the
degrade path (a tier that is down, slow or returns garbage never fails a rerank)."""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_server import RedisServer, skip_without_server

import dheera_local
from conftest import TINY_BERT_ID, closed_port
from dheera_local import ConfigError, RedisCacheStore, Reranker, Settings
from dheera_local._cache.shared_tier import KEY_PREFIX, redacted
from dheera_local._cache.store import CacheStore, KeyMaker

QUERY = "capital city"
DOCS = ["washington is the capital", "a river in france", "tokyo"]


@pytest.fixture(scope="module")
def redis_tier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server on a loopback port for the module; each test flushes it first."""
    skip_without_server()
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.kill()


@pytest.fixture
def tier(redis_tier: RedisServer) -> RedisServer:
    redis_tier.client().flushall()
    return redis_tier


def _reranker(url: str, folder: Path, **options: object) -> Reranker:
    """A Reranker on the tier with its own (empty) disk store, as another replica would have."""
    settings = Settings.from_env({"DHEERA_CACHE_DIR": str(folder), "HF_HUB_CACHE": str(_hub())})
    return Reranker(settings=settings, cache=RedisCacheStore(url, local_store=CacheStore(), **options))


def _hub() -> Path:
    return Path(os.environ["HF_HUB_CACHE"])


def _scores(response: dheera_local.RerankResponse) -> list[tuple[int, float]]:
    return [(r.index, r.relevance_score) for r in response.results]


def test_a_pair_scored_by_one_reranker_is_a_hit_for_another(tier: RedisServer, tmp_path: Path) -> None:
    first = _reranker(tier.url, tmp_path / "a").rerank(TINY_BERT_ID, QUERY, DOCS)
    second = _reranker(tier.url, tmp_path / "b").rerank(TINY_BERT_ID, QUERY, DOCS)
    assert (first.cache_hits, first.backend) == (0, "local")
    assert (second.cache_hits, second.backend) == (3, "cache")
    assert _scores(second) == _scores(first)  # 8-byte doubles: bit-identical
    assert not (tmp_path / "b").exists()  # one level: the tier alone, no disk cache made


def test_keys_and_values_are_the_disk_caches(tier: RedisServer, tmp_path: Path) -> None:
    reranker = _reranker(tier.url, tmp_path, ttl=3600)
    reranker.rerank(TINY_BERT_ID, QUERY, DOCS, raw_scores=True)
    make = KeyMaker(reranker.plan(TINY_BERT_ID).cache_identity(0))
    client = tier.client()
    stored = sorted(key.decode() for key in client.keys("*"))
    assert stored == sorted(KEY_PREFIX + make(QUERY, doc) for doc in DOCS)
    logits = {r.index: r.relevance_score for r in reranker.rerank(TINY_BERT_ID, QUERY, DOCS, raw_scores=True).results}
    for index, doc in enumerate(DOCS):
        value = client.get(KEY_PREFIX + make(QUERY, doc))
        assert len(value) == 8 and struct.unpack(">d", value)[0] == logits[index]
        assert 0 < client.ttl(KEY_PREFIX + make(QUERY, doc)) <= 3600


def test_no_ttl_means_entries_stay_until_evicted(tier: RedisServer, tmp_path: Path) -> None:
    _reranker(tier.url, tmp_path).rerank(TINY_BERT_ID, QUERY, DOCS[:1])
    client = tier.client()
    assert [client.ttl(key) for key in client.keys("*")] == [-1]


def test_a_value_of_another_length_is_a_miss_and_is_rewritten(tier: RedisServer, tmp_path: Path) -> None:
    reranker = _reranker(tier.url, tmp_path)
    clean = reranker.rerank(TINY_BERT_ID, QUERY, DOCS)
    client = tier.client()
    planted = client.keys("*")[0]
    client.set(planted, b"\x80\x04garbage-or-a-pickle")
    again = reranker.rerank(TINY_BERT_ID, QUERY, DOCS)
    assert again.cache_hits == 2 and _scores(again) == _scores(clean)
    assert len(client.get(planted)) == 8  # the scored value replaced the planted one


def test_two_levels_copy_tier_hits_to_the_replicas_disk(tier: RedisServer, tmp_path: Path) -> None:
    _reranker(tier.url, tmp_path / "a", local=True).rerank(TINY_BERT_ID, QUERY, DOCS)
    b = _reranker(tier.url, tmp_path / "b", local=True)
    assert b.rerank(TINY_BERT_ID, QUERY, DOCS).cache_hits == 3  # from the tier
    tier.client().flushall()
    assert b.rerank(TINY_BERT_ID, QUERY, DOCS).cache_hits == 3  # now from b's own disk
    assert (tmp_path / "b" / "cache.db").exists()


def test_a_tier_that_is_down_scores_uncached_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://:hunter2-secret@127.0.0.1:{closed_port()}/0"
    reranker = _reranker(url, tmp_path, retry_after=0.0)  # ask the tier on every request: warn once anyway
    with caplog.at_level(logging.WARNING, logger="dheera_local"):
        responses = [reranker.rerank(TINY_BERT_ID, QUERY, DOCS) for _ in range(3)]
    assert [(r.backend, r.cache_hits) for r in responses] == [("local", 0)] * 3
    warnings = [record for record in caplog.records if "shared score cache" in record.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert "hunter2-secret" not in caplog.text and "***@127.0.0.1" in warnings[0].getMessage()
    assert "hunter2-secret" not in repr(reranker.caches)


def test_a_slow_tier_times_out_and_the_request_goes_on(tier: RedisServer, tmp_path: Path) -> None:
    reranker = _reranker(tier.url, tmp_path, timeout=0.2)
    reranker.rerank(TINY_BERT_ID, QUERY, DOCS)  # connections are open and warm
    tier.pause()
    try:
        response = reranker.rerank(TINY_BERT_ID, QUERY, DOCS)
    finally:
        tier.resume()
    assert (response.backend, response.cache_hits) == ("local", 0)


def test_the_tier_is_asked_again_after_it_comes_back(tier: RedisServer, tmp_path: Path) -> None:
    clock = [0.0]
    store = RedisCacheStore(tier.url, local_store=CacheStore(), retry_after=5.0, clock=lambda: clock[0])
    reranker = Reranker(cache=store)
    reranker.rerank(TINY_BERT_ID, QUERY, DOCS)
    tier.pause()
    try:
        assert reranker.rerank(TINY_BERT_ID, QUERY, DOCS).cache_hits == 0  # timed out: skipped for 5 s
    finally:
        tier.resume()
    assert reranker.rerank(TINY_BERT_ID, QUERY, DOCS).cache_hits == 0  # still skipped (clock has not moved)
    clock[0] = 6.0
    assert reranker.rerank(TINY_BERT_ID, QUERY, DOCS).cache_hits == 3


def test_a_unix_socket_tier_named_by_the_environment(tmp_path: Path) -> None:
    skip_without_server()
    server = RedisServer(tmp_path / "unix", unix=True).start()
    try:
        env = {"DHEERA_CACHE_URL": server.url, "HF_HUB_CACHE": str(_hub()), "DHEERA_CACHE_DIR": str(tmp_path / "c")}
        settings = Settings.from_env(env)  # the cache folder: where the kernel check's verdicts go
        with Reranker(settings=settings) as first:
            assert first.rerank(TINY_BERT_ID, QUERY, DOCS).cache_hits == 0
        dheera_local.close_all()
        with Reranker(settings=settings) as second:
            assert second.rerank(TINY_BERT_ID, QUERY, DOCS).backend == "cache"
    finally:
        dheera_local.close_all()
        server.kill()


def test_the_environment_names_the_tier_for_rerank(
    tier: RedisServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DHEERA_CACHE_URL", tier.url)
    monkeypatch.setenv("DHEERA_CACHE_TTL", "60")
    try:
        assert dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS).cache_hits == 0
        dheera_local.close_all()  # the next call reads the environment again, with a new pool
        assert dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS).cache_hits == 3
        assert all(0 < ttl <= 60 for ttl in map(tier.client().ttl, tier.client().keys("*")))
        # The tier replaced the disk cache (the folder may hold the kernel check's verdicts, no scores).
        assert not list((tmp_path / "score-cache").glob("**/cache.db"))
    finally:
        dheera_local.close_all()


def test_a_password_is_masked_and_a_wrong_one_degrades(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    skip_without_server()
    server = RedisServer(tmp_path / "auth", password="right-horse-battery").start()
    try:
        good = _reranker(server.url, tmp_path / "a")
        assert good.rerank(TINY_BERT_ID, QUERY, DOCS).cache_hits == 0
        assert good.rerank(TINY_BERT_ID, QUERY, DOCS).cache_hits == 3
        wrong = server.url.replace("right-horse-battery", "wrong-horse-battery")
        with caplog.at_level(logging.WARNING, logger="dheera_local"):
            response = _reranker(wrong, tmp_path / "b").rerank(TINY_BERT_ID, QUERY, DOCS)
        assert (response.backend, response.cache_hits) == ("local", 0)
        assert "shared score cache" in caplog.text and "wrong-horse-battery" not in caplog.text
    finally:
        server.kill()


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "memcached://x", "127.0.0.1:6379"])
def test_a_url_redis_does_not_speak_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="not a Redis URL"):
        RedisCacheStore(url)


def test_redacted_urls_keep_host_and_database() -> None:
    assert redacted("redis://user:pw-123456@cache.internal:6380/2") == "redis://***@cache.internal:6380/2"
    assert redacted("rediss://cache:6379/0") == "rediss://cache:6379/0"


def test_settings_read_the_tier_from_the_environment() -> None:
    env = {"DHEERA_CACHE_URL": "rediss://:pw-abcdef@h:6379/1", "DHEERA_CACHE_TTL": "86400", "DHEERA_CACHE_LOCAL": "1"}
    settings = Settings.from_env(env)
    assert settings.cache_url.get_secret_value() == env["DHEERA_CACHE_URL"]
    assert (settings.cache_ttl, settings.cache_local, settings.cache_timeout) == (86400, True, 0.25)
    assert "pw-abcdef" not in repr(settings)
    assert Settings.from_env({"DHEERA_CACHE_TTL": "soon"}).cache_ttl is None
