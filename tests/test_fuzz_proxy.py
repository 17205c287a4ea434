"""API fuzzing of the proxy from its own OpenAPI schema (schemathesis).

The real app (uvicorn on a loopback port) serves a tiny local model and a loopback TEI remote;
schemathesis generates requests for every documented operation, valid and invalid, with the
master key, without one and with a wrong one. Every answer must be below 500, and every error must
be the documented JSON shape ``{"error": {"message", "type", "param", "code"}}`` with ``code`` equal
to the status. Bounded: ``DHEERA_FUZZ_EXAMPLES`` examples per operation (default small enough for
about a minute on two cores); set it higher to fuzz longer locally.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from dheera_local.server.schemas import ErrorBody
from loopback import Servers
from server_harness import MASTER_KEY, LiveServer

EXAMPLES = int(os.environ.get("DHEERA_FUZZ_EXAMPLES", "12"))
MODELS = ("local", "remote")
KEYS = {"authorized": MASTER_KEY, "no key": None, "wrong key": "sk-wrong"}


@pytest.fixture(scope="module")
def live(hub_cache: Path, tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with Servers() as upstream, pytest.MonkeyPatch.context() as env:
        tei = upstream.tei(tiny_bert)
        env.setenv("HF_HUB_CACHE", str(hub_cache))
        env.setenv("HF_TOKEN_PATH", str(tmp_path_factory.mktemp("no-token") / "token"))
        env.delenv("HF_TOKEN", raising=False)
        data = {
            "model_list": [
                {"model_name": "local", "dheera_ai_params": {"model": str(tiny_bert), "dtype": "float32",
                                                             "max_length": 32}},
                {"model_name": "remote", "dheera_ai_params": {
                    "model": "huggingface/tiny-org/tiny-bert-reranker", "backend": "remote", "api_base": tei.url,
                    "max_length": 32}},
            ],
            "general_settings": {
                "master_key": MASTER_KEY, "cache_dir": str(tmp_path_factory.mktemp("fuzz-cache")),
                "num_retries": 0, "max_documents_per_request": 16, "max_request_body_bytes": 65536,
            },
        }  # fmt: skip
        server = LiveServer(data).start()
        yield server
        server.stop()


@pytest.fixture(scope="module")
def api_schema(live: LiveServer) -> Any:
    return schemathesis.openapi.from_url(live.url + "/openapi.json")


def error_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx answer is ``{"error": {message, type, param, code}}`` with code == status."""
    if response.status_code < 400:
        return None
    body = ErrorBody.model_validate_json(response.content)
    assert body.error.code == str(response.status_code), body
    assert body.error.message, body
    return None


@pytest.mark.slow
@pytest.mark.parametrize("auth", list(KEYS))
def test_no_server_error_and_every_error_documented(api_schema: Any, auth: str) -> None:
    key = KEYS[auth]
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 8, [op.label for op in operations]
    for operation in operations:
        fuzz(operation, headers)


def fuzz(operation: Any, headers: dict[str, str]) -> None:
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    @given(case=cases(operation), model=st.sampled_from([None, *MODELS]))
    def run(case: Any, model: str | None) -> None:
        if model is not None and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = model  # a random name only ever meets the 404 path
        response = case.call_and_validate(headers=headers, checks=[not_a_server_error, error_shape])
        if os.environ.get("FUZZ_LOG"):
            with open(os.environ["FUZZ_LOG"], "a") as f: f.write(f"{operation.label} {response.status_code} {response.content[:150]!r}\n")

    run()


def cases(operation: Any) -> st.SearchStrategy[Any]:
    """Valid and invalid requests; where the path names a model, also the configured ones."""
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    variants = [operation.as_strategy(mode) for mode in modes]
    if "{model_name}" in operation.path:
        variants += [operation.as_strategy(mode, path_parameters={"model_name": name}) for name in MODELS for mode in modes]
    return st.one_of(variants)
