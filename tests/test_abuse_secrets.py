"""Secrets and what an attacker can write into logs and answers: each test pins a line of the README's
"Security and limits" (the sweep over every slot and path is ``test_canary_secrets.py``)."""

from __future__ import annotations

import base64
import logging
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from fastapi.testclient import TestClient

from dheera_local import AllBackendsFailedError, ConfigError, InvalidRequestError, Reranker
from dheera_local._remote.hf_hosted import is_hf_host
from dheera_local._secrets import LOGGER_NAMES, MASK, mask, register
from dheera_local._settings import Settings
from dheera_local.server import create_app, parse_config
from loopback import FAST, Fault, Servers, by_index, call
from server_harness import MASTER_KEY, LiveServer

QUERY = "what is the capital of the united states"
DOCS = ["washington is the capital", "carson city is in nevada", "the river in paris"]
REMOTE = "huggingface/tiny-org/remote-only"


def secret() -> str:
    return f"sk-{uuid.uuid4().hex}"


# Keys are stripped when read; a character no header can carry is refused -----------------------------------


@pytest.mark.parametrize("suffix", ["\n", "\r\n", " ", "\t \n"])
def test_a_key_with_surrounding_whitespace_is_sent_stripped(servers: Servers, tiny_bert: Path, suffix: str) -> None:
    token = secret()
    tei = servers.tei(tiny_bert, token=token)  # answers 401 unless it gets exactly "Bearer <token>"
    response = Reranker(retry=FAST).rerank(REMOTE, QUERY, DOCS, api_base=tei.url, api_key=token + suffix, cache=False)
    assert sorted(by_index(response)) == [0, 1, 2]
    assert tei.scoring()[-1].headers["authorization"] == f"Bearer {token}"


@pytest.mark.parametrize("inner", ["\n", "\x00", "\x1b", "\u00e9", "\u2028"])
def test_a_key_with_a_character_no_header_can_carry_is_refused_naming_the_field(inner: str) -> None:
    head, tail = secret(), secret()
    with pytest.raises(InvalidRequestError) as caught:
        Reranker(retry=FAST).rerank(REMOTE, QUERY, DOCS, api_base="http://127.0.0.1:9", api_key=head + inner + tail)
    assert caught.value.field == "api_key" and "api_key holds a" in str(caught.value)
    assert head[3:15] not in str(caught.value) and tail[3:15] not in str(caught.value)


def test_a_config_key_from_an_env_file_is_stripped_and_a_bad_one_named() -> None:
    token, master = secret(), secret()
    data = {
        "model_list": [{"model_name": "m", "dheera_ai_params": {"model": REMOTE, "api_key": "os.environ/UPSTREAM"}}],
        "general_settings": {"master_key": "os.environ/PROXY_KEY"},
    }
    config = parse_config(data, environ={"UPSTREAM": token + "\n", "PROXY_KEY": master + "\n"})
    assert config.model_list[0].dheera_ai_params.api_key.get_secret_value() == token
    assert config.master_key.get_secret_value() == master
    with pytest.raises(ConfigError, match=r"model_list\[0\]\.dheera_ai_params\.api_key: .*control character") as bad:
        parse_config(data, environ={"UPSTREAM": token + "\x07x", "PROXY_KEY": master})
    assert token[3:15] not in str(bad.value) and bad.value.__context__ is None
    with pytest.raises(ConfigError, match=r"general_settings\.master_key: .*control character"):
        parse_config(data, environ={"UPSTREAM": token, "PROXY_KEY": master[:8] + "\n" + master[8:]})


def test_an_environment_token_no_header_can_carry_is_ignored_with_a_warning_naming_the_variable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    head, tail = secret(), secret()
    settings = Settings.from_env({"HF_TOKEN": f"{head}\x1b{tail}\n", "CO_API_KEY": f" {head}\n"})
    assert settings.hf_token_value is None and settings.cohere_api_key.get_secret_value() == head
    assert "HF_TOKEN holds a control character at position 35" in caplog.text
    assert head[3:15] not in caplog.text and tail[3:15] not in caplog.text


