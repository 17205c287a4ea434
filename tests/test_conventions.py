"""Conventions users bring from TEI, infinity, LiteLLM, the cohere SDK and the ``hf`` CLI."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import dheera_local
from conftest import closed_port
from dheera_local import Reranker
from dheera_local._remote.http import retry_after
from dheera_local.testing import install_in_hub_cache
from loopback import Fault, Servers
from server_harness import wait_until_ready

QUERY = "capital city"
DOCS = ["washington is the capital", "a river in france", "tokyo"]


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dheera_local", *args], capture_output=True, text=True,
        env={**os.environ, **(env or {})}, timeout=300,
    )  # fmt: skip


def test_version_typed_marker_and_project_urls() -> None:
    done = cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"dheera-local {dheera_local.__version__}"
    assert importlib.resources.files("dheera_local").joinpath("py.typed").is_file()
    urls = dict(url.split(", ", 1) for url in importlib.metadata.metadata("dheera_local").get_all("Project-URL"))
    assert {"Homepage", "Documentation", "Issues"} <= set(urls)


def test_serve_flags_come_from_the_environment(tiny_bert: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"model_list:\n  - model_name: m\n    dheera_ai_params:\n      model: {tiny_bert}\n")
    port = closed_port()
    env = {**os.environ, "DHEERA_CONFIG": str(config), "DHEERA_PORT": str(port), "DHEERA_HOST": "127.0.0.1",
           "DHEERA_LOG_FORMAT": "json"}  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "dheera_local", "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", process)
        assert (
            httpx.post(f"http://127.0.0.1:{port}/rerank", json={"query": QUERY, "documents": DOCS}).status_code == 200
        )
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    running = [line for line in lines if "RUNNING on" in line["message"]]
    assert running and running[0]["level"] == "INFO" and running[0]["name"] == "dheera_local.server"
    assert any(" POST /rerank 200 " in line["message"] for line in lines)
    # The request's fields are keys of its line too, not only words of the message.
    request = next(line for line in lines if line.get("route") == "/rerank")
    assert (request["status"], request["model"], request["documents"], request["backend"]) == (200, "m", 3, "local")
    bad = cli("serve", env={"DHEERA_CONFIG": str(config), "DHEERA_PORT": "not-a-port"})
    assert bad.returncode == 2 and bad.stderr == "error: DHEERA_PORT='not-a-port' is not a TCP port (1-65535)\n"


def test_log_lines_can_be_json(tiny_bert: Path) -> None:
    done = cli("--log-format", "json", "-v", "rerank", "--model", str(tiny_bert), "--query", QUERY, *DOCS)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stderr.splitlines() if line.strip()]
    assert any(r["name"] == "dheera_local" and r["message"].startswith("loaded ") for r in records)
    assert all({"asctime", "level", "name", "message"} <= set(r) for r in records)


def test_the_cohere_key_goes_to_cohere_only(monkeypatch: pytest.MonkeyPatch, servers: Servers, tiny_bert: Path) -> None:
    monkeypatch.setenv("CO_API_KEY", "co-secret-key-123")
    seen: list[str | None] = []

    def cohere_api(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"results": [{"index": i, "relevance_score": 0.5} for i in range(len(DOCS))]})

    reranker = Reranker(transport=httpx.MockTransport(cohere_api))
    assert reranker.rerank("rerank-v3.5", QUERY, DOCS, api_base="https://api.cohere.com/v2").backend == "cohere"
    assert seen == ["Bearer co-secret-key-123"]
    other = servers.cohere(tiny_bert)  # a Cohere-compatible server that is not Cohere's: no Cohere key for it
    assert Reranker().rerank("my-reranker", QUERY, DOCS, api_base=other.url).backend == "cohere"
    assert "authorization" not in other.scoring()[-1].headers
    with_key = Reranker().rerank("my-reranker", QUERY, DOCS, api_base=other.url, api_key="own-key", cache=False)
    assert with_key.backend == "cohere" and other.scoring()[-1].headers["authorization"] == "Bearer own-key"


def test_retry_after_ms_is_honoured_before_retry_after(servers: Servers, tiny_bert: Path) -> None:
    assert retry_after(httpx.Headers({"retry-after-ms": "250", "retry-after": "30"})) == 0.25
    assert retry_after(httpx.Headers({"retry-after-ms": "soon", "retry-after": "3"})) == 3.0
    assert retry_after(httpx.Headers({})) is None
    tei = servers.tei(tiny_bert)
    tei.fail(Fault(429, headers={"retry-after-ms": "300", "Retry-After": "30"}))
    started = time.monotonic()
    response = Reranker().rerank("huggingface/org/x", QUERY, DOCS, api_base=tei.url, cache=False)
    waited = time.monotonic() - started
    assert response.backend == "tei" and len(tei.scoring()) == 2
    assert 0.3 <= waited < 10  # the 300 ms asked for, not Retry-After's 30 s


PULL_THEN_BARS = """
import sys
from dheera_local.cli import main
main(["pull", "org/not-here"])  # offline: fails, having set up logging as every command does
from huggingface_hub.utils import are_progress_bars_disabled
print(are_progress_bars_disabled())
"""


def test_pull_keeps_the_download_progress_bar() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PULL_THEN_BARS], capture_output=True, text=True, timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.stdout.strip().splitlines()[-1] == "False", done.stderr


def test_models_lists_every_cross_encoder_in_the_hf_cache(tiny_bert: Path, hub_cache: Path, tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    install_in_hub_cache(tiny_bert, "other-org/extra-reranker", cache, revision="9" * 40)
    embedder = tmp_path / "embedder"
    embedder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        (embedder / name).write_bytes((tiny_bert / name).read_bytes())
    config = json.loads((tiny_bert / "config.json").read_text())
    (embedder / "config.json").write_text(json.dumps({**config, "architectures": ["BertModel"]}))
    install_in_hub_cache(embedder, "other-org/an-embedder", cache, revision="8" * 40)
    done = cli("models", "--json", env={"HF_HUB_CACHE": str(cache)})
    assert done.returncode == 0, done.stderr
    rows = {row["model"]: row for row in json.loads(done.stdout)}
    extra = rows["other-org/extra-reranker"]
    assert (extra["source"], extra["revision"], extra["local"]) == ("hf-cache", "9" * 40, True)
    assert extra["size_bytes"] > 0
    assert "other-org/an-embedder" not in rows  # not a cross-encoder
    assert rows["BAAI/bge-reranker-base"]["source"] == "models.txt"
    table = cli("models", env={"HF_HUB_CACHE": str(cache)}).stdout
    assert "other-org/extra-reranker" in table and "(999999999999)" in table
