"""Hostile clients and faults against the proxy: a real uvicorn server on loopback (a real process where
memory is measured). Each test pins a promise of the README's "Security and limits"."""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import closed_port
from loopback import Fault, LoopbackServer, Servers
from server_harness import MASTER_KEY, LiveServer, wait_until_ready

TOKEN = f"hf_{uuid.uuid4().hex}"  # the server process's HF_TOKEN; no other module registers it
DOCS = ["washington is the capital", "carson city is in nevada", "the river in paris"]


@pytest.fixture(scope="module")
def upstream() -> Iterator[Servers]:
    with Servers() as servers:
        yield servers


@pytest.fixture(scope="module")
def hosted(upstream: Servers, tiny_bert: Path) -> LoopbackServer:
    """HF hosted inference (tests make it quote the caller's token back in a malformed answer)."""
    return upstream.hf({"tiny-org/remote-only": tiny_bert})


@pytest.fixture(scope="module")
def server(
    hub_cache: Path, tiny_bert: Path, hosted: LoopbackServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    data = {
        "model_list": [
            {"model_name": "local", "dheera_ai_params": {"model": str(tiny_bert), "dtype": "float32"}},
            {"model_name": "hosted", "dheera_ai_params": {"model": "tiny-org/remote-only", "backend": "remote"}},
        ],
        "general_settings": {"master_key": MASTER_KEY, "cache": False, "num_retries": 0},
    }
    with pytest.MonkeyPatch.context() as env:  # the server reads its settings when it is made
        env.setenv("HF_HUB_CACHE", str(hub_cache))
        # Module fixtures are made before each test's isolated_env: the cache folder (kernel verdicts) too.
        env.setenv("DHEERA_CACHE_DIR", str(tmp_path_factory.mktemp("module-cache")))
        env.setenv("HF_TOKEN", TOKEN)
        env.setenv("DHEERA_HF_INFERENCE_URL", hosted.url)
        live = LiveServer(data).start()
        yield live
        live.stop()


# A huge query ----------------------------------------------------------------------------------------


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_megabyte_query_is_refused_and_the_server_stays_small(tiny_bert: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"model_list:\n  - model_name: m\n    dheera_ai_params:\n      model: {tiny_bert}\n")
    port = closed_port()
    command = [sys.executable, "-m", "dheera_local", "serve", "--config", str(config), "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/rerank"
    docs = [f"document {i} about the river" for i in range(1000)]
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", process)
        warm = httpx.post(url, json={"query": "paris " * 300, "documents": docs}, timeout=300)
        assert warm.status_code == 200, warm.text
        before = peak_rss_mb(process.pid)
        huge = httpx.post(url, json={"query": "paris " * 166666, "documents": docs}, timeout=300)
        assert huge.status_code == 400
        assert huge.json()["error"]["param"] == "query" and "limit is 100,000" in huge.json()["error"]["message"]
        longest = httpx.post(url, json={"query": ("paris " * 20000)[:99_999], "documents": docs}, timeout=300)
        assert longest.status_code == 200 and len(longest.json()["results"]) == 1000
        growth = peak_rss_mb(process.pid) - before
        assert growth < 300, f"the server's peak RSS grew {growth:.0f} MB"
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)


# Bodies ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [300, 5000])
def test_json_nested_too_deep_is_400(server: LiveServer, depth: int) -> None:
    raw = '{"query": "q", "documents": ["a"], "x": ' + "[" * depth + "]" * depth + "}"
    response = httpx.post(
        server.url + "/rerank", content=raw, headers={**server.headers(), "content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "body"


@pytest.mark.parametrize(
    ("field", "value"), [("top_n", True), ("top_n", "3"), ("top_n", 2.5), ("return_documents", "yes")]
)
def test_non_integers_and_non_booleans_are_refused(server: LiveServer, field: str, value: Any) -> None:
    response = server.post("/v1/rerank", {"model": "local", "query": "q", "documents": DOCS, field: value})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == field


def test_lone_surrogates_are_400_naming_the_field(server: LiveServer) -> None:
    raw = '{"model": "local", "query": "capital", "documents": ["a", "b\\udcff"]}'
    response = httpx.post(
        server.url + "/rerank", content=raw, headers={**server.headers(), "content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "documents[1]"


def test_auth_is_checked_before_the_body_is_read(server: LiveServer) -> None:
    # A declared 5 MB body (under the limit) that never comes: a wrong key must be answered at once.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /rerank HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
            b"Content-Type: application/json\r\nContent-Length: 5000000\r\n\r\n{"
        )
        answer = b""
        while b'"code":"401"' not in answer.replace(b" ", b""):  # the head and the body may come apart
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        answer = answer.decode("latin-1")
    assert answer.startswith("HTTP/1.1 401"), answer[:200]
    assert '"type":"authentication_error"' in answer.replace(" ", "")


# Secrets ----------------------------------------------------------------------------------------------


def test_the_hf_token_of_the_environment_never_reaches_an_answer_or_a_log(
    server: LiveServer, hosted: LoopbackServer, caplog: pytest.LogCaptureFixture
) -> None:
    echo = [{"label": "LABEL_0", "score": f"token was {TOKEN}"}]
    with caplog.at_level(logging.INFO):
        hosted.always = Fault(200, body=[echo] * len(DOCS))  # a value quoted by the parse error
        failed = server.post("/v1/rerank", {"model": "hosted", "query": "q", "documents": DOCS})
        hosted.always = Fault(200, body=[echo])  # the health check sends one pair
        health = server.get("/health")
    assert failed.status_code == 502 and "bad label entry" in failed.text, failed.text
    assert hosted.scoring()[-1].headers["authorization"] == f"Bearer {TOKEN}"  # it was sent, and echoed
    unhealthy = {entry["model_name"]: entry for entry in health.json()["unhealthy_endpoints"]}
    assert "bad label entry" in unhealthy["hosted"]["error"]
    for text in (failed.text, health.text, caplog.text):
        assert TOKEN[:12] not in text and TOKEN[-12:] not in text


# Shutdown ---------------------------------------------------------------------------------------------


def test_requests_running_past_the_graceful_shutdown_get_a_json_503(
    servers: Servers, tiny_bert: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tei = servers.tei(tiny_bert)
    tei.always = Fault(delay=20.0)
    data = {
        "model_list": [
            {"model_name": "slow", "dheera_ai_params": {"model": "huggingface/x/slow", "api_base": tei.url}}
        ],
        "general_settings": {"master_key": MASTER_KEY, "cache": False, "num_retries": 0},
    }
    live = LiveServer(data, graceful_timeout=1).start()
    answers: list[httpx.Response] = []
    client = threading.Thread(target=lambda: answers.append(live.post("/rerank", {"query": "q", "documents": DOCS})))
    with caplog.at_level(logging.INFO):
        client.start()
        deadline = time.monotonic() + 10
        while not tei.scoring() and time.monotonic() < deadline:
            time.sleep(0.05)
        live.stop()
        client.join(30)
    assert answers, "the client got no answer"
    assert answers[0].status_code == 503, answers[0].text
    assert answers[0].json()["error"]["type"] == "service_unavailable"
    assert "Exception in ASGI application" not in caplog.text and "Traceback" not in caplog.text
