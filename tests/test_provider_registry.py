"""A remote provider added from outside the package: registered through the public API, it serves
``rerank(..., api_format=<its name>)`` end to end, and the CLI, config.yaml, the settings and the fake
reranker know it, with no edit of dheera_local (the ARCHITECTURE.md recipe's proof).

The provider here, "acme", speaks a wire format none of the built-ins does: ``POST {api_base}/v1/score``
with ``{"model", "pairs": [[query, document], ...]}`` answers ``{"scores": [...]}``, raw logits in order.
Its loopback server scores by word overlap, so the expected order is known.
"""

from __future__ import annotations

import json
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import dheera_local
from conftest import run_with_plugin
from dheera_local import InvalidRequestError, Reranker, Settings, testing
from dheera_local._options import build_options
from dheera_local.providers import (
    Call,
    Endpoint,
    Provider,
    RemoteBackend,
    group_by_limits,
    provider_names,
    register_provider,
    unregister_provider,
)
from loopback import FAST, call

QUERY = "capital of france"
DOCS = ["tokyo is large", "paris is the capital of france", "the capital of spain is madrid"]
KEY = "acme-key-0123456789abcdef"


# The provider: all a third party writes ------------------------------------------------------------------


class AcmeBackend(RemoteBackend):
    """Scores through an acme ``/v1/score`` endpoint."""

    name = "acme"
    label = "acme endpoint"

    def __init__(self, endpoint: Endpoint) -> None:
        super().__init__(endpoint.clients, endpoint.retry, endpoint.api_key, endpoint.timeout)
        assert endpoint.api_base is not None
        self.url = endpoint.api_base.rstrip("/") + "/v1/score"
        self.model = endpoint.model

    def describe(self) -> dict[str, str]:
        return {"endpoint": self.url, "model": self.model}

    def split(self, query: str, texts: list[str]) -> list[list[int]]:
        return group_by_limits(query, texts, 64)

    def call_for(self, query: str, texts: list[str]) -> Call:
        body = {"model": self.model, "pairs": [[query, text] for text in texts]}
        return Call("POST", self.url, self.label, self.name, body, self.token, self.timeout)

    def parse(self, body: Any, count: int) -> list[float]:
        scores = body.get("scores") if isinstance(body, dict) else None
        if not isinstance(scores, list) or len(scores) != count:
            raise self.unexpected(self.url, f"expected {count} scores")
        return [float(score) for score in scores]


def acme(**fields: Any) -> Provider:
    return Provider("acme", AcmeBackend, description="Acme's pair-scoring API", **fields)


# Its loopback server ----------------------------------------------------------------------------------------


class AcmeServer:
    """A real HTTP server on 127.0.0.1 answering acme's ``/v1/score``; records each request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - BaseHTTPRequestHandler's name
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                owner.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                if self.path != "/v1/score":
                    return self._answer(404, {"error": "not found"})
                return self._answer(200, {"scores": [testing.word_overlap(q, d) for q, d in body["pairs"]]})

            def _answer(self, status: int, payload: Any) -> None:
                raw = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server() -> Iterator[AcmeServer]:
    started = AcmeServer()
    yield started
    started.close()


@pytest.fixture
def registered() -> Iterator[Provider]:
    """acme registered for one test, removed after it: the registry is the process's."""
    provider = acme()
    register_provider(provider)
    yield provider
    unregister_provider("acme")


def order(response: dheera_local.RerankResponse) -> list[int]:
    return [result.index for result in response.results]


# End to end --------------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("registered")
def test_an_out_of_package_provider_serves_rerank_end_to_end(server: AcmeServer) -> None:
    response = dheera_local.rerank("acme-rerank-1", QUERY, DOCS, api_format="acme", api_base=server.url, api_key=KEY)
    assert response.backend == "acme"
    assert order(response) == [1, 2, 0]  # 3 query words in document 1, 2 in document 2, none in 0
    assert response.results[0].relevance_score == pytest.approx(1 / (1 + 2.718281828459045**-3))
    path, headers, body = server.requests[-1]
    assert (path, body["model"], body["pairs"]) == ("/v1/score", "acme-rerank-1", [[QUERY, d] for d in DOCS])
    assert headers["authorization"] == f"Bearer {KEY}"
    # Its scores are cached like any remote's (under its endpoint, model and credential): no second request.
    again = dheera_local.rerank("acme-rerank-1", QUERY, DOCS, api_format="acme", api_base=server.url, api_key=KEY)
    assert (again.backend, len(server.requests)) == ("cache", 1)


