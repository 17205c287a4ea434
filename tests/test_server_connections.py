"""Slow clients cannot hold the proxy (issue 26, 4): a request head or body that trickles in is cut off,
and connections beyond the cap are answered 503 and closed, so file descriptors stay bounded.

A real proxy subprocess under a 256-file limit (the issue's setup), 300 slow-header sockets.
"""

from __future__ import annotations

import contextlib
import json
import resource
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import closed_port
from dheera_local.server.config import parse_config
from dheera_local.server.connections import default_max_connections
from dheera_local.server.run import connection_limits
from server_harness import wait_until_ready

FILE_LIMIT = 256
HEADER_TIMEOUT = 8  # seconds (the default is 10): long enough to open 300 sockets on a loaded CI machine
PARTIAL_HEAD = b"GET /health/liveness HTTP/1.1\r\nHost: x\r\n"  # never finished


def _limit_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FILE_LIMIT, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


class Proxy:
    """The server process, its URL, and its stderr as read so far (read in a thread: a full pipe would block
    the server's logging, and with it the server)."""

    def __init__(self, process: subprocess.Popen[str], port: int) -> None:
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=lambda: self.stderr.extend(process.stderr or []), daemon=True)

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        self._reader.join(timeout=10)
        return "".join(self.stderr)


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    config = tmp_path / "config.yaml"
    # A remote model that is never called: the probes only need the process to answer.
    config.write_text("model_list:\n  - model_name: m\n    dheera_ai_params:\n"
                      f"      model: tei/x\n      api_base: http://127.0.0.1:{closed_port()}\n")  # fmt: skip
    port = closed_port()
    command = [sys.executable, "-m", "dheera_local", "serve", "--config", str(config), "--port", str(port),
               "--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(HEADER_TIMEOUT)]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=_limit_files
    )
    server = Proxy(process, port)
    try:
        wait_until_ready(server.url, process)
        server._reader.start()
        yield server
    finally:
        if process.poll() is None:
            server.stop()


def _slow_socket(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(PARTIAL_HEAD)
    return sock


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a socket it never closes times out: the test fails)."""
    chunks = []
    with contextlib.suppress(ConnectionResetError):  # a refused socket that sent more is reset after its 503
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    sock.close()
    return b"".join(chunks)


def test_slow_header_sockets_are_closed_and_the_cap_answers_503(proxy: Proxy) -> None:
    url, port = proxy.url, proxy.port
    cap = FILE_LIMIT // 2  # the default: half the open-file limit
    slow = [_slow_socket(port) for _ in range(100)]
    assert httpx.get(url + "/health/liveness", timeout=10).status_code == 200  # served beside 100 slow sockets
    slow += [_slow_socket(port) for _ in range(200)]  # 300 in all: past the cap
    refused = httpx.get(url + "/health/liveness", timeout=10)
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["type"] == "service_unavailable"
    for sock in slow:
        with contextlib.suppress(OSError):  # refused ones are closed already
            sock.sendall(b"X-Trickle: 1\r\n")  # a line now and then must not extend the deadline
    answers = [_answer(sock) for sock in slow]
    timed_out = [a for a in answers if a.startswith(b"HTTP/1.1 408 ")]
    over_cap = [a for a in answers if a.startswith(b"HTTP/1.1 503 ")]
    assert len(timed_out) + len(over_cap) == 300
    assert 100 <= len(timed_out) <= cap and len(over_cap) >= 300 - cap
    body = json.loads(over_cap[0].split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "503" and "retry shortly" in body["error"]["message"]
    assert httpx.get(url + "/health/liveness", timeout=10).status_code == 200  # all closed: served again
    stderr = proxy.stop()
    assert "Too many open files" not in stderr and "no complete request head in 8s (header_timeout)" in stderr


def test_a_trickled_body_is_cut_off(proxy: Proxy) -> None:
    url = proxy.url
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
    sock.sendall(b"POST /rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
    assert _answer(sock) == b""  # closed without an answer once body_timeout passed; the handler saw a disconnect
    assert httpx.get(url + "/health/liveness", timeout=10).status_code == 200
    assert "its request body took over 8s (body_timeout)" in proxy.stop()


def test_limits_come_from_general_settings_with_documented_defaults() -> None:
    entry = {"model_name": "m", "dheera_ai_params": {"model": "tei/x", "api_base": "http://127.0.0.1:9"}}
    defaults = parse_config({"model_list": [entry]}).general_settings
    assert (defaults.header_timeout, defaults.body_timeout, defaults.keep_alive_timeout) == (10.0, 60.0, 5.0)
    limits = connection_limits(defaults)
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    expected = 1024 if soft == resource.RLIM_INFINITY else max(16, min(1024, soft // 2))
    assert limits.max_connections == default_max_connections() == expected
    custom = parse_config({"model_list": [entry], "general_settings": {"max_connections": 7, "header_timeout": 1.5}})
    assert connection_limits(custom.general_settings).max_connections == 7
    assert connection_limits(custom.general_settings).header_timeout == 1.5
