"""A real ``redis-server`` (or ``valkey-server``) for the shared-cache tests: started on a free loopback
port or a unix socket in a temporary folder, persistence off, killed when done.

No in-process fake: the tests exercise redis-py against the server replicas would share.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

BINARIES = ("redis-server", "valkey-server")


def server_binary() -> str | None:
    """The path of redis-server (or valkey-server), or None when neither is installed."""
    for name in BINARIES:
        found = shutil.which(name) or (f"/usr/bin/{name}" if os.access(f"/usr/bin/{name}", os.X_OK) else None)
        if found:
            return found
    return None


NOT_INSTALLED = "redis-server is not installed (apt-get install redis-server; .ci/run installs it in CI)"


def skip_without_server() -> None:
    """Skip the calling test (or fixture) where neither binary is installed."""
    if server_binary() is None:
        pytest.skip(NOT_INSTALLED)


@contextmanager
def running_server(folder: Path) -> Iterator[RedisServer]:
    """A started server on a loopback port, killed afterwards; the test is skipped where none is installed."""
    skip_without_server()
    server = RedisServer(folder).start()
    try:
        yield server
    finally:
        server.kill()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """One redis-server process; ``url`` is what ``DHEERA_CACHE_URL`` would say."""

    def __init__(self, folder: Path, *, unix: bool = False, password: str | None = None) -> None:
        binary = server_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        folder.mkdir(parents=True, exist_ok=True)
        self.password = password
        args = [binary, "--save", "", "--appendonly", "no", "--dir", str(folder), "--bind", "127.0.0.1"]
        if unix:
            self.socket_path = folder / "redis.sock"
            args += ["--port", "0", "--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
            self.url = f"unix://{self.socket_path}?db=0"
        else:
            self.port = _free_port()
            args += ["--port", str(self.port)]
            auth = f":{password}@" if password else ""
            self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        if password:
            args += ["--requirepass", password]
        self._args = args
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> RedisServer:
        self.process = subprocess.Popen(self._args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.process.stderr.read().decode()[-2000:]}")
            try:
                if self.client().ping():
                    return self
            except redis.RedisError:
                time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def pause(self) -> None:
        """Stop the process (SIGSTOP): connections stay open, nothing answers (a slow tier)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """Kill the process (a crashed tier); idempotent."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(10)
