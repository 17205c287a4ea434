"""A real dheera-local server on a loopback port, in a thread of the test process.

``LiveServer(config)`` builds the app with :func:`create_app`, runs uvicorn on a socket bound to
127.0.0.1:0, waits until it accepts requests, and shuts it down (gracefully) on ``stop()``.
The app object is reachable, so tests read the batchers' own stats from ``server.state``.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from typing import Any

import httpx
import uvicorn

from dheera_local.server import create_app, parse_config
from dheera_local.server.state import ServerState

MASTER_KEY = "sk-test-master-key-0123456789"


class LiveServer:
    """uvicorn serving ``create_app(parse_config(data))`` on 127.0.0.1, in a daemon thread."""

    def __init__(self, data: dict[str, Any], *, graceful_timeout: int = 30) -> None:
        self.config = parse_config(data, source="test-config.yaml")
        self.app = create_app(self.config)
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on such sockets; without it every
        # response waits ~40 ms for a delayed ACK (Nagle), as uvicorn writes headers and body apart.
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        uv_config = uvicorn.Config(
            self.app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=graceful_timeout
        )
        self.server = uvicorn.Server(uv_config)
        self._thread = threading.Thread(target=self._run, name="live-server", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self.server.serve(sockets=[self._socket]))
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self.error = exc

    def start(self, timeout: float = 60.0) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if self.error is not None or not self._thread.is_alive():
                raise RuntimeError(f"server did not start: {self.error!r}")
            if time.monotonic() > deadline:
                raise TimeoutError("server did not start in time")
            time.sleep(0.02)
        return self

    @property
    def state(self) -> ServerState:
        return self.app.state.dheera

    def headers(self, key: str | None = MASTER_KEY) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"} if key else {}

    def post(
        self, path: str, body: Any, key: str | None = MASTER_KEY, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        return httpx.post(self.url + path, json=body, headers={**self.headers(key), **(headers or {})}, timeout=60)

    def get(self, path: str, key: str | None = MASTER_KEY) -> httpx.Response:
        return httpx.get(self.url + path, headers=self.headers(key), timeout=60)

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)
        self._socket.close()


def wait_until_ready(url: str, process: subprocess.Popen[str], timeout: float = 90.0) -> None:
    """Wait until a server started as ``process`` answers its readiness probe."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = process.stderr.read() if process.stderr else ""
            raise AssertionError(f"server exited with {process.returncode}: {stderr}")
        try:
            if httpx.get(url + "/health/readiness", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become ready")
