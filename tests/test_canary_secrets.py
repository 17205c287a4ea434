"""A canary-secret sweep: a unique token in every secret slot, every error path driven, every output searched.

The slots: ``HF_TOKEN`` (with a trailing newline, as a mounted secret file has it), ``CO_API_KEY``, config.yaml
``os.environ/`` keys (trailing newline), ``api_key=`` (trailing whitespace, characters that escaping and
percent-encoding change), the master key (trailing newline), URL userinfo (refused) and a key with a
control character inside (refused). The paths: an unreachable host, 401, 500, 503, a redirect to a URL
holding the key, a body that is not JSON, a JSON body of the wrong shape — from an upstream that echoes the
request's ``Authorization`` back in its body and headers, raw and in other spellings. At INFO and DEBUG
(httpx and httpcore included), through the SDK (sync and async) and a real ``dheera-local serve`` process.

A canary fails the test if it appears — raw, repr/JSON-escaped, percent-encoded, base64-encoded (the token,
and ``user:password`` as Basic auth sends it), or as a 12-character piece — in any answer (body and headers),
any log (caplog, the server process's stderr), any exception (message, repr, ``__cause__``/``__context__``
chain, each attempt of an AllBackendsFailedError) or ``/metrics``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest

import dheera_local
from conftest import closed_port
from dheera_local import ConfigError, InvalidRequestError, Reranker
from dheera_local.server import parse_config
from loopback import FAST, call
from server_harness import wait_until_ready

# Printable ASCII that escaping, JSON and percent-encoding each spell differently.
AWKWARD = "/+=%'\"\\:@?&#"


def canary(slot: str, awkward: bool = False) -> str:
    return f"cnry{slot}{uuid.uuid4().hex}" + (AWKWARD if awkward else "")


HF_ENV = canary("hfenv")
CO_ENV = canary("coenv")
CONFIG_KEY = canary("config")
SDK_KEY = canary("sdkkey", awkward=True)
MASTER = canary("master")
URL_USER, URL_PASSWORD = canary("user"), canary("pass")
CONTROL_HEAD, CONTROL_TAIL = canary("ctlhead"), canary("ctltail")
CANARIES = (HF_ENV, CO_ENV, CONFIG_KEY, SDK_KEY, MASTER, URL_USER, URL_PASSWORD, CONTROL_HEAD, CONTROL_TAIL)

MODES = ("401", "500", "503", "302", "garbage", "shape")
QUERY = "what is the capital of the united states"
DOCS = ["washington is the capital", "carson city is in nevada", "the river in paris"]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode().rstrip("=")


def spellings(secret: str) -> set[str]:
    hex_part = secret[len("cnry") :].lstrip("abcdefghijklmnopqrstuvwxyz")[:32]
    return {
        secret, repr(secret)[1:-1], json.dumps(secret)[1:-1], quote(secret, safe=""), quote_plus(secret),
        b64(secret), hex_part[:12], hex_part[-12:],
    }  # fmt: skip


FORBIDDEN = {form: secret for secret in CANARIES for form in spellings(secret)} | {
    b64(f"{URL_USER}:{URL_PASSWORD}"): "user:password",
}


def leaks(texts: list[str]) -> list[str]:
    found = []
    for text in texts:
        for form, secret in FORBIDDEN.items():
            at = text.find(form)
            if at >= 0:
                found.append(f"{secret[:10]}... as {form[:16]!r} in {text[max(at - 80, 0) : at + 40]!r}")
    return found


def exception_texts(exc: BaseException) -> list[str]:
    """str and repr of ``exc``, its chain, and the errors it lists."""
    texts, seen, stack = [], set(), [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        texts += [str(current), repr(current), *map(str, current.args)]
        stack += [current.__cause__, current.__context__]
        stack += [error for _, error in getattr(current, "attempts", [])]
    return texts


# The echoing upstream --------------------------------------------------------------------------------


@dataclass
class Echo:
    """An upstream that answers every request by ``mode``, echoing the Authorization it was sent."""

    mode: str = "401"
    seen: set[str] = field(default_factory=set)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"


class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        self._answer(None)

    def do_POST(self) -> None:  # noqa: N802
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        self._answer(json.loads(raw) if raw else None)

    def _answer(self, body: Any) -> None:
        echo: Echo = self.server.echo  # type: ignore[attr-defined]
        auth = self.headers.get("authorization", "")
        token = auth.removeprefix("Bearer ")
        echo.seen.add(token)
        said = f"you sent {auth!r} = {token} = {json.dumps(token)} = {quote(token, safe='')} = {b64(token)}"
        headers = {"X-Echo": auth}
        mode = echo.mode
        if mode == "302":
            location = f"http://127.0.0.1:1/steal?auth={quote(auth, safe='')}&raw={token}&b={b64(token)}"
            self._send(302, "", {**headers, "Location": location})
        elif mode == "garbage":
            self._send(200, f"<html>{said}</html>", {**headers, "Content-Type": "text/html"})
        elif mode == "shape":
            self._send(200, json.dumps(_wrong_shape(body, said)), {**headers, "Content-Type": "application/json"})
        else:
            self._send(int(mode), json.dumps({"error": said}), {**headers, "Content-Type": "application/json"})

    def _send(self, status: int, text: str, headers: dict[str, str]) -> None:
        data = text.encode()
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)


def _wrong_shape(body: Any, said: str) -> Any:
    """A well-formed answer of the request's format whose entries quote ``said`` (parse errors quote them)."""
    if isinstance(body, dict) and "documents" in body:  # Cohere
        return {"results": [{"index": 0, "relevance_score": said}]}
    if isinstance(body, dict) and "inputs" in body:  # HF text classification
        return [[{"label": "LABEL_0", "score": said}]] * len(body["inputs"])
    return [{"index": 0, "score": said}]  # TEI