def test_a_master_key_ending_in_a_newline_still_lets_clients_in(tiny_bert: Path) -> None:
    for source in ("config", "environment"):
        data = {"model_list": [{"model_name": "m", "dheera_ai_params": {"model": str(tiny_bert)}}]}
        environ = {"DHEERA_AI_API_KEY": MASTER_KEY + "\n"} if source == "environment" else {}
        if source == "config":
            data["general_settings"] = {"master_key": MASTER_KEY + "\n"}
        with TestClient(create_app(parse_config(data, environ=environ))) as client:
            assert client.get("/v1/models", headers={"Authorization": f"Bearer {MASTER_KEY}"}).status_code == 200
            assert client.get("/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_every_spelling_of_a_secret_is_masked() -> None:
    token = f"{uuid.uuid4().hex}/+='\"\\:@"
    register(token)
    raw = token.encode()
    for spelling in (
        token, repr(token), ascii(token), repr(raw), quote(token, safe=""), base64.b64encode(raw).decode(),
        repr(repr(token)), f"Illegal header value b'Bearer {token}\\n'",
    ):  # fmt: skip
        assert token[:12] not in mask(spelling), spelling
    user, password = secret(), secret()
    with pytest.raises(InvalidRequestError):  # the refusal registers the URL's credentials
        Reranker(retry=FAST).rerank(REMOTE, QUERY, DOCS, api_base=f"http://{user}:{password}@127.0.0.1:9")
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    assert mask(f"Authorization: Basic {basic}") == f"Authorization: Basic {MASK}"


# Credentials in api_base are refused -------------------------------------------------------------------


@pytest.mark.parametrize("userinfo", ["user:{p}@", "{p}@", "{p}:@"])
def test_credentials_in_api_base_are_refused_without_echoing_them(userinfo: str) -> None:
    password = secret()
    url = f"http://{userinfo.format(p=password)}127.0.0.1:9/rerank"
    with pytest.raises(InvalidRequestError, match="must not hold credentials") as caught:
        Reranker(retry=FAST).rerank(REMOTE, QUERY, DOCS, api_base=url, api_key="sk-configured-key")
    assert caught.value.field == "api_base" and "http://***@127.0.0.1:9/rerank" in str(caught.value)
    assert password[3:15] not in str(caught.value)


def test_credentials_in_a_configured_api_base_stop_startup_naming_the_key() -> None:
    params = {"model": REMOTE, "api_base": "https://user:hunter2-password@example.com"}
    with pytest.raises(ConfigError, match=r"model_list\[0\]\.dheera_ai_params\.api_base: .*credentials") as caught:
        parse_config({"model_list": [{"model_name": "m", "dheera_ai_params": params}]})
    assert "hunter2" not in str(caught.value)


# HF_TOKEN goes to HuggingFace only ---------------------------------------------------------------------


def test_the_environment_hf_token_is_not_sent_to_another_hf_format_server(
    servers: Servers, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = f"hf_{uuid.uuid4().hex}"
    monkeypatch.setenv("HF_TOKEN", token)
    endpoint = servers.hf({"tiny-org/remote-only": tiny_bert})
    options = {"api_base": endpoint.url + "/models/tiny-org/remote-only", "api_format": "hf", "cache": False}
    Reranker(retry=FAST).rerank("tiny-org/remote-only", QUERY, DOCS, **options)
    assert "authorization" not in endpoint.scoring()[-1].headers
    Reranker(retry=FAST).rerank("tiny-org/remote-only", QUERY, DOCS, api_key="sk-for-this-one", **options)
    assert endpoint.scoring()[-1].headers["authorization"] == "Bearer sk-for-this-one"  # an explicit key is sent
    monkeypatch.setenv("DHEERA_HF_INFERENCE_URL", endpoint.url)  # the configured hosted inference gets it
    Reranker(retry=FAST).rerank("tiny-org/remote-only", QUERY, DOCS, backend="remote", cache=False)
    assert endpoint.scoring()[-1].headers["authorization"] == f"Bearer {token}"


@pytest.mark.parametrize(("url", "expected"), [
    ("https://router.huggingface.co/hf-inference/models/a/b", True),
    ("https://xyz.us-east-1.aws.endpoints.huggingface.cloud", True),
    ("https://huggingface.co.evil.example/models/a/b", False),
    ("http://router.huggingface.co/hf-inference", False),  # the token over plain http: no
    ("https://evil.example/huggingface.co", False),
    ("http://127.0.0.1:8080/models/a/b", True),  # the configured DHEERA_HF_INFERENCE_URL below
    ("http://127.0.0.1:8081/models/a/b", False),
])  # fmt: skip
def test_hf_hosts(url: str, expected: bool) -> None:
    assert is_hf_host(url, "http://127.0.0.1:8080") is expected


# Logs: one record, one line; DEBUG records of the HTTP stack masked -------------------------------------


def test_a_forged_log_line_in_a_request_path_stays_on_the_request_line(
    tiny_bert: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = {"model_list": [{"model_name": "m", "dheera_ai_params": {"model": str(tiny_bert)}}]}
    live = LiveServer(data).start()
    try:
        with caplog.at_level(logging.INFO):
            forged = "/x%0aINFO%20dheera_local.server:%20FORGED%0d%1b[31m%e2%80%a8"
            assert httpx.get(live.url + forged).status_code == 404
    finally:
        live.stop()
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("dheera_local") and "FORGED" in r.getMessage()]
    assert len(lines) == 1 and "GET /x\\nINFO dheera_local.server: FORGED\\r\\x1b[31m\\u2028 404" in lines[0], lines
    assert not any(char in lines[0] for char in "\n\r\x1b\u2028")


@pytest.mark.parametrize("name", LOGGER_NAMES)
def test_every_record_of_the_package_is_one_line(name: str) -> None:
    record = logging.LogRecord(name, logging.WARNING, __file__, 1, "model %s", ("x\nERROR forged\x1b[0m",), None)
    for each in logging.getLogger(name).filters:
        each.filter(record)
    assert record.getMessage() == "model x\\nERROR forged\\x1b[0m"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_debug_records_of_httpcore_never_show_a_token_echoed_in_a_header(
    servers: Servers, tiny_bert: Path, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    tei, token = servers.tei(tiny_bert), secret()
    tei.always = Fault(302, headers={"Location": f"https://evil.example/?key={token}", "X-Echo": f"Bearer {token}"})
    with caplog.at_level(logging.DEBUG), pytest.raises(AllBackendsFailedError):
        call(Reranker(retry=FAST), mode, REMOTE, QUERY, DOCS, api_base=tei.url, api_key=token, cache=False)
    headers = [r for r in caplog.records if r.name.startswith("httpcore") and "receive_response_headers" in r.msg]
    assert headers and "evil.example/?key=***" in headers[-1].getMessage()
    assert token[3:15] not in caplog.text


def test_the_cli_masks_every_logger_at_debug(servers: Servers, tiny_bert: Path) -> None:
    tei, token = servers.tei(tiny_bert), secret()
    tei.always = Fault(302, headers={"Location": f"https://evil.example/?key={token}"})
    done = subprocess.run(
        [sys.executable, "-m", "dheera_local", "-vv", "rerank", "--model", REMOTE, "--api-base", tei.url,
         "--api-key", token + "\n", "--backend", "remote", "--query", QUERY, *DOCS],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and "receive_response_headers" in done.stderr, done.stderr[-2000:]
    assert token[3:15] not in done.stderr + done.stdout


# Remote answers: one entry per text ---------------------------------------------------------------------


TEI_BAD = [
    ([{"index": 0, "score": 1.0}, {"index": 1, "score": 2.0}, {"index": 2, "score": 3.0}, {"index": 0, "score": 4.0}],
     "index 0 appears twice"),
    ([{"index": True, "score": 1.0}, {"index": 0, "score": 2.0}, {"index": 2, "score": 3.0}], "bad rank entry"),
    ([{"index": 1.0, "score": 1.0}, {"index": 0, "score": 2.0}, {"index": 2, "score": 3.0}], "bad rank entry"),
    ([{"index": 0, "score": 1.0}, {"index": 1, "score": 2.0}], "2 ranks for 3 texts"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "problem"), TEI_BAD)
def test_a_tei_answer_with_a_wrong_entry_count_a_duplicate_or_a_non_integer_index_is_refused(
    servers: Servers, tiny_bert: Path, body: list, problem: str
) -> None:
    tei = servers.tei(tiny_bert)
    tei.always = Fault(200, body=body)
    with pytest.raises(AllBackendsFailedError, match=f"unexpected body: {problem}"):
        Reranker(retry=FAST).rerank(REMOTE, QUERY, DOCS, api_base=tei.url, cache=False)


@pytest.mark.parametrize(("results", "problem"), [
    ([{"index": i % 3, "relevance_score": 0.5} for i in range(4)], "index 0 appears twice"),
    ([{"index": True, "relevance_score": 0.5}, {"index": 0, "relevance_score": 0.5},
      {"index": 2, "relevance_score": 0.5}], "bad result entry"),
])  # fmt: skip
def test_a_cohere_answer_with_a_duplicate_or_a_boolean_index_is_refused(
    servers: Servers, tiny_bert: Path, results: list, problem: str
) -> None:
    cohere = servers.cohere(tiny_bert)
    cohere.always = Fault(200, body={"results": results})
    with pytest.raises(AllBackendsFailedError, match=f"unexpected body: {problem}"):
        Reranker(retry=FAST).rerank("rerank-model", QUERY, DOCS, api_base=cohere.url, cache=False)


def test_an_hf_answer_naming_a_label_twice_is_refused(servers: Servers, tiny_bert: Path) -> None:
    hf = servers.hf({"tiny-org/remote-only": tiny_bert})
    labels = [{"label": "LABEL_1", "score": 0.9}, {"label": "LABEL_1", "score": 0.1}]
    hf.always = Fault(200, body=[labels] * len(DOCS))
    with pytest.raises(AllBackendsFailedError, match="'LABEL_1' appears twice"):
        Reranker(retry=FAST).rerank(
            "tiny-org/remote-only",
            QUERY,
            DOCS,
            api_base=hf.url + "/models/tiny-org/remote-only",
            api_format="hf",
            cache=False,
        )


# Model ids and /metrics ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [
    "a" * 300 + "/b", "org/" + "x" * 97, "org/na--me", "org/..", "ab/-cd", "x/y.git", "huggingface/org/..",
    "/" + "a" * 5000,
])  # fmt: skip
def test_an_invalid_or_overlong_hub_id_is_an_invalid_request_naming_model(model: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        Reranker().rerank(model, QUERY, DOCS)
    assert caught.value.field == "model" and len(str(caught.value)) < 400


def test_the_cli_refuses_an_overlong_hub_id_in_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dheera_local", "rerank", "--model", "org/" + "x" * 300, "--query", "q", "d"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: model 'org/xxx") and len(done.stderr.strip().splitlines()) == 1


def test_metrics_never_show_a_model_folder_path(tiny_bert: Path) -> None:
    data = {
        "model_list": [{"model_name": "m", "dheera_ai_params": {"model": str(tiny_bert), "dtype": "float32"}}],
        "general_settings": {"master_key": MASTER_KEY, "cache": False},
    }
    live = LiveServer(data).start()
    try:
        assert live.post("/rerank", {"model": "m", "query": QUERY, "documents": DOCS}).status_code == 200
        metrics = httpx.get(live.url + "/metrics").text  # no key: it is open
    finally:
        live.stop()
    assert f'model="{tiny_bert.name} on cpu"' in metrics
    assert str(tiny_bert.parent) not in metrics
