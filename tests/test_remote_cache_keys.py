"""Remote scores in the cache: one namespace per credential (never the credential itself), a TTL,
local entries as before; and an endpoint's long error message reaches the user whole or visibly cut."""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dheera_local import AllBackendsFailedError, Reranker, Settings
from dheera_local._cache.secret import SECRET_NAME
from dheera_local._cache.store import CacheStore, KeyMaker, ScoreCache
from dheera_local._models.identity import ModelIdentity
from dheera_local._settings import DEFAULT_REMOTE_CACHE_TTL
from loopback import FAST, Fault, LoopbackServer, Servers

MODEL = "huggingface/tiny-org/remote-only"
QUERY = "what is the capital of the united states"
DOCS = ["washington is the capital", "carson city is in nevada", "the river in paris"]
RIGHT = "sk-right-0123456789abcdef"
WRONG = "sk-wrong-0123456789abcdef"
CANARY = "sk-canary-7f3e9c1d5b2a4e6f8091"


@pytest.fixture
def cache_dir(isolated_env: Path) -> Path:
    return isolated_env / "score-cache"


@pytest.fixture
def store() -> Iterator[CacheStore]:
    caches = CacheStore()
    yield caches
    caches.close()


def make(store: CacheStore, **env: str) -> Reranker:
    """A Reranker with its own cache store, the test's environment plus ``env``."""
    return Reranker(settings=Settings.from_env({**os.environ, **env}), cache=store, retry=FAST)


def opened(store: CacheStore, cache_dir: Path) -> ScoreCache:
    cache = store.open(cache_dir)
    assert cache is not None
    return cache


def scoring_calls(server: LoopbackServer) -> int:
    return len(server.scoring())


def test_a_wrong_key_after_the_right_one_is_asked_not_answered_from_the_cache(
    servers: Servers, tiny_bert: Path, store: CacheStore
) -> None:
    tei = servers.tei(tiny_bert, token=RIGHT)
    with make(store) as reranker:
        first = reranker.rerank(MODEL, QUERY, DOCS, api_base=tei.url, api_key=RIGHT)
        assert first.backend == "tei"
        again = reranker.rerank(MODEL, QUERY, DOCS, api_base=tei.url, api_key=RIGHT)
        assert again.meta.dheera_local.cache_hits == 3  # the right key is served from the cache
        with pytest.raises(AllBackendsFailedError) as failed:
            reranker.rerank(MODEL, QUERY, DOCS, api_base=tei.url, api_key=WRONG)
    assert failed.value.status == 401
    assert "401" in str(failed.value)
    assert scoring_calls(tei) == 2  # the right key once, the wrong key once (refused)


def test_two_keys_two_entries_and_no_key_is_a_namespace_of_its_own(
    servers: Servers, tiny_bert: Path, store: CacheStore, cache_dir: Path
) -> None:
    tei = servers.tei(tiny_bert)  # takes any key, or none
    with make(store) as reranker:
        for key in (RIGHT, WRONG, None, RIGHT, WRONG, None):
            reranker.rerank(MODEL, QUERY, DOCS, api_base=tei.url, api_key=key)
    assert scoring_calls(tei) == 3  # once per namespace, then hits
    assert opened(store, cache_dir).stats()["entries"] == 3 * len(DOCS)


def test_the_credential_never_reaches_the_cache_folder(
    servers: Servers, tiny_bert: Path, store: CacheStore, cache_dir: Path
) -> None:
    tei = servers.tei(tiny_bert, token=CANARY)
    with make(store) as reranker:
        reranker.rerank(MODEL, QUERY, DOCS, api_base=tei.url, api_key=CANARY)
        assert reranker.rerank(MODEL, QUERY, DOCS, api_base=tei.url, api_key=CANARY).meta.dheera_local.cache_hits == 3
    store.close()  # flush SQLite's WAL into cache.db
    files = [path for path in cache_dir.rglob("*") if path.is_file()]
    assert any(path.name == "cache.db" for path in files)
    for path in files:
        data = path.read_bytes()
        assert CANARY.encode() not in data, path
        assert CANARY.encode("utf-16-le") not in data, path
    secret = cache_dir / SECRET_NAME
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert len(secret.read_bytes()) == 32


def test_remote_entries_expire_after_the_ttl(
    servers: Servers, tiny_bert: Path, store: CacheStore, cache_dir: Path
) -> None:
    tei = servers.tei(tiny_bert)
    with make(store, DHEERA_REMOTE_CACHE_TTL="3600") as reranker:
        reranker.rerank(MODEL, QUERY, DOCS, api_base=tei.url)
        reranker.rerank(MODEL, QUERY, DOCS, api_base=tei.url)
        assert scoring_calls(tei) == 1
        cache = opened(store, cache_dir)
        cache.clock = lambda: time.time() + 3601  # an hour and a second later
        expired = reranker.rerank(MODEL, QUERY, DOCS, api_base=tei.url)
    assert expired.meta.dheera_local.cache_hits == 0
    assert scoring_calls(tei) == 2