@pytest.fixture(scope="module")
def echo() -> Iterator[Echo]:
    state = Echo()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
    server.daemon_threads = True
    server.echo = state  # type: ignore[attr-defined]
    state.server = server
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


# The SDK ---------------------------------------------------------------------------------------------


def sdk_calls(echo: Echo) -> list[tuple[str, dict[str, Any]]]:
    """Every way the SDK sends a secret: (model, options)."""
    key = SDK_KEY + " \t\n"  # surrounding whitespace, stripped when the key is read
    return [
        ("huggingface/org/echo", {"api_base": echo.url, "api_key": key}),  # TEI
        ("echo-model", {"api_base": echo.url, "api_key": key}),  # Cohere-compatible
        ("org/echo", {"api_base": echo.url, "api_key": key, "api_format": "hf"}),  # an Inference Endpoint
        ("org/echo", {}),  # HF hosted inference with HF_TOKEN (DHEERA_HF_INFERENCE_URL is the echo)
        ("huggingface/org/echo", {"api_base": f"http://127.0.0.1:{closed_port()}", "api_key": key}),  # unreachable
    ]


REFUSED = [
    {"api_base": f"http://{URL_USER}:{URL_PASSWORD}@127.0.0.1:9/", "api_key": "sk-0123456789"},
    {"api_base": f"http://{URL_USER}@127.0.0.1:9/"},
    {"api_base": "http://127.0.0.1:9/", "api_key": f"{CONTROL_HEAD}\n{CONTROL_TAIL}"},
    {"api_base": "http://127.0.0.1:9/", "api_key": f"{CONTROL_HEAD}\x1b[2J{CONTROL_TAIL}"},
]


@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG])
def test_no_canary_leaves_the_sdk(
    echo: Echo, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, level: int
) -> None:
    monkeypatch.setenv("HF_TOKEN", HF_ENV + "\n")
    monkeypatch.setenv("CO_API_KEY", CO_ENV + "\n")
    monkeypatch.setenv("DHEERA_HF_INFERENCE_URL", echo.url)
    texts: list[str] = []
    with caplog.at_level(level), caplog.at_level(level, logger="dheera_local"):
        for mode in MODES:
            echo.mode = mode
            for model, options in sdk_calls(echo):
                for how in ("sync", "async") if mode in ("401", "302") else ("sync",):
                    with pytest.raises(Exception) as caught:  # noqa: PT011 - every failure is searched below
                        call(Reranker(retry=FAST), how, model, QUERY, DOCS, backend="remote", cache=False, **options)
                    texts += exception_texts(caught.value)
        for options in REFUSED:
            with pytest.raises(InvalidRequestError) as refused:
                Reranker(retry=FAST).rerank("huggingface/org/echo", QUERY, DOCS, cache=False, **options)
            assert refused.value.field in ("api_base", "api_key")
            texts += exception_texts(refused.value)
    texts += [caplog.text, *(str(record.args) for record in caplog.records)]
    assert {SDK_KEY, HF_ENV} <= echo.seen, "the sweep must send each canary, or it proves nothing"
    if level == logging.DEBUG:
        assert any(record.name.startswith("httpcore") for record in caplog.records)
    assert not leaks(texts), "\n".join(leaks(texts))


def test_config_refusals_carry_no_canary() -> None:
    texts = []
    for params in (
        {"model": "huggingface/org/echo", "api_base": f"https://{URL_USER}:{URL_PASSWORD}@example.com"},
        {"model": "org/echo", "api_base": "https://example.com", "api_key": f"{CONTROL_HEAD}\r{CONTROL_TAIL}"},
    ):
        with pytest.raises(ConfigError) as caught:
            parse_config({"model_list": [{"model_name": "m", "dheera_ai_params": params}]})
        assert "dheera_ai_params.api_" in str(caught.value)
        texts += exception_texts(caught.value)
    assert not leaks(texts), "\n".join(leaks(texts))


