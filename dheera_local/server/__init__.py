"""The rerank proxy server (``pip install dheera_local[server]``; ``dheera-local serve --config ...``).

One concept per module; data flows one way, routes -> service -> orchestrator -> backends::

    config.py      config.yaml -> ServerConfig (os.environ/VAR, litellm_params alias, key paths)
    registry.py    model_name -> rerank() arguments, planned at startup (a repeated name: a group)
    routing.py     a group's deployments in weighted random order, rpm, fallbacks (LiteLLM's router)
    schemas.py     Cohere v1 / v2 and TEI bodies
    auth.py        Authorization: Bearer <master key>, constant-time
    keys.py        several API keys: name, models, rpm
    errors.py      exception -> status + {"error": {...}}; secret redaction
    middleware.py  request id + one log line; body size limit
    service.py     a parsed body -> Reranker -> Cohere or TEI answer
    coalescing.py  identical requests in flight computed once
    health.py      GET /health
    routes.py      the routes, thin
    state.py       what a running app owns (Reranker, micro-batchers)
    micro_batching.py  concurrent requests for one local model share forward passes
    app.py         create_app(config) and its lifespan
    run.py         serve(): bind rules, uvicorn, graceful shutdown
"""

from .app import create_app
from .config import ServerConfig, load_config, parse_config

__all__ = ["ServerConfig", "create_app", "load_config", "parse_config"]
