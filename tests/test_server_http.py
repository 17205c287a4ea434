"""The proxy over real HTTP: a uvicorn server on a loopback port, tiny models, and the clients
people point at it (curl, requests, our SDK, the cohere SDK, TEI clients)."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

import dheera_local
import dheera_local as dheera_ai
from conftest import SEED_DOCUMENTS, SEED_QUERY, closed_port
from dheera_local import AllBackendsFailedError
from loopback import Fault, Servers, reference_logits
from server_harness import MASTER_KEY, LiveServer, wait_until_ready

UPSTREAM_KEY = "hf_upstream_secret_4242"
NAMES = ["bge-reranker-base", "bge-reranker-large", "tiny-bert-hub", "cached", "broken-tei", "unreachable"]
MAX_DOCUMENTS = 50
MAX_BODY = 32768


def sigmoid(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-value))


@pytest.fixture(scope="module")
def upstream(tiny_bert: Path) -> Iterator[Servers]:
    with Servers() as servers:
        yield servers


@pytest.fixture(scope="module")
def server(
    hub_cache: Path, tiny_bert: Path, upstream: Servers, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    tei = upstream.tei(tiny_bert, token=UPSTREAM_KEY)
    tei.always = Fault(500, body={"error": f"backend exploded while holding {UPSTREAM_KEY}"})
    remote = {"model": "huggingface/tiny-org/tiny-bert-reranker", "backend": "remote", "api_key": UPSTREAM_KEY}
    data = {
        "model_list": [
            model("bge-reranker-base", model="huggingface/tiny-org/tiny-xlmr-reranker", dtype="float32"),
            model("bge-reranker-large", "litellm_params", model=str(tiny_bert), max_length=64, dtype="float32"),
            model("tiny-bert-hub", model="tiny-org/tiny-bert-reranker", dtype="float32"),
            model("cached", model=str(tiny_bert), cache=True, dtype="float32"),
            model("broken-tei", **remote, api_base=tei.url),
            model("unreachable", **remote, api_base=f"http://127.0.0.1:{closed_port()}"),
        ],
        "general_settings": {
            "master_key": MASTER_KEY, "cache": False, "cache_dir": str(tmp_path_factory.mktemp("server-cache")),
            "num_retries": 0, "max_documents_per_request": MAX_DOCUMENTS, "max_request_body_bytes": MAX_BODY,
        },
    }  # fmt: skip
    with pytest.MonkeyPatch.context() as env:  # the module's server outlives each test's isolated_env
        env.setenv("HF_HUB_CACHE", str(hub_cache))
        # Module fixtures are made before each test's isolated_env: the cache folder (kernel verdicts) too.
        env.setenv("DHEERA_CACHE_DIR", str(tmp_path_factory.mktemp("module-cache")))
        env.setenv("HF_TOKEN_PATH", str(tmp_path_factory.mktemp("no-token") / "token"))
        env.delenv("HF_TOKEN", raising=False)
        live = LiveServer(data).start()
        yield live
        live.stop()


def model(name: str, key: str = "dheera_ai_params", **params: Any) -> dict[str, Any]:
    return {"model_name": name, key: params}


def seed_body(**extra: Any) -> dict[str, Any]:
    return {"model": "bge-reranker-base", "query": SEED_QUERY, "documents": SEED_DOCUMENTS, "top_n": 3, **extra}


def assert_cohere_ranking(data: dict[str, Any], folder: Path, query: str, texts: list[str], count: int) -> None:
    """Sorted best first, ``count`` results, scores equal to sentence-transformers' on the same model."""
    expected = [sigmoid(logit) for logit in reference_logits(folder, query, texts)]
    results = data["results"]
    assert len(results) == count
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    for result in results:
        assert result["relevance_score"] == pytest.approx(expected[result["index"]], abs=1e-6)
    left_out = set(range(len(texts))) - {r["index"] for r in results}
    assert all(expected[index] <= min(scores) + 1e-6 for index in left_out)


# The seed docs' examples -----------------------------------------------------------------------


