"""API fuzzing of the proxy from its own OpenAPI schema (schemathesis).

The real app (uvicorn on a loopback port) serves a tiny local model and a loopback TEI remote.
schemathesis generates requests for every documented operation, valid ones and ones that break the
schema, sent with the master key, without one and with a wrong one. Every answer must be below 500,
and every error must be the documented shape ``{"error": {"message", "type", "param", "code"}}``
with ``code`` the status. Bounded: a few dozen examples per operation (about a minute on two cores);
``DHEERA_FUZZ_SCALE=20`` fuzzes twenty times longer (see :mod:`property_settings`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from dheera_local.server.schemas import ErrorBody
from loopback import Servers
from property_settings import bounded
from server_harness import MASTER_KEY, LiveServer

MODELS = ("local", "remote")
KEYS = {"authorized": MASTER_KEY, "no key": None, "wrong key": "sk-wrong-key-0000"}
OPEN_PATHS = {"/health/liveliness", "/health/readiness", "/metrics"}


@pytest.fixture(scope="module")
def live(hub_cache: Path, tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with Servers() as upstream, pytest.MonkeyPatch.context() as env:
        tei = upstream.tei(tiny_bert)
        env.setenv("HF_HUB_CACHE", str(hub_cache))
        # Module fixtures are made before each test's isolated_env: the cache folder (kernel verdicts) too.
        env.setenv("DHEERA_CACHE_DIR", str(tmp_path_factory.mktemp("module-cache")))
        env.setenv("HF_TOKEN_PATH", str(tmp_path_factory.mktemp("no-token") / "token"))
        env.delenv("HF_TOKEN", raising=False)
        short = {"max_length": 32}  # the fuzzer's long texts cost little
        data = {
            "model_list": [
                {"model_name": "local", "dheera_ai_params": {"model": str(tiny_bert), "dtype": "float32", **short}},
                {"model_name": "remote", "dheera_ai_params": {
                    "model": "huggingface/tiny-org/tiny-bert-reranker", "backend": "remote", "api_base": tei.url,
                    **short}},
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
def operations(live: LiveServer) -> list[Any]:
    """Every operation the proxy documents at /openapi.json."""
    schema = schemathesis.openapi.from_url(live.url + "/openapi.json")
    found = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in found} >= {"/rerank", "/v1/rerank", "/v2/rerank", "/models/{model_name}/rerank"}
    return found


def error_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """A schemathesis check: every 4xx/5xx answer is ``{"error": {message, type, param, code}}``, code == status."""
    if response.status_code < 400:
        return None
    body = ErrorBody.model_validate_json(response.content)
    assert body.error.code == str(response.status_code), body
    assert body.error.message and body.error.type, body
    return None


def cases(operation: Any) -> st.SearchStrategy[Any]:
    """Valid and invalid requests; where the path names a model, also the configured ones."""
    modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    variants = [operation.as_strategy(mode) for mode in modes]
    if "{model_name}" in operation.path:
        named = [operation.as_strategy(mode, path_parameters={"model_name": name}) for name in MODELS for mode in modes]
        variants += named
    return st.one_of(variants)


def fuzz(operation: Any, headers: dict[str, str], seen: Counter[tuple[str, int]]) -> None:
    """Run one operation's examples; schemathesis' failure (with the request to replay) is the test's."""

    @bounded(25, suppress_health_check=list(HealthCheck))
    @given(case=cases(operation), model=st.sampled_from([None, *MODELS]))
    def run(case: Any, model: str | None) -> None:
        if model is not None and isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = model  # a random name only ever meets the 404 path
        response = case.call_and_validate(headers=headers, checks=[not_a_server_error, error_shape])
        seen[(operation.path, response.status_code)] += 1

    run()


@pytest.mark.slow
@pytest.mark.parametrize("auth", list(KEYS))
def test_no_server_error_and_every_error_in_the_documented_shape(operations: list[Any], auth: str) -> None:
    key = KEYS[auth]
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    seen: Counter[tuple[str, int]] = Counter()
    for operation in operations:
        fuzz(operation, headers, seen)
    statuses = {status for _, status in seen}
    if auth == "authorized":
        # The fuzzer got past validation into scoring (local and remote), and was refused on the way too.
        assert {200, 400, 404, 422} <= statuses, seen
        assert any(status == 200 for (path, status) in seen if path.endswith("rerank")), seen
    else:
        assert {status for (path, status) in seen if path not in OPEN_PATHS} == {401}, seen
