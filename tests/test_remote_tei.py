"""TEI-compatible endpoints: URL, payload, splitting by /info and body size, halving, top_n, async."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

import dheera_local
from conftest import closed_port
from dheera_local import Reranker, RetryPolicy
from loopback import Fault, Servers, by_index, call, reference_logits, sigmoid

REMOTE_ID = "tiny-org/remote-only"  # not in the test hub cache: only the endpoint can score it
MODEL = f"huggingface/{REMOTE_ID}"
QUERY = "what is the capital of the united states"
DOCS = [
    "washington is the capital of the united states",
    "carson city is the capital city of nevada",
    "capital punishment existed in the united states",
    "the river in paris",
    "tea and coffee in the morning",
]
MANY = [f"document {i}: the {'capital city' if i % 3 else 'river'} of state {i} in {i % 7} words" for i in range(100)]


def test_scores_through_tei_with_the_documented_payload(servers: Servers, tiny_bert: Path) -> None:
    tei = servers.tei(tiny_bert)
    response = dheera_local.rerank(MODEL, QUERY, DOCS, api_base=tei.url, cache=False)
    assert response.backend == "tei"
    assert response.meta.dheera_local.fallbacks == []
    assert tei.paths() == ["GET /info", "POST /rerank"]
    assert tei.scoring()[0].body == {"query": QUERY, "texts": DOCS, "truncate": True, "raw_scores": True}
    expected = reference_logits(tiny_bert, QUERY, DOCS)
    for index, score in by_index(response).items():
        assert score == pytest.approx(sigmoid(expected[index]), abs=1e-6)
    scores = [r.relevance_score for r in response.results]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("suffix", ["", "/", "/rerank", "/rerank/"])
def test_api_base_forms_call_one_rerank_path(servers: Servers, tiny_bert: Path, suffix: str) -> None:
    tei = servers.tei(tiny_bert)
    dheera_local.rerank(MODEL, QUERY, DOCS, api_base=tei.url + suffix, cache=False)
    assert tei.paths() == ["GET /info", "POST /rerank"]  # never /rerank/rerank, never //rerank


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_100_documents_are_split_by_max_client_batch_size_and_merged(
    servers: Servers, tiny_bert: Path, reranker: Reranker, mode: str
) -> None:
    tei = servers.tei(tiny_bert, max_client_batch_size=32, max_batch=32)
    response = call(reranker, mode, MODEL, QUERY, MANY, api_base=tei.url, raw_scores=True, cache=False)
    parts = [r.body["texts"] for r in tei.scoring()]
    assert sorted(len(p) for p in parts) == [4, 32, 32, 32]
    assert sorted(text for part in parts for text in part) == sorted(MANY)  # each text sent exactly once
    expected = reference_logits(tiny_bert, QUERY, MANY)
    got = by_index(response)
    assert sorted(got) == list(range(100))
    assert all(got[i] == pytest.approx(expected[i], abs=1e-6) for i in range(100))


def test_info_is_read_once_and_its_limit_is_used(servers: Servers, tiny_bert: Path, reranker: Reranker) -> None:
    tei = servers.tei(tiny_bert, max_client_batch_size=10, max_batch=10)
    reranker.rerank(MODEL, QUERY, MANY[:45], api_base=tei.url, cache=False)
    reranker.rerank(MODEL, "another query", MANY[:45], api_base=tei.url, cache=False)
    assert tei.paths().count("GET /info") == 1
    assert [len(r.body["texts"]) for r in tei.scoring()].count(10) == 8  # 4 x 10 + 5, twice


def test_without_info_the_default_limit_is_32(servers: Servers, tiny_bert: Path, reranker: Reranker) -> None:
    tei = servers.tei(tiny_bert, info=False)
    reranker.rerank(MODEL, QUERY, MANY, api_base=tei.url, cache=False)
    reranker.rerank(MODEL, QUERY, MANY[:5], api_base=tei.url, cache=False)
    assert sorted(len(r.body["texts"]) for r in tei.scoring()) == [4, 5, 32, 32, 32]
    assert tei.paths().count("GET /info") == 1  # a 404 is an answer: not asked again


def test_an_unreachable_info_is_asked_again_later(reranker: Reranker) -> None:
    down = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(dheera_local.AllBackendsFailedError):
        reranker.rerank(MODEL, QUERY, DOCS, api_base=down, cache=False)
    limits = reranker.backends.provider_state["tei"]["limits"]
    assert limits.get(down) is None  # no default pinned by a transient failure


def test_parts_are_sent_concurrently_with_a_bound(servers: Servers, tiny_bert: Path, reranker: Reranker) -> None:
    tei = servers.tei(tiny_bert, max_client_batch_size=5)
    tei.always = Fault(delay=0.3)
    started = time.monotonic()
    reranker.rerank(MODEL, QUERY, MANY, api_base=tei.url, cache=False)  # 20 parts of 5
    elapsed = time.monotonic() - started
    assert len(tei.scoring()) == 20
    assert 2 <= tei.max_in_flight <= 8  # concurrent, and bounded
    assert elapsed < 20 * 0.3 / 2


def test_bodies_over_2mb_are_split(servers: Servers, tiny_bert: Path) -> None:
    tei = servers.tei(tiny_bert)  # answers 413 "length limit exceeded" above 2,000,000 bytes
    docs = [f"{i} " + "capital city " * 33_000 for i in range(6)]  # about 400 KB each, 2.4 MB in all
    # The server tokenizes 400 KB texts: on a loaded 2-core machine that outlasts FAST's 5 s read timeout,
    # and a retried batch would be counted twice below. One attempt, a generous timeout.
    patient = RetryPolicy(max_attempts=1, read_timeout=120.0, deadline=240.0)
    with Reranker(retry=patient) as reranker:
        response = reranker.rerank(MODEL, QUERY, docs, api_base=tei.url, cache=False)
    sizes = [r.size for r in tei.scoring()]
    assert len(sizes) >= 2 and max(sizes) <= 2_000_000
    assert sum(len(r.body["texts"]) for r in tei.scoring()) == 6
    assert sorted(by_index(response)) == list(range(6))


def test_top_n_is_applied_client_side(servers: Servers, tiny_bert: Path) -> None:
    tei = servers.tei(tiny_bert)
    full = dheera_local.rerank(MODEL, QUERY, DOCS, api_base=tei.url, cache=False)
    top = dheera_local.rerank(MODEL, QUERY, DOCS, top_n=2, api_base=tei.url, cache=False)
    assert [(r.index, r.relevance_score) for r in top.results] == [
        (r.index, r.relevance_score) for r in full.results[:2]
    ]
    assert all("top_n" not in r.body and r.body["texts"] == DOCS for r in tei.scoring())  # TEI has no top_n


def test_documents_are_returned_from_the_request(servers: Servers, tiny_bert: Path) -> None:
    tei = servers.tei(tiny_bert)
    docs = [{"text": DOCS[0], "id": "a"}, DOCS[1]]
    response = dheera_local.rerank(MODEL, QUERY, docs, return_documents=True, api_base=tei.url, cache=False)
    assert {r.index: r.document for r in response.results} == {0: {"text": DOCS[0], "id": "a"}, 1: {"text": DOCS[1]}}
    assert "return_text" not in tei.scoring()[0].body


@pytest.mark.parametrize("status", [413, 422])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_batch_size_answer_halves_the_batch(
    servers: Servers, tiny_bert: Path, reranker: Reranker, status: int, mode: str
) -> None:
    # No /info, so the client starts at 32 while the server allows 10: 32 -> 16 -> 8.
    tei = servers.tei(tiny_bert, info=False, max_batch=10, limit_status=status)
    response = call(reranker, mode, MODEL, QUERY, MANY[:40], api_base=tei.url, raw_scores=True, cache=False)
    sizes = [len(r.body["texts"]) for r in tei.scoring()]
    assert sorted(sizes) == [8, 8, 8, 8, 8, 16, 16, 32]
    expected = reference_logits(tiny_bert, QUERY, MANY[:40])
    got = by_index(response)
    assert all(got[i] == pytest.approx(expected[i], abs=1e-6) for i in range(40))


def test_long_documents_are_truncated_by_the_endpoint(servers: Servers, tiny_bert: Path) -> None:
    tei = servers.tei(tiny_bert)  # rejects pairs over 512 tokens unless truncate is true
    response = dheera_local.rerank(MODEL, QUERY, ["capital " * 3000, "short"], api_base=tei.url, cache=False)
    assert len(response.results) == 2


def test_async_matches_sync(servers: Servers, tiny_bert: Path, reranker: Reranker) -> None:
    tei = servers.tei(tiny_bert)
    sync = reranker.rerank(MODEL, QUERY, DOCS, api_base=tei.url, cache=False)
    asynchronous = call(reranker, "async", MODEL, QUERY, DOCS, api_base=tei.url, cache=False)
    assert asynchronous.backend == "tei"
    assert [(r.index, r.relevance_score) for r in asynchronous.results] == [
        (r.index, r.relevance_score) for r in sync.results
    ]


def test_each_asyncio_run_closes_its_connections(servers: Servers, tiny_bert: Path) -> None:
    # Each asyncio.run() is a new loop with its own pooled client; ending the loop must close it
    # (python -X dev reports a leaked connection as "unclosed transport").
    tei = servers.tei(tiny_bert)
    script = (
        "import asyncio, gc, sys, dheera_local\n"
        "for _ in range(3):\n"
        "    asyncio.run(dheera_local.arerank(sys.argv[1], 'q', ['a', 'b'], api_base=sys.argv[2], cache=False))\n"
        "    gc.collect()\n"
        "print('scored')\n"
    )
    command = [sys.executable, "-X", "dev", "-W", "always::ResourceWarning", "-c", script, MODEL, tei.url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "scored" in done.stdout, done.stderr[-2000:]
    assert "unclosed" not in done.stderr, done.stderr[-2000:]
    assert tei.paths().count("POST /rerank") == 3