def test_the_seed_requests_example(server: LiveServer, tiny_xlmr: Path) -> None:
    url = f"{server.url}/rerank"
    headers = {"Authorization": f"Bearer {MASTER_KEY}", "Content-Type": "application/json"}
    data = seed_body()
    response = requests.post(url, headers=headers, json=data)
    assert response.status_code == 200
    body = response.json()
    assert list(body) == ["results", "id", "meta"]
    assert uuid.UUID(body["id"]).version == 4
    assert body["meta"]["api_version"] == {"version": "2", "is_experimental": False}
    tokens = body["meta"]["tokens"]["input_tokens"]  # the tokens scored (tests/test_usage_tokens.py)
    assert tokens > 0 and body["meta"]["billed_units"] == {"search_units": 1, "total_tokens": tokens}
    assert_cohere_ranking(body, tiny_xlmr, SEED_QUERY, SEED_DOCUMENTS, 3)
    assert response.headers["x-dheera-backend"] == "local"
    assert response.headers["x-dheera-cache-hits"] == "0"
    assert response.headers["x-dheera-model"] == "bge-reranker-base"
    assert len(response.headers["x-request-id"]) == 32


def test_the_seed_sdk_example_with_api_base(server: LiveServer) -> None:
    response = dheera_ai.rerank(
        model="bge-reranker-base", query=SEED_QUERY, documents=SEED_DOCUMENTS, top_n=3,
        api_base=server.url, api_key=MASTER_KEY,
    )  # fmt: skip
    direct = server.post("/rerank", seed_body()).json()
    assert response.backend == "cohere"
    assert [r.index for r in response.results] == [r["index"] for r in direct["results"]]
    for ours, theirs in zip(response.results, direct["results"], strict=True):
        assert ours.relevance_score == pytest.approx(theirs["relevance_score"], abs=1e-9)
    with pytest.raises(AllBackendsFailedError, match="401"):
        dheera_ai.rerank(model="bge-reranker-base", query="q", documents=["d"], api_base=server.url, api_key="sk-no")


def test_a_request_id_from_the_client_is_kept(server: LiveServer) -> None:
    response = server.post("/rerank", seed_body(), headers={"x-request-id": "trace-abc.123"})
    assert response.headers["x-request-id"] == "trace-abc.123"
    response = server.post("/rerank", seed_body(), headers={"x-request-id": "not a plain id!"})
    assert response.headers["x-request-id"] != "not a plain id!"


def test_cache_hits_are_reported_in_headers(server: LiveServer) -> None:
    body = seed_body(model="cached", query=f"cache probe {uuid.uuid4()}")
    first, second = server.post("/rerank", body), server.post("/rerank", body)
    assert (first.headers["x-dheera-backend"], first.headers["x-dheera-cache-hits"]) == ("local", "0")
    assert (second.headers["x-dheera-backend"], second.headers["x-dheera-cache-hits"]) == ("cache", "4")
    assert second.json()["results"] == first.json()["results"]


# Cohere v1 / v2 --------------------------------------------------------------------------------


def test_v1_objects_rank_fields_and_return_documents(server: LiveServer, tiny_bert: Path) -> None:
    documents = [{"title": text.split(" is ")[0], "body": text, "id": i} for i, text in enumerate(SEED_DOCUMENTS)]
    body = {
        "model": "bge-reranker-large", "query": SEED_QUERY, "documents": documents, "rank_fields": ["body"],
        "return_documents": True, "max_chunks_per_doc": 2,
    }  # fmt: skip
    response = server.post("/v1/rerank", body)
    assert response.status_code == 200
    data = response.json()
    assert data["meta"]["api_version"]["version"] == "1"
    texts = [f"body: {text}" for text in SEED_DOCUMENTS]
    assert_cohere_ranking(data, tiny_bert, SEED_QUERY, texts, 4)
    for result in data["results"]:
        assert result["document"] == documents[result["index"]]


