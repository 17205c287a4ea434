"""Serving under load: micro-batching merges concurrent requests into shared forward passes,
results come back unmixed, a full queue answers 429, and shutdown finishes in-flight requests."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from dheera_local import LocalBackendError, OverloadedError, Reranker
from dheera_local._local.backend import LocalBackend
from dheera_local._models.discovery import find_local_weights
from dheera_local._models.identity import ModelIdentity
from dheera_local._models.model_ref import parse_model
from dheera_local.server.micro_batching import BatcherPool, BatcherStats, MicroBatcher
from dheera_local.testing.models import WORDS
from server_harness import MASTER_KEY, LiveServer

VOCABULARY = [word for word in WORDS if word != "paris"]
QUEUE = 1000


def keyword_request(seed: int, count: int = 8, words: int = 12) -> tuple[str, list[str], int]:
    """A query and ``count`` documents of which exactly one (returned) contains 'paris'."""
    rng = random.Random(seed)
    docs = [" ".join(rng.choice(VOCABULARY) for _ in range(words)) for _ in range(count)]
    target = seed % count
    docs[target] = docs[target] + " paris"
    return f"which city {' '.join(rng.choice(VOCABULARY) for _ in range(3))}", docs, target


@pytest.fixture(scope="module")
def server(keyword_model: Path) -> Iterator[LiveServer]:
    params = {"model": str(keyword_model), "dtype": "float32"}
    settings = {"master_key": MASTER_KEY, "cache": False, "max_queue_pairs": QUEUE, "max_documents_per_request": QUEUE}
    data = {"model_list": [{"model_name": "keyword", "dheera_ai_params": params}], "general_settings": settings}
    live = LiveServer(data).start()
    yield live
    live.stop()


def stats(server: LiveServer) -> dict[str, int]:
    """The keyword model's batcher counters (all zero before its first request)."""
    batchers = list(server.state.pool.stats().values())
    assert len(batchers) <= 1
    return batchers[0] if batchers else asdict(BatcherStats())


def in_background(call: Callable[[], Any]) -> Future[Any]:
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(call)
    pool.shutdown(wait=False)
    return future


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.002)


def assert_scored_like_in_process(response: httpx.Response, model: Path, query: str, docs: list[str]) -> None:
    """The server's scores for this request equal an in-process rerank of the same request.

    Distinct queries and documents give distinct scores, so a result scored for another request,
    or put back at the wrong index, shows up here whatever the model's quality on this machine.
    """
    assert response.status_code == 200, response.text
    served = {r["index"]: r["relevance_score"] for r in response.json()["results"]}
    expected = Reranker().rerank(str(model), query, docs, dtype="float32", cache=False)
    wrong = [r.index for r in expected.results if abs(served[r.index] - r.relevance_score) > 1e-4]
    assert len(served) == len(docs) and not wrong, f"{len(wrong)} of {len(docs)} scores differ, e.g. index {wrong[:3]}"


def post_many(server: LiveServer, bodies: list[dict[str, Any]], path: str = "/rerank") -> list[httpx.Response]:
    """All bodies at once, from one event loop (one connection each)."""

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(bodies))
        headers = {"Authorization": f"Bearer {MASTER_KEY}"}
        async with httpx.AsyncClient(base_url=server.url, limits=limits, headers=headers, timeout=120) as client:
            return list(await asyncio.gather(*(client.post(path, json=body) for body in bodies)))

    return asyncio.run(run())


def test_concurrent_clients_get_their_own_results(server: LiveServer, keyword_model: Path) -> None:
    requests = [keyword_request(seed) for seed in range(32)]
    bodies = [{"model": "keyword", "query": q, "documents": docs, "raw_scores": True} for q, docs, _ in requests]
    responses = post_many(server, bodies)
    reference = Reranker()
    for response, (query, docs, target) in zip(responses, requests, strict=True):
        assert response.status_code == 200
        results = response.json()["results"]
        assert results[0]["index"] == target
        expected = reference.rerank(str(keyword_model), query, docs, raw_scores=True, dtype="float32", cache=False)
        assert {r["index"]: pytest.approx(r["relevance_score"], abs=1e-4) for r in results} == {
            r.index: r.relevance_score for r in expected.results
        }


