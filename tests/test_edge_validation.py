"""A typo in an engine option is refused where the request enters, whatever route it would take.

``dtype``, ``device``, ``api_format`` and ``backend`` are checked when the request is made: on a request
bound for a remote endpoint (no local weights, ``api_base`` given) a misspelt ``dtype`` used to travel to
the endpoint and come back as a connection failure. Each entry point is tested against a loopback TEI
server that records every request: it must receive none.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import dheera_local
from dheera_local import InvalidRequestError, Reranker, cli
from dheera_local._errors import ConfigError
from dheera_local.server import create_app, parse_config
from loopback import LoopbackServer, Servers
from server_harness import LiveServer

# A hub id with no weights on this machine: with api_base, it is served by the TEI endpoint.
MODEL = "huggingface/ORG/none"
QUERY = "Which city is the capital of France?"
DOCS = ["Paris is the capital of France.", "Berlin is in Germany."]
TYPOS = [("dtype", "flaot16"), ("device", "cpux"), ("api_format", "teii"), ("backend", "remotee")]
IDS = [name for name, _ in TYPOS]


@pytest.fixture
def tei(tiny_bert: Path) -> Iterator[LoopbackServer]:
    with Servers() as servers:
        yield servers.tei(tiny_bert)


def refused(call: Callable[[], Any], name: str) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as caught:
        call()
    assert caught.value.field == name
    assert name in str(caught.value)
    return caught.value


def test_the_endpoint_serves_the_same_request_without_the_typo(tei: LoopbackServer) -> None:
    # The control: the loopback endpoint does serve this model, so "not called" below means "refused first".
    response = dheera_local.rerank(MODEL, QUERY, DOCS, api_base=tei.url, cache=False)
    assert sorted(result.index for result in response.results) == [0, 1]
    assert tei.scoring()


# SDK ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "value"), TYPOS, ids=IDS)
def test_sdk_refuses_the_typo_before_any_call(tei: LoopbackServer, name: str, value: str) -> None:
    options = {"api_base": tei.url, name: value}
    refused(lambda: dheera_local.rerank(MODEL, QUERY, DOCS, **options), name)
    refused(lambda: asyncio.run(dheera_local.arerank(MODEL, QUERY, DOCS, **options)), name)
    with Reranker() as reranker:
        refused(lambda: reranker.rerank(MODEL, QUERY, DOCS, **options), name)
        refused(lambda: asyncio.run(reranker.arerank(MODEL, QUERY, DOCS, **options)), name)
        refused(lambda: reranker.plan(MODEL, **options), name)
        refused(lambda: reranker.score_pairs(MODEL, [(QUERY, DOCS[0])], **options), name)
    assert tei.paths() == []


@pytest.mark.parametrize(
    ("name", "value", "hint"),
    [("dtype", "flaot16", "float16"), ("device", "cpux", "cpu"), ("device", "gpu", "cuda"), ("backend", "locl", None)],
)
def test_the_refusal_suggests_the_spelling(name: str, value: str, hint: str | None) -> None:
    error = refused(lambda: dheera_local.rerank(MODEL, QUERY, DOCS, **{name: value}), name)
    assert hint is None or f"did you mean {hint!r}" in str(error)


@pytest.mark.parametrize("device", ["cpu", "cpu:0", "cuda", "cuda:1", "mps", "xpu:0", "auto", None])
@pytest.mark.parametrize("dtype", ["auto", "float32", "FP16", "bf16", "half", None])
def test_every_spelling_torch_accepts_passes_the_edge(device: str | None, dtype: str | None) -> None:
    # Whether this machine has the device is asked when a local model is planned, not at the edge.
    request = dheera_local._engine.request.build_request(MODEL, QUERY, DOCS, device=device, dtype=dtype)
    assert (request.options.device, request.options.dtype) == (device, dtype)


@pytest.mark.parametrize("device", ["cuda:", "cuda:-1", "cuda:01", " cpu", "CPU", "cuda:0:1", "gpu", ""])
def test_device_spellings_torch_refuses_are_refused_without_torch(device: str) -> None:
    refused(lambda: dheera_local._engine.request.build_request(MODEL, QUERY, DOCS, device=device), "device")


# CLI ------------------------------------------------------------------------------------------


def one_error_line(capsys: pytest.CaptureFixture[str], status: int, name: str) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert status != 0 and len(errors) == 1, err
    assert name.replace("_", "-") in errors[0] or name in errors[0], err
    assert "Traceback" not in err
    return errors[0]


def run_cli(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exc:  # argparse's own refusals (choices) exit 2
        return int(exc.code or 0)


@pytest.mark.parametrize(("name", "value"), TYPOS, ids=IDS)
def test_cli_rerank_refuses_the_typo_in_one_line(
    tei: LoopbackServer, capsys: pytest.CaptureFixture[str], name: str, value: str
) -> None:
    flag = "--" + name.replace("_", "-")
    status = run_cli(["rerank", "--model", MODEL, "--query", QUERY, *DOCS, "--api-base", tei.url, flag, value])
    one_error_line(capsys, status, name)
    assert tei.paths() == []


@pytest.mark.parametrize(("name", "value"), TYPOS, ids=IDS)
def test_cli_score_refuses_the_typo_before_writing_or_calling(
    tei: LoopbackServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, value: str
) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"query": QUERY, "document": doc}) + "\n" for doc in DOCS))
    output = tmp_path / "scored.jsonl"
    flag = "--" + name.replace("_", "-")
    argv = ["score", "--model", MODEL, "--input", str(pairs), "--output", str(output), "--api-base", tei.url, "-q"]
    status = run_cli([*argv, flag, value])
    one_error_line(capsys, status, name)
    assert tei.paths() == []
    assert not output.exists()


@pytest.mark.parametrize(("name", "value"), TYPOS, ids=IDS)
def test_cli_score_on_ray_refuses_the_typo_before_ray_starts(
    tei: LoopbackServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, value: str
) -> None:
    ray_was_imported = "ray" in sys.modules  # by test_ray.py, when it ran first in this process
    flag = "--" + name.replace("_", "-")
    argv = ["score", "--model", MODEL, "--input", str(tmp_path / "pairs.jsonl"), "--output", str(tmp_path / "out")]
    status = run_cli([*argv, "--engine", "ray", "--api-base", tei.url, "-q", flag, value])
    one_error_line(capsys, status, name)
    assert tei.paths() == []
    assert ray_was_imported or "ray" not in sys.modules, "refused before Ray was even imported"


def test_ray_functions_refuse_the_typo_before_ray_starts(tmp_path: Path) -> None:
    from dheera_local.ray import run_pipeline, score_dataset

    refused(lambda: score_dataset(None, MODEL, dtype="flaot16"), "dtype")
    refused(lambda: run_pipeline(tmp_path / "in.jsonl", tmp_path / "out", MODEL, device="cpux"), "device")
    refused(lambda: run_pipeline(tmp_path / "in.jsonl", tmp_path / "out", "cohere/\ud800"), "model")


# config.yaml ----------------------------------------------------------------------------------


def config(tei_url: str, **params: Any) -> dict[str, Any]:
    return {"model_list": [{"model_name": "m", "dheera_ai_params": {"model": MODEL, "api_base": tei_url, **params}}]}


@pytest.mark.parametrize(("name", "value"), TYPOS, ids=IDS)
def test_config_refuses_the_typo_at_startup_naming_the_key(tei: LoopbackServer, name: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        create_app(parse_config(config(tei.url, **{name: value}), source="config.yaml"))
    assert caught.value.path == f"model_list[0].dheera_ai_params.{name}"
    assert str(caught.value).startswith(f"config.yaml: model_list[0].dheera_ai_params.{name}: ")
    assert tei.paths() == []


@pytest.mark.parametrize(("name", "value"), TYPOS, ids=IDS)
def test_serve_stops_with_one_error_line(
    tei: LoopbackServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, value: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config(tei.url, **{name: value})))  # JSON is YAML
    one_error_line(capsys, run_cli(["serve", "--config", str(path), "--port", "0"]), name)
    assert tei.paths() == []


# Server bodies --------------------------------------------------------------------------------


@pytest.fixture
def live(tei: LoopbackServer, tmp_path: Path) -> Iterator[LiveServer]:
    data = config(tei.url, dtype="float16", device="cpu")
    data["general_settings"] = {"cache": False, "cache_dir": str(tmp_path / "cache"), "num_retries": 0}
    server = LiveServer(data).start()
    yield server
    server.stop()


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        ("/v1/rerank", {"documents": DOCS, "raw_scores": "yes"}, "raw_scores"),
        ("/v2/rerank", {"documents": DOCS, "top_n": "3"}, "top_n"),
        ("/rerank", {"documents": DOCS, "max_tokens_per_doc": 8.5}, "max_tokens_per_doc"),
        ("/rerank", {"texts": DOCS, "raw_scores": 1}, "raw_scores"),  # a TEI body
        ("/models/m/rerank", {"texts": DOCS, "truncate": "no"}, "truncate"),
    ],
)
def test_server_refuses_a_bad_option_in_the_body_with_422_naming_it(
    live: LiveServer, tei: LoopbackServer, route: str, body: dict[str, Any], param: str
) -> None:
    answer = live.post(route, {"model": "m", "query": QUERY, **body}, key=None)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["param"] == param
    assert tei.paths() == []


# Framework adapters ---------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["langchain", "llama_index"])
@pytest.mark.parametrize(("name", "value"), TYPOS, ids=IDS)
def test_adapters_refuse_the_typo_when_made(tei: LoopbackServer, module: str, name: str, value: str) -> None:
    adapter = importlib.import_module(f"dheera_local.integrations.{module}").DheeraRerank
    with pytest.raises(ValidationError) as caught:
        adapter(model=MODEL, api_base=tei.url, **{name: value})
    assert name in str(caught.value) and value in str(caught.value)
    assert tei.paths() == []