@pytest.mark.parametrize("path", ["/rerank", "/v1/rerank", "/v2/rerank"])
def test_explicit_nulls_are_accepted(server: LiveServer, path: str) -> None:
    nulls = {"top_n": None, "return_documents": None, "max_tokens_per_doc": None, "raw_scores": None}
    if path != "/v2/rerank":
        nulls |= {"rank_fields": None, "max_chunks_per_doc": None}
    else:
        nulls |= {"priority": None}
    response = server.post(path, seed_body(top_n=None) | nulls)
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 4
    assert all("document" not in result for result in response.json()["results"])


def test_v2_strings_top_n_and_max_tokens_per_doc(server: LiveServer, tiny_xlmr: Path) -> None:
    body = {"model": "bge-reranker-base", "query": SEED_QUERY, "documents": SEED_DOCUMENTS, "top_n": 2,
            "max_tokens_per_doc": 512, "priority": 0}  # fmt: skip
    data = server.post("/v2/rerank", body).json()
    assert data["meta"]["api_version"] == {"version": "2", "is_experimental": False}
    assert_cohere_ranking(data, tiny_xlmr, SEED_QUERY, SEED_DOCUMENTS, 2)
    response = server.post("/v2/rerank", {**body, "documents": [{"text": "an object"}]})
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "documents[0]"


def test_the_cohere_sdk(server: LiveServer) -> None:
    cohere = pytest.importorskip("cohere")
    direct = server.post("/rerank", seed_body()).json()["results"]
    v2 = cohere.ClientV2(base_url=server.url, api_key=MASTER_KEY).rerank(
        model="bge-reranker-base", query=SEED_QUERY, documents=SEED_DOCUMENTS, top_n=3
    )
    assert [(r.index, r.relevance_score) for r in v2.results] == [(r["index"], r["relevance_score"]) for r in direct]
    v1 = cohere.Client(base_url=server.url, api_key=MASTER_KEY).rerank(
        model="bge-reranker-base", query=SEED_QUERY, documents=SEED_DOCUMENTS, top_n=3, return_documents=True
    )
    assert [r.index for r in v1.results] == [r["index"] for r in direct]
    assert [r.document.text for r in v1.results] == [SEED_DOCUMENTS[r["index"]] for r in direct]
    with pytest.raises(cohere.core.api_error.ApiError) as info:
        cohere.ClientV2(base_url=server.url, api_key="sk-wrong", max_retries=0).rerank(
            model="bge-reranker-base", query="q", documents=["d"]
        )
    assert info.value.status_code == 401


# TEI format ------------------------------------------------------------------------------------


def test_tei_requests_get_tei_answers_from_the_first_model(server: LiveServer, tiny_xlmr: Path) -> None:
    response = server.post("/rerank", {"query": SEED_QUERY, "texts": SEED_DOCUMENTS})
    assert response.status_code == 200
    assert response.headers["x-dheera-model"] == "bge-reranker-base"
    ranks = response.json()
    assert isinstance(ranks, list) and len(ranks) == 4
    assert all(set(rank) == {"index", "score"} for rank in ranks)
    assert [r["score"] for r in ranks] == sorted((r["score"] for r in ranks), reverse=True)
    body = {"query": SEED_QUERY, "texts": SEED_DOCUMENTS, "raw_scores": True, "return_text": True}
    raw = server.post("/rerank", body)
    expected = reference_logits(tiny_xlmr, SEED_QUERY, SEED_DOCUMENTS)
    for rank in raw.json():
        assert rank["score"] == pytest.approx(expected[rank["index"]], abs=1e-6)
        assert rank["text"] == SEED_DOCUMENTS[rank["index"]]


def test_litellm_huggingface_provider_payload(server: LiveServer) -> None:
    # Exactly what LiteLLM's huggingface/ rerank provider sends to {api_base}/rerank.
    payload = {"raw_scores": False, "truncate": False, "truncation_direction": "Right",
               "query": "hello", "texts": ["hello", "world"], "top_n": 2, "return_text": True}  # fmt: skip
    for path in ("/rerank", "/models/tiny-bert-hub/rerank"):
        response = server.post(path, payload)
        assert response.status_code == 200
        assert sorted(rank["text"] for rank in response.json()) == ["hello", "world"]