def test_requests_arriving_during_a_forward_pass_share_the_next_one(server: LiveServer, keyword_model: Path) -> None:
    before = stats(server)
    big_query, big_docs, _ = keyword_request(1, count=900, words=40)
    big = in_background(lambda: server.post("/rerank", {"model": "keyword", "query": big_query, "documents": big_docs}))
    wait_for(lambda: stats(server)["running_pairs"] >= 900)
    small = [keyword_request(100 + seed) for seed in range(8)]
    liveliness = in_background(lambda: (httpx.get(server.url + "/health/liveliness"), big.done()))
    responses = post_many(server, [{"model": "keyword", "query": q, "documents": d} for q, d, _ in small])
    answered, big_was_done = liveliness.result()
    assert answered.status_code == 200 and not big_was_done  # the event loop answered during inference
    assert_scored_like_in_process(big.result(), keyword_model, big_query, big_docs)
    for response, (query, docs, _) in zip(responses, small, strict=True):
        assert_scored_like_in_process(response, keyword_model, query, docs)
    after = stats(server)
    assert after["requests"] - before["requests"] == 9
    assert after["steps"] - before["steps"] < 9
    assert after["merged_steps"] > before["merged_steps"]
    assert after["max_requests_per_step"] >= 2


def test_a_full_queue_answers_429_and_recovers(server: LiveServer, keyword_model: Path) -> None:
    query, docs, _ = keyword_request(7, count=QUEUE, words=40)
    big = in_background(lambda: server.post("/rerank", {"model": "keyword", "query": query, "documents": docs}))
    wait_for(lambda: stats(server)["running_pairs"] + stats(server)["queued_pairs"] >= QUEUE)
    rejected_before = stats(server)["rejected"]
    responses = post_many(server, [{"model": "keyword", "query": f"q{i}", "documents": ["a", "b"]} for i in range(16)])
    for response in responses:
        assert response.status_code == 429
        assert int(response.headers["retry-after"]) >= 1
        error = response.json()["error"]
        assert (error["type"], error["code"]) == ("overloaded_error", "429")
        assert f"max_queue_pairs={QUEUE}" in error["message"]
    assert stats(server)["rejected"] - rejected_before == 16
    assert_scored_like_in_process(big.result(), keyword_model, query, docs)
    assert stats(server)["queued_pairs"] == stats(server)["running_pairs"] == 0
    assert server.post("/rerank", {"model": "keyword", "query": "q", "documents": ["a", "b"]}).status_code == 200


def test_shutdown_finishes_the_request_in_flight(tiny_bert: Path) -> None:
    data = {"model_list": [{"model_name": "m", "dheera_ai_params": {"model": str(tiny_bert)}}],
            "general_settings": {"cache": False}}  # fmt: skip
    live = LiveServer(data).start()
    docs = [" ".join(random.Random(i).choice(VOCABULARY) for _ in range(40)) for i in range(1000)]
    request = in_background(lambda: live.post("/rerank", {"model": "m", "query": "city", "documents": docs}))
    wait_for(lambda: next(iter(live.state.pool.stats().values()), {}).get("running_pairs", 0) > 0)
    live.server.should_exit = True  # what SIGTERM does
    assert not request.done()
    live.stop()
    response = request.result(timeout=60)
    assert response.status_code == 200
    assert sorted(r["index"] for r in response.json()["results"]) == list(range(1000))
    assert live.app.state.dheera is None  # the lifespan closed its resources
    with pytest.raises(httpx.ConnectError):
        httpx.get(live.url + "/health/liveliness")


# The batcher itself, with a stand-in model (the model is beside the point here) ------------------


class WorkerKilled(BaseException):
    """Something no ``except Exception`` catches."""


class GatedModel:
    """Stands in for a LocalBackend: each call waits for ``gate``; 'poison' raises, 'die' kills the thread."""

    name = "local"
    identity = ModelIdentity("gated", "rev", 64, device="cpu")

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls: list[list[str]] = []
        self.entered = threading.Event()

    def score_pairs(self, pairs: list[tuple[str, str]]) -> list[float]:
        self.entered.set()
        assert self.gate.wait(10)
        texts = [text for _, text in pairs]
        self.calls.append(texts)
        if "die" in texts:
            raise WorkerKilled
        if "poison" in texts:
            raise ValueError("poisoned input")
        return [float(len(text)) for text in texts]

    def describe(self) -> dict[str, str]:
        return {"device": "cpu"}


def pairs(*texts: str) -> list[tuple[str, str]]:
    return [("q", text) for text in texts]


