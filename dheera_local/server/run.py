"""``dheera-local serve --config config.yaml``: bind rules, uvicorn, graceful shutdown.

Without a master key the server binds 127.0.0.1 and refuses a non-loopback ``--host`` unless
``--allow-unauthenticated`` is given; with one it binds 0.0.0.0 by default. On SIGINT/SIGTERM
uvicorn stops accepting connections, ``/health/readiness`` answers 503, in-flight requests finish
(up to ``general_settings.graceful_shutdown_timeout``), then the lifespan drains the batchers.
After that uvicorn re-raises the signal, so a SIGTERM'd server exits with status 143 (-15 to a
parent in Python) rather than 0: that is uvicorn's convention, kept so supervisors see the cause.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
from pathlib import Path
from types import FrameType

import uvicorn
from fastapi import FastAPI

from .._errors import ConfigError, DheeraError
from .._secrets import install as install_masking
from .app import create_app
from .config import GeneralSettings, load_config
from .connections import ConnectionLimits, default_backlog, default_max_connections, limited_protocol
from .state import ServerState

logger = logging.getLogger("dheera_local.server")

DEFAULT_PORT = 4000
LOOPBACK = "127.0.0.1"
ANY_HOST = "0.0.0.0"


class UnsafeBindError(DheeraError):
    """A non-loopback address without a master key and without ``--allow-unauthenticated``."""


def serve(
    config_path: str | Path,
    *,
    host: str | None = None,
    port: int = DEFAULT_PORT,
    allow_unauthenticated: bool = False,
    limits: dict[str, float] | None = None,
) -> int:
    """Run the proxy until interrupted; returns the process exit status (1 for a bad config).

    Args:
        config_path: The config.yaml (see :mod:`dheera_local.server.config`).
        host: Bind address (default: 0.0.0.0 with a master key, else 127.0.0.1).
        port: TCP port (default 4000).
        allow_unauthenticated: Allow a non-loopback ``host`` without a master key.
        limits: Overrides of ``general_settings`` connection limits (``header_timeout``, ``body_timeout``,
            ``keep_alive_timeout``, ``max_connections``), from the command line.
    """
    try:
        config = load_config(config_path)
        general = config.general_settings.model_copy(update={k: v for k, v in (limits or {}).items() if v})
        bind = bind_host(host, config.master_key is not None, allow_unauthenticated)
        app = create_app(config)
        connections = connection_limits(general)
    except (ConfigError, UnsafeBindError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    _show_request_log()
    server = ProxyServer(
        uvicorn.Config(
            app,
            host=bind,
            port=port,
            log_config=None,
            access_log=False,
            server_header=False,
            lifespan="on",
            timeout_graceful_shutdown=int(config.general_settings.graceful_shutdown_timeout),
            http=limited_protocol(connections),
            backlog=connections.backlog,
            timeout_keep_alive=general.keep_alive_timeout,  # type: ignore[arg-type] (uvicorn takes any number)
        )  # fmt: skip
    )
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits when it cannot bind or start; it has logged why
        return exc.code if isinstance(exc.code, int) else 1
    return 0 if server.started else 1


def connection_limits(general: GeneralSettings) -> ConnectionLimits:
    """The limits one connection is held to, from ``general_settings``."""
    return ConnectionLimits(
        header_timeout=general.header_timeout,
        body_timeout=general.body_timeout,
        max_connections=general.max_connections or default_max_connections(),
        backlog=default_backlog(),
    )


def bind_host(host: str | None, authenticated: bool, allow_unauthenticated: bool) -> str:
    """The address to bind, by the rule in this module's docstring."""
    if host is None:
        return ANY_HOST if authenticated else LOOPBACK
    if authenticated or is_loopback(host):
        return host
    if not allow_unauthenticated:
        raise UnsafeBindError(
            f"--host {host} would expose the server without auth: set general_settings.master_key "
            "(or DHEERA_AI_API_KEY), or pass --allow-unauthenticated if the network is trusted"
        )
    logger.warning("serving on %s without a master key (--allow-unauthenticated)", host)
    return host


def is_loopback(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 and ::1."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _show_request_log() -> None:
    # serve() owns its process: make the one-line-per-request log visible unless told otherwise.
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        install_masking(handler)  # records of every logger (uvicorn's, httpx's): secrets masked, one line each
    server_logger = logging.getLogger("dheera_local.server")
    if server_logger.getEffectiveLevel() > logging.INFO:
        server_logger.setLevel(logging.INFO)


class ProxyServer(uvicorn.Server):
    """uvicorn, announcing where it listens and marking the app as draining on a shutdown signal."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        state = self._state()
        if not self.should_exit and state is not None:
            names = ", ".join(state.registry.names)
            logger.info("RUNNING on http://%s:%d (models: %s)", self.config.host, self.config.port, names)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        state = self._state()
        if state is not None:
            state.draining = True
        super().handle_exit(sig, frame)

    def _state(self) -> ServerState | None:
        app = self.config.app
        return getattr(app.state, "dheera", None) if isinstance(app, FastAPI) else None