def test_the_model_named_in_the_url_and_info(server: LiveServer) -> None:
    response = server.post("/models/tiny-bert-hub/rerank", {"query": "q", "texts": ["a", "b", "c"]})
    assert response.headers["x-dheera-model"] == "tiny-bert-hub"
    assert sorted(rank["index"] for rank in response.json()) == [0, 1, 2]
    info = server.get("/models/tiny-bert-hub/info").json()
    assert info["served_model_name"] == "tiny-bert-hub"
    assert info["model_id"] == "tiny-org/tiny-bert-reranker"
    assert info["max_client_batch_size"] == MAX_DOCUMENTS
    assert info["model_type"] == {"reranker": {"id2label": {"0": "LABEL_0"}, "label2id": {"LABEL_0": 0}}}
    default = server.get("/info").json()
    assert (default["served_model_name"], default["model_dtype"]) == ("bge-reranker-base", "float32")
    assert server.post("/models/nope/rerank", {"query": "q", "texts": ["a"]}).status_code == 404
    assert server.get("/models/nope/info").status_code == 404


def test_our_tei_client_can_use_the_server_as_its_endpoint(server: LiveServer) -> None:
    via_tei = dheera_local.rerank(
        "huggingface/tiny-org/tiny-bert-reranker", SEED_QUERY, SEED_DOCUMENTS, backend="remote",
        api_base=f"{server.url}/models/tiny-bert-hub", api_key=MASTER_KEY, cache=False,
    )  # fmt: skip
    local = dheera_local.rerank("tiny-org/tiny-bert-reranker", SEED_QUERY, SEED_DOCUMENTS, dtype="float32", cache=False)
    assert via_tei.backend == "tei"
    assert [r.index for r in via_tei.results] == [r.index for r in local.results]
    for ours, theirs in zip(via_tei.results, local.results, strict=True):
        assert ours.relevance_score == pytest.approx(theirs.relevance_score, abs=1e-6)


# Auth, errors, limits ----------------------------------------------------------------------------

