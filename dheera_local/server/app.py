"""The FastAPI application: routes, error handlers, middleware, and a lifespan that owns the resources."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from .. import __version__
from .auth import PUBLIC_PATHS, AuthGate, MasterKey
from .config import ServerConfig
from .errors import install_error_handlers
from .keys import KeyRing, key_ring
from .middleware import BodyLimit, RequestContext
from .routes import api, public
from .state import ServerState

DESCRIPTION = (
    "Cohere- and TEI-compatible rerank proxy over local cross-encoders with remote fallback. "
    'Send `Authorization: Bearer <master key>`; errors are `{"error": {message, type, param, code}}`.'
)


class Lifespan:
    """Starts :class:`ServerState` before the first request and stops it after the last one."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    @asynccontextmanager
    async def __call__(self, app: FastAPI) -> AsyncIterator[None]:
        state = self.state
        await state.start()
        app.state.dheera = state
        try:
            yield
        finally:
            await state.stop()
            app.state.dheera = None


def create_app(config: ServerConfig) -> FastAPI:
    """The app for ``config``; raises ConfigError (with the key path) when a model cannot be served.

    Models are planned here, without loading weights or calling the network; the lifespan loads
    local weights, and closes the batchers and HTTP clients on shutdown.
    """
    state = ServerState.create(config)
    app = FastAPI(title="dheera-local", version=__version__, description=DESCRIPTION, lifespan=Lifespan(state))
    install_error_handlers(app)
    app.include_router(public)
    app.include_router(api)
    key, general = config.master_key, config.general_settings
    open_paths = PUBLIC_PATHS if general.metrics_require_auth else PUBLIC_PATHS | {"/metrics"}
    master_key: MasterKey | KeyRing | None = MasterKey(key.get_secret_value()) if key is not None else None
    if general.api_keys:
        extra = [(k.key.get_secret_value(), k.name, k.models, k.rpm, k.tpm) for k in general.api_keys]
        master_key = key_ring(key.get_secret_value() if key is not None else None, extra)
    app.add_middleware(BodyLimit, max_bytes=general.max_request_body_bytes)
    app.add_middleware(AuthGate, master_key=master_key, public=open_paths)
    app.add_middleware(RequestContext)  # added last: outermost, so it logs and ids every answer
    return app