@pytest.mark.usefixtures("registered")
def test_the_async_route_and_mixed_queries_serve_it_too(server: AcmeServer) -> None:
    options = {"api_format": "acme", "api_base": server.url, "cache": False}
    response = call(Reranker(retry=FAST), "async", "huggingface/org/acme-hub-model", QUERY, DOCS, **options)
    assert (response.backend, order(response)) == ("acme", [1, 2, 0])
    assert server.requests[-1][2]["model"] == "org/acme-hub-model"  # the name the endpoint knows
    with Reranker(retry=FAST) as reranker:
        pairs = [(QUERY, DOCS[1]), ("spain", DOCS[2]), (QUERY, DOCS[0])]
        scored = reranker.score_pairs("acme-rerank-1", pairs, api_format="acme", api_base=server.url, cache=False)
    assert list(scored.logits) == [3.0, 1.0, 0.0]


def test_an_unknown_api_format_is_refused_naming_the_field_and_the_registered_names(
    registered: Provider, server: AcmeServer
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        dheera_local.rerank("acme-rerank-1", QUERY, DOCS, api_format="acmee", api_base=server.url)
    assert caught.value.field == "api_format"
    assert "api_format must be one of tei, cohere, hf, acme; got 'acmee'" in str(caught.value)
    assert server.requests == []  # refused before any request
    unregister_provider("acme")
    try:
        with pytest.raises(InvalidRequestError, match="one of tei, cohere, hf; got 'acme'"):
            dheera_local.rerank("acme-rerank-1", QUERY, DOCS, api_format="acme", api_base=server.url)
    finally:
        register_provider(registered)  # the fixture removes it
    assert provider_names() == ("tei", "cohere", "hf", "acme")


@pytest.mark.usefixtures("registered")
def test_the_cli_and_config_yaml_accept_the_new_name(server: AcmeServer, capsys: pytest.CaptureFixture[str]) -> None:
    from dheera_local import cli
    from dheera_local.server import parse_config
    from dheera_local.server.registry import ModelRegistry

    status = cli.main(
        ["rerank", "--model", "acme-rerank-1", "--api-base", server.url, "--api-format", "acme", "--no-cache",
         "--query", QUERY, *DOCS]
    )  # fmt: skip
    answer = json.loads(capsys.readouterr().out)
    assert status == 0 and answer["meta"]["dheera_local"]["backend"] == "acme"
    assert [r["index"] for r in answer["results"]] == [1, 2, 0]
    params = {"model": "acme-rerank-1", "api_base": server.url, "api_format": "acme"}
    config = parse_config({"model_list": [{"model_name": "m", "dheera_ai_params": params}]})
    with Reranker(retry=FAST) as reranker:
        assert ModelRegistry.from_config(config, reranker).default.backends == ("acme",)
    bad = {"model_list": [{"model_name": "m", "dheera_ai_params": {**params, "api_format": "acmee"}}]}
    with pytest.raises(dheera_local.ConfigError, match="one of tei, cohere, hf, acme") as caught:
        parse_config(bad)
    assert caught.value.path == "model_list[0].dheera_ai_params.api_format"


@pytest.mark.usefixtures("registered")
def test_the_clis_help_lists_the_registered_names(capsys: pytest.CaptureFixture[str]) -> None:
    from dheera_local import cli

    with pytest.raises(SystemExit):
        cli.main(["rerank", "--help"])
    assert "{tei,cohere,hf,acme}" in capsys.readouterr().out


# The key from the environment, a default API ---------------------------------------------------------------


def test_the_environment_key_goes_only_where_the_provider_says(
    server: AcmeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACME_API_KEY", KEY)
    register_provider(acme(key_env=("ACME_API_KEY",), default_api_base="https://api.acme.example"))
    try:
        settings = Settings.from_env()
        assert settings.provider_keys["acme"].get_secret_value() == KEY and KEY not in repr(settings)
        assert hash(settings) == hash(Settings.from_env())  # Settings stay hashable (and equal) with the keys
        with Reranker(retry=FAST) as reranker:
            reranker.rerank("acme-rerank-1", QUERY, DOCS, api_format="acme", api_base=server.url, cache=False)
        assert "authorization" not in server.requests[-1][1]  # the loopback server is not api.acme.example
        register_provider(acme(key_env=("ACME_API_KEY",), key_hosts=lambda url: url == server.url), replace=True)
        with Reranker(retry=FAST) as reranker:
            reranker.rerank("acme-rerank-1", QUERY, DOCS, api_format="acme", api_base=server.url, cache=False)
        assert server.requests[-1][1]["authorization"] == f"Bearer {KEY}"
    finally:
        unregister_provider("acme")


def test_a_default_api_base_serves_without_one(server: AcmeServer) -> None:
    register_provider(acme(default_api_base=server.url))
    try:
        response = dheera_local.rerank("acme-rerank-1", QUERY, DOCS, api_format="acme", cache=False)
        hub = dheera_local.rerank("org/not-on-disk", QUERY, DOCS, api_format="acme", cache=False)
    finally:
        unregister_provider("acme")
    assert (response.backend, order(response), hub.backend) == ("acme", [1, 2, 0], "acme")
    assert [body["model"] for _, _, body in server.requests] == ["acme-rerank-1", "org/not-on-disk"]


# The fake reranker, the registry's rules, the Backend boundary ---------------------------------------------


def test_the_fake_reranker_makes_no_request_for_any_registered_provider(server: AcmeServer) -> None:
    def make(endpoint: Endpoint) -> AcmeBackend:
        raise AssertionError("the fake reranker made a real backend")

    register_provider(Provider("acme", make))
    try:
        reranker = testing.fake_reranker()
        for name in provider_names():
            response = reranker.rerank("org/x", QUERY, DOCS, api_format=name, api_base=server.url, cache=False)
            assert (response.backend, order(response)) == ("fake", [1, 2, 0]), name
    finally:
        unregister_provider("acme")
    assert server.requests == []


def test_registration_refuses_a_taken_or_invalid_name() -> None:
    with pytest.raises(ValueError, match="'tei' is registered already; pass replace=True"):
        register_provider(acme().__class__("tei", AcmeBackend))
    for name in ("", "Acme", "ac me", "acme/v2"):
        with pytest.raises(ValueError, match="a provider's name"):
            register_provider(Provider(name, AcmeBackend))
    with pytest.raises(KeyError):
        unregister_provider("never-registered")
    assert provider_names() == ("tei", "cohere", "hf")


class QueryAtATime:
    """A backend written against the protocol's first four methods only (no pair methods)."""

    name = "acme"

    def __init__(self, endpoint: Endpoint) -> None:
        self.calls: list[str] = []

    def score(self, query: str, texts: list[str]) -> list[float]:
        self.calls.append(query)
        return [testing.word_overlap(query, text) for text in texts]

    async def ascore(self, query: str, texts: list[str]) -> list[float]:
        return self.score(query, texts)

    def describe(self) -> dict[str, str]:
        return {"endpoint": "in-process"}

    def numerics(self) -> str:
        return "acme:in-process"


def test_a_backend_without_pair_methods_is_given_them_where_it_comes_in() -> None:
    from dheera_local._backend import Backend

    register_provider(Provider("acme", QueryAtATime))
    try:
        with Reranker(retry=FAST) as reranker:
            backend = reranker.backends.endpoint("acme", build_options(api_base="http://h"), model="m")
            assert isinstance(backend, Backend)  # the pair methods are the protocol's: the orchestrator calls them
            pairs = [(QUERY, DOCS[1]), ("spain", DOCS[2]), (QUERY, DOCS[0])]
            assert backend.score_pairs(pairs) == [3.0, 1.0, 0.0]
            assert backend.calls == [QUERY, "spain"] and backend.name == "acme"  # one call per query
            response = reranker.rerank("acme-rerank-1", QUERY, DOCS, api_format="acme", api_base="http://h")
    finally:
        unregister_provider("acme")
    assert (response.backend, order(response)) == ("acme", [1, 2, 0])


# The entry-point group --------------------------------------------------------------------------------------

PLUGIN = """
from dheera_local.providers import Provider

def make(endpoint):
    raise NotImplementedError

PROVIDER = Provider("plugged", make)
NOT_A_PROVIDER = object()
"""

PROBE = """
import logging, sys
logging.basicConfig(level=logging.WARNING)
import dheera_local
print("loaded at import:", "acme_plugin" in sys.modules)
from dheera_local.providers import provider_names
names = provider_names()
print("loaded on use:", "acme_plugin" in sys.modules)
print("names:", ",".join(names))
"""


def test_an_installed_package_registers_through_the_entry_point_group(tmp_path: Path) -> None:
    entries = "plugged = acme_plugin:PROVIDER\nbroken = acme_plugin:NOT_A_PROVIDER"
    done = run_with_plugin(tmp_path, "acme_plugin", PLUGIN, "dheera_local.providers", entries, textwrap.dedent(PROBE))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines == ["loaded at import: False", "loaded on use: True", "names: tei,cohere,hf,plugged"]
    assert "skipped provider entry point 'broken'" in done.stderr
    assert "not a dheera_local.providers.Provider" in done.stderr


# The docs ------------------------------------------------------------------------------------------------------


def test_the_readme_table_lists_the_registered_providers() -> None:
    from dheera_local.providers import registered_providers

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("### Your own remote provider", 1)[1].split("```", 1)[0]
    rows = [line.split("|")[1:3] for line in section.splitlines() if line.startswith("| `")][1:]  # the header
    documented = [(name.strip().strip("`"), what.strip()) for name, what in rows]
    assert documented == [(p.name, p.description) for p in registered_providers()]


def test_the_doctest_of_the_registry() -> None:
    import doctest

    from dheera_local import providers

    results = doctest.testmod(providers)
    assert results.attempted >= 3 and results.failed == 0
    assert provider_names() == ("tei", "cohere", "hf")