# The proxy, a real process ---------------------------------------------------------------------------


def proxy_config(echo: Echo, folder: Path) -> Path:
    unreachable, key = f"http://127.0.0.1:{closed_port()}", "os.environ/UPSTREAM_KEY"
    entries = {
        "tei": {"model": "huggingface/org/echo", "api_base": echo.url, "api_key": key},
        "cohere": {"model": "echo-model", "api_base": echo.url, "api_key": key},
        "endpoint": {"model": "org/echo", "api_base": echo.url, "api_format": "hf", "api_key": key},
        "hosted": {"model": "org/echo", "backend": "remote"},
        "unreachable": {"model": "huggingface/org/echo", "api_base": unreachable, "api_key": key},
    }  # fmt: skip
    data = {
        "model_list": [{"model_name": name, "dheera_ai_params": params} for name, params in entries.items()],
        "general_settings": {"master_key": "os.environ/PROXY_KEY", "cache": False, "num_retries": 0},
    }
    path = folder / "config.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def run_proxy(echo: Echo, tmp_path: Path, verbosity: str) -> tuple[list[str], str]:
    """Start ``dheera-local serve``, drive every model through every mode; the answers and the stderr."""
    port = closed_port()
    env = {
        **os.environ, "UPSTREAM_KEY": CONFIG_KEY + "\n", "PROXY_KEY": MASTER + "\n", "HF_TOKEN": HF_ENV + " \n",
        "CO_API_KEY": CO_ENV, "DHEERA_HF_INFERENCE_URL": echo.url, "PYTHONUNBUFFERED": "1",
    }  # fmt: skip
    command = [sys.executable, "-m", "dheera_local", verbosity, "serve", "--config", str(proxy_config(echo, tmp_path))]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url, auth, texts = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {MASTER}"}, []
    try:
        wait_until_ready(url, process)
        with httpx.Client(base_url=url, headers=auth, timeout=60) as client:
            for mode in MODES:
                echo.mode = mode
                for model in ("tei", "cohere", "endpoint", "hosted", "unreachable"):
                    answer = client.post("/v1/rerank", json={"model": model, "query": QUERY, "documents": DOCS})
                    assert answer.status_code in (502, 503), answer.text  # the stripped master key was accepted
                    texts += [answer.text, str(answer.headers)]
            for path in ("/health", "/metrics", "/v1/models", "/x%0aINFO%20dheera_local.server:%20FORGED%1b[2J"):
                answer = client.get(path)
                texts += [answer.text, str(answer.headers)]
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    return texts, stderr


@pytest.mark.parametrize("verbosity", ["-v", "-vv"])
def test_no_canary_leaves_the_proxy(echo: Echo, tmp_path: Path, verbosity: str) -> None:
    echo.seen.clear()
    texts, stderr = run_proxy(echo, tmp_path, verbosity)
    assert {CONFIG_KEY, HF_ENV} <= echo.seen, "the sweep must send each canary, or it proves nothing"
    assert CO_ENV not in echo.seen  # Cohere's key goes to Cohere's API only
    assert " POST /v1/rerank 502 " in stderr  # the request log was captured
    if verbosity == "-vv":
        assert "httpcore" in stderr  # and at DEBUG, the HTTP stack's own records
    assert not leaks([*texts, stderr]), "\n".join(leaks([*texts, stderr]))
    # The forged line stays inside the request's own line, escaped; no raw escape byte reaches the log.
    assert not any(line.startswith("INFO dheera_local.server: FORGED") for line in stderr.splitlines())
    assert "GET /x\\nINFO dheera_local.server: FORGED\\x1b[2J 404 " in stderr
    assert "\x1b" not in stderr


# The pattern the sweep once caught, refused where it is written --------------------------------------------


def test_no_error_is_raised_inside_an_except_that_holds_a_validation_error() -> None:
    # pydantic's ValidationError quotes the input (an api_key, a document). An error raised inside its except
    # block keeps it as __context__ (``from None`` only hides it from the default printer), so every traceback
    # formatter, Sentry or a log's exc_info would show the secret. Refusals are raised after the block.
    import ast

    package = Path(dheera_local.__file__).parent
    raising = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.ExceptHandler)
                and node.type is not None
                and "ValidationError" in ast.unparse(node.type)
            ):
                raising += [
                    f"{path.relative_to(package)}:{inner.lineno}"
                    for statement in node.body
                    for inner in ast.walk(statement)
                    if isinstance(inner, ast.Raise)
                ]
    assert raising == []