AUTHENTICATED = [
    ("POST", "/rerank"), ("POST", "/v1/rerank"), ("POST", "/v2/rerank"), ("POST", "/models/cached/rerank"),
    ("GET", "/info"), ("GET", "/models/cached/info"), ("GET", "/v1/models"), ("GET", "/health"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path"), AUTHENTICATED)
@pytest.mark.parametrize("authorization", [None, "Bearer sk-wrong", f"Basic {MASTER_KEY}", f"Bearer {MASTER_KEY}x"])
def test_every_model_route_needs_the_master_key(
    server: LiveServer, method: str, path: str, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.request(method, server.url + path, json=seed_body(), headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("authentication_error", "401")
    assert MASTER_KEY not in response.text


def test_liveliness_and_readiness_need_no_key(server: LiveServer) -> None:
    assert server.get("/health/liveliness", key=None).json() == "I'm alive!"
    assert server.get("/health/liveness", key=None).status_code == 200
    readiness = server.get("/health/readiness", key=None)
    assert readiness.status_code == 200
    assert readiness.json() == {"status": "healthy"}  # model names only behind the key (/v1/models)


def cohere(**fields: Any) -> dict[str, Any]:
    return {"model": "bge-reranker-base", "query": "q", "documents": ["a"], **fields}


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/rerank", b"{not json", 400, "body"),
        ("/rerank", b"[1, 2]", 422, "body"),
        ("/rerank", {"model": "bge-reranker-base", "documents": ["a"]}, 422, "query"),
        ("/rerank", cohere(query=None), 422, "query"),
        ("/v1/rerank", cohere(documents="a"), 422, "documents"),
        ("/v1/rerank", cohere(documents=["a", 7]), 422, "documents[1]"),
        ("/v1/rerank", cohere(top_n="x"), 422, "top_n"),
        ("/v1/rerank", cohere(top_n=0), 400, "top_n"),
        ("/v2/rerank", cohere(query="  "), 400, "query"),
        ("/v1/rerank", cohere(documents=["a", {"title": "t"}]), 400, "documents[1]"),
        ("/v1/rerank", cohere(rank_fields=[]), 400, "rank_fields"),
        ("/rerank", {"query": "q", "texts": ["a", 3]}, 422, "texts[1]"),
        ("/models/tiny-bert-hub/rerank", {"query": "q", "texts": "a"}, 422, "texts"),
    ],
)
def test_bad_bodies_name_the_field(server: LiveServer, path: str, body: Any, status: int, param: str) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(server.url + path, content=content, headers=server.headers())
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, str(status), "invalid_request_error")
    assert error["message"].startswith(param) or param.split("[")[0] in error["message"]
    assert "Traceback" not in response.text


def test_an_unknown_model_is_404_listing_the_names(server: LiveServer) -> None:
    response = server.post("/v2/rerank", seed_body(model="rerank-english-v3.0"))
    assert response.status_code == 404
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("not_found_error", "model")
    assert "rerank-english-v3.0" in error["message"]
    assert all(name in error["message"] for name in NAMES)


def test_limits_answer_413(server: LiveServer) -> None:
    too_many = server.post("/rerank", seed_body(documents=["d"] * (MAX_DOCUMENTS + 1)))
    assert too_many.status_code == 413
    assert too_many.json()["error"]["param"] == "documents"
    assert f"max_documents_per_request={MAX_DOCUMENTS}" in too_many.json()["error"]["message"]
    tei = server.post("/rerank", {"query": "q", "texts": ["d"] * (MAX_DOCUMENTS + 1)})
    assert (tei.status_code, tei.json()["error"]["param"]) == (413, "texts")
    big = server.post("/rerank", seed_body(documents=["x" * 1000] * 40))
    assert big.status_code == 413
    assert big.json()["error"] == {
        "message": f"request body too large: {len(big.request.content)} bytes exceed max_request_body_bytes="
        f"{MAX_BODY} (general_settings in the server's config); send fewer or shorter documents",
        "type": "request_too_large", "param": "body", "code": "413",
    }  # fmt: skip

    def chunks() -> Iterator[bytes]:  # no Content-Length: the streamed size is counted
        yield b'{"model": "bge-reranker-base", "query": "q", "documents": ['
        for _ in range(20):
            yield b'"' + b"y" * 2000 + b'",'
        yield b'"z"]}'

    streamed = httpx.post(server.url + "/rerank", content=chunks(), headers=server.headers())
    assert "content-length" not in streamed.request.headers
    assert streamed.status_code == 413
    assert f"more than {MAX_BODY} bytes" in streamed.json()["error"]["message"]


def test_backend_failures_are_502_and_503_without_secrets(server: LiveServer) -> None:
    failed = server.post("/rerank", seed_body(model="broken-tei"))
    assert failed.status_code == 502
    error = failed.json()["error"]
    assert error["type"] == "backend_error" and "TEI endpoint" in error["message"] and "500" in error["message"]
    assert UPSTREAM_KEY not in failed.text
    unreachable = server.post("/rerank", seed_body(model="unreachable"))
    assert unreachable.status_code == 503
    assert unreachable.json()["error"]["type"] == "service_unavailable"
    assert "could not be reached" in unreachable.json()["error"]["message"]


def test_health_checks_each_model(server: LiveServer) -> None:
    report = server.get("/health").json()
    assert report["healthy_count"] == 4 and report["unhealthy_count"] == 2
    assert [e["model_name"] for e in report["healthy_endpoints"]] == NAMES[:4]
    assert {e["model_name"] for e in report["unhealthy_endpoints"]} == {"broken-tei", "unreachable"}
    assert all(e["backend"] == "local" for e in report["healthy_endpoints"])
    assert UPSTREAM_KEY not in json.dumps(report)


def test_models_list_and_openapi(server: LiveServer) -> None:
    models = server.get("/v1/models")
    assert [m["id"] for m in models.json()["data"]] == NAMES
    assert UPSTREAM_KEY not in models.text and MASTER_KEY not in models.text
    spec = server.get("/openapi.json", key=None).json()
    for path in ("/rerank", "/v1/rerank", "/v2/rerank", "/models/{model_name}/rerank", "/health/liveliness"):
        assert path in spec["paths"]
    assert "query" in json.dumps(spec["paths"]["/v2/rerank"]["post"]["requestBody"])
    assert server.get("/docs", key=None).status_code == 200


def test_logs_hold_one_line_per_request_and_no_secrets(server: LiveServer, caplog: pytest.LogCaptureFixture) -> None:
    secret_document = f"private document {uuid.uuid4()}"
    wrong_key = f"sk-guess-{uuid.uuid4()}"
    with caplog.at_level(logging.DEBUG):
        responses = [
            server.post("/rerank", seed_body(documents=[secret_document, "other"])),
            server.post("/v1/rerank", seed_body(), key=wrong_key),
            server.post("/rerank", seed_body(model="broken-tei", documents=[secret_document])),
            server.post("/rerank", {"query": secret_document, "texts": [secret_document, 5]}),
            server.get("/health"),
        ]
    ids = [response.headers["x-request-id"] for response in responses]
    deadline = time.monotonic() + 10  # the server logs after the last byte is sent, in its own thread
    while not all(any(r.getMessage().startswith(i) for r in caplog.records) for i in ids):
        assert time.monotonic() < deadline, "access log lines missing"
        time.sleep(0.01)
    text = caplog.text
    for secret in (MASTER_KEY, UPSTREAM_KEY, wrong_key, secret_document):
        assert secret not in text
    assert "Traceback" not in text
    access = [r.getMessage() for r in caplog.records if r.name == "dheera_local.server"]
    for request_id, response in zip(ids, responses, strict=True):
        lines = [line for line in access if line.startswith(request_id + " ")]
        assert len(lines) == 1
        assert f" {response.status_code} " in lines[0]


# The seed docs' proxy section, end to end: config.yaml, one command, curl ------------------------


def test_the_seed_proxy_section_with_curl(hub_cache: Path, tmp_path: Path) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    config = tmp_path / "config.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: bge-reranker-base\n"
        "    dheera_ai_params:\n"
        "      model: huggingface/tiny-org/tiny-xlmr-reranker\n"
        "      api_key: os.environ/HF_TOKEN\n"
        "  - model_name: bge-reranker-large\n"
        "    dheera_ai_params:\n"
        "      model: huggingface/tiny-org/tiny-bert-reranker\n"
        "      api_key: os.environ/HF_TOKEN\n"
    )
    port = closed_port()
    env = {**os.environ, "HF_TOKEN": "hf_xxxxxx", "DHEERA_AI_API_KEY": MASTER_KEY, "HF_HUB_CACHE": str(hub_cache)}
    command = [sys.executable, "-m", "dheera_local", "--config", str(config), "--host", "127.0.0.1"]
    command += ["--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", process)
        seed_curl = f"""curl -s http://localhost:{port}/rerank \\
  -H "Content-Type: application/json" \\
  -H "Authorization: Bearer $DHEERA_AI_API_KEY" \\
  -d '{json.dumps(seed_body(), indent=4)}'"""
        result = subprocess.run(["bash", "-c", seed_curl], env=env, capture_output=True, text=True, timeout=60)
        answer = json.loads(result.stdout)
        assert len(answer["results"]) == 3
        assert answer["meta"]["dheera_local"]["backend"] == "local"
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    # uvicorn re-raises the signal after its graceful shutdown, so the status says "terminated by SIGTERM".
    assert process.returncode in (0, -signal.SIGTERM), err
    assert "stopped: queues drained, clients closed" in err
    assert f"RUNNING on http://127.0.0.1:{port} (models: bge-reranker-base, bge-reranker-large)" in err
    assert " POST /rerank 200 " in err
    assert MASTER_KEY not in err + out and "hf_xxxxxx" not in err + out