def test_a_ttl_of_zero_caches_no_remote_score(
    servers: Servers, tiny_bert: Path, store: CacheStore, cache_dir: Path
) -> None:
    tei = servers.tei(tiny_bert)
    with make(store, DHEERA_REMOTE_CACHE_TTL="0") as reranker:
        for _ in range(2):
            assert reranker.rerank(MODEL, QUERY, DOCS, api_base=tei.url).meta.dheera_local.cache_hits == 0
    assert scoring_calls(tei) == 2
    assert opened(store, cache_dir).stats()["entries"] == 0


def test_local_entries_keep_their_keys_and_never_expire(tiny_bert: Path, store: CacheStore, cache_dir: Path) -> None:
    with make(store) as reranker:
        response = reranker.rerank(str(tiny_bert), QUERY, DOCS, backend="local", dtype="float32")
        plan = reranker.plan(str(tiny_bert), backend="local", dtype="float32")
    assert response.backend == "local"
    store.close()
    # The key a cache written before remote namespaces holds for this pair: the identity's fields only.
    identity = ModelIdentity(plan.identity.model_id, plan.identity.revision, plan.identity.max_length, "float32")
    with sqlite3.connect(cache_dir / "cache.db") as con:
        rows = dict(con.execute("SELECT key, expire_time FROM Cache").fetchall())
    assert set(rows) == {KeyMaker(identity)(QUERY, doc) for doc in DOCS}
    assert set(rows.values()) == {None}


@pytest.mark.parametrize(("raw", "expected"), [("", DEFAULT_REMOTE_CACHE_TTL), ("0", 0.0), ("90", 90.0),
                                               ("soon", DEFAULT_REMOTE_CACHE_TTL), ("-5", DEFAULT_REMOTE_CACHE_TTL),
                                               ("nan", DEFAULT_REMOTE_CACHE_TTL)])  # fmt: skip
def test_the_ttl_setting(raw: str, expected: float) -> None:
    assert Settings.from_env({"DHEERA_REMOTE_CACHE_TTL": raw}).remote_cache_ttl == expected
    assert DEFAULT_REMOTE_CACHE_TTL == 7 * 24 * 3600


def test_an_unusable_secret_file_is_replaced(
    servers: Servers, tiny_bert: Path, store: CacheStore, cache_dir: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"x" * 32)
    cache_dir.mkdir(mode=0o700)
    (cache_dir / SECRET_NAME).symlink_to(outside)  # a planted link: its target must stay as it is
    tei = servers.tei(tiny_bert)
    with make(store) as reranker:
        reranker.rerank(MODEL, QUERY, DOCS, api_base=tei.url, api_key=RIGHT)
        assert reranker.rerank(MODEL, QUERY, DOCS, api_base=tei.url, api_key=RIGHT).meta.dheera_local.cache_hits == 3
    assert outside.read_bytes() == b"x" * 32
    secret = cache_dir / SECRET_NAME
    assert not secret.is_symlink() and stat.S_IMODE(secret.stat().st_mode) == 0o600


# The message of an endpoint's error ----------------------------------------------------------------


UPSTREAM_FIX = (
    "Fix: run `dheera-local pull org/model` while online to score locally, check HF_TOKEN / api_key, "
    "or pass api_base for your own endpoint"
)


def test_another_proxys_error_reaches_the_user_whole(servers: Servers, tiny_bert: Path, store: CacheStore) -> None:
    # What a dheera-local proxy answers when its own backends fail: ~400 characters, its "Fix:" last.
    upstream = (
        "every backend failed for org/model: remote: HF hosted inference http://127.0.0.1:9/models/org/model "
        "could not be reached (connection refused) after 3 attempts over 0.1 s; the request was not sent. "
        + UPSTREAM_FIX
    )
    assert len(upstream) > 300  # it was cut at 300 characters, mid-word
    tei = servers.tei(tiny_bert)
    tei.always = Fault(503, body={"error": {"message": upstream}})
    with make(store) as reranker, pytest.raises(AllBackendsFailedError) as failed:
        reranker.rerank(MODEL, QUERY, DOCS, api_base=tei.url, cache=False)
    message = str(failed.value)
    # The upstream's message whole, then this client's own "Fix:" line (not "...locally, chec. Fix: ...").
    assert f"answered 503: {upstream}. Fix: " in message
    assert message.count("Fix: ") == 2


def test_an_endless_error_is_cut_at_a_word_and_says_so(servers: Servers, tiny_bert: Path, store: CacheStore) -> None:
    tei = servers.tei(tiny_bert)
    tei.always = Fault(503, body={"error": "overloaded " * 500})
    with make(store) as reranker, pytest.raises(AllBackendsFailedError) as failed:
        reranker.rerank(MODEL, QUERY, DOCS, api_base=tei.url, cache=False)
    message = str(failed.value)
    assert "overloaded overloaded [... " in message and " more characters]" in message
    assert "overloade [" not in message and len(message) < 2000