def blocked(max_queue_pairs: int = 100) -> tuple[MicroBatcher, GatedModel, Future[list[float]]]:
    """A batcher whose worker is busy with a first job until ``model.gate`` opens."""
    model = GatedModel()
    batcher = MicroBatcher(model, max_queue_pairs=max_queue_pairs)  # type: ignore[arg-type]
    first = batcher.submit(pairs("aaaa"))
    assert model.entered.wait(10)
    return batcher, model, first


def test_jobs_queued_behind_a_step_are_merged_and_split_back() -> None:
    batcher, model, first = blocked()
    jobs = [batcher.submit(pairs("b" * n, "c" * (n + 1))) for n in (1, 3, 5)]
    model.gate.set()
    assert first.result(5) == [4.0]
    assert [job.result(5) for job in jobs] == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    assert model.calls == [["aaaa"], ["b", "cc", "bbb", "cccc", "bbbbb", "cccccc"]]
    counters = batcher.stats()
    assert (counters["steps"], counters["merged_steps"], counters["max_requests_per_step"]) == (2, 1, 3)
    assert (counters["requests"], counters["pairs"], counters["max_pairs_per_step"]) == (4, 7, 6)
    batcher.close()


def test_a_failing_request_fails_alone() -> None:
    batcher, model, first = blocked()
    good, bad, other = (batcher.submit(pairs(*texts)) for texts in (["x"], ["poison", "y"], ["zz"]))
    model.gate.set()
    assert (first.result(5), good.result(5), other.result(5)) == ([4.0], [1.0], [2.0])
    with pytest.raises(LocalBackendError, match="poisoned input"):
        bad.result(5)
    batcher.close()


def test_a_dying_worker_fails_every_queued_job_and_is_replaced() -> None:
    model = GatedModel()
    batcher = MicroBatcher(model)  # type: ignore[arg-type]
    dying = batcher.submit(pairs("die"))
    assert model.entered.wait(10)
    queued = [batcher.submit(pairs("a")), batcher.submit(pairs("b", "c"))]
    model.gate.set()
    for job in (dying, *queued):
        with pytest.raises(LocalBackendError, match="worker stopped"):
            job.result(5)  # fails, never hangs
    assert batcher.submit(pairs("fresh")).result(5) == [5.0]
    batcher.close()


def test_the_queue_is_bounded_in_pairs() -> None:
    batcher, model, first = blocked(max_queue_pairs=10)
    accepted = batcher.submit(pairs(*"abcdefghi"))  # 1 running + 9 queued = 10
    with pytest.raises(OverloadedError, match="max_queue_pairs=10") as info:
        batcher.submit(pairs("j"))
    assert info.value.retry_after >= 1
    assert batcher.stats()["rejected"] == 1
    model.gate.set()
    assert first.result(5) == [4.0] and accepted.result(5) == [1.0] * 9
    wait_for(lambda: batcher.stats()["running_pairs"] == 0)
    assert batcher.submit(pairs(*"x" * 30)).result(5) == [1.0] * 30  # larger than the queue, but alone
    batcher.close()


def test_cancelled_requests_are_skipped_and_close_drains() -> None:
    batcher, model, first = blocked()

    async def cancel_one() -> None:
        task = asyncio.ensure_future(batcher.ascore_pairs(pairs("gone")))
        await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(cancel_one())
    kept = batcher.submit(pairs("kept"))
    closing = in_background(batcher.close)
    model.gate.set()
    closing.result(10)
    assert kept.result(5) == [4.0]
    assert model.calls == [["aaaa"], ["kept"]]
    with pytest.raises(OverloadedError, match="shutting down"):
        batcher.submit(pairs("late"))


def test_one_batcher_per_loaded_model(tiny_bert: Path, tiny_xlmr: Path) -> None:
    pool = BatcherPool()
    bert, xlmr = (find_local_weights(parse_model(str(folder))) for folder in (tiny_bert, tiny_xlmr))
    assert bert is not None and xlmr is not None
    first = pool.wrap(LocalBackend(bert, max_length=64, device="cpu", dtype="float32"))
    assert pool.wrap(LocalBackend(bert, max_length=64, device="cpu", dtype="float32")) is first
    assert pool.wrap(LocalBackend(bert, max_length=128, device="cpu", dtype="float32")) is not first
    assert pool.wrap(LocalBackend(xlmr, max_length=64, device="cpu", dtype="float32")) is not first
    assert len(pool.stats()) == 3
    pool.close()
    with pytest.raises(OverloadedError):
        pool.wrap(LocalBackend(bert, max_length=64, device="cpu", dtype="float32"))
