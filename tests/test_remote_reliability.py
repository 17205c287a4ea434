"""Every remote call: retries and backoff, Retry-After, deadlines, timeouts, errors, and token hygiene."""

from __future__ import annotations

import dataclasses
import email.utils
import json
import logging
import time
import uuid
from pathlib import Path

import httpx
import pytest

from conftest import closed_port
from dheera_local import AllBackendsFailedError, RemoteBackendError, Reranker, RetryPolicy
from dheera_local._options import build_options
from dheera_local._remote.http import Call, decode, retry_after_seconds
from loopback import FAST, Fault, LoopbackServer, Servers, call

MODEL = "huggingface/tiny-org/remote-only"
QUERY = "what is the capital of the united states"
DOCS = ["washington is the capital", "carson city is in nevada", "the river in paris"]
TOKEN = "sk-live-0123456789abcdef-SECRET"


@pytest.fixture
def tei(servers: Servers, tiny_bert: Path) -> LoopbackServer:
    return servers.tei(tiny_bert)


def fast(**overrides: float) -> Reranker:
    return Reranker(retry=dataclasses.replace(FAST, **overrides))


# Retries ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 502, 503, 504])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_transient_statuses_are_retried(tei: LoopbackServer, status: int, mode: str) -> None:
    tei.fail(Fault(status, body={"error": "busy", "error_type": "Overloaded"}))
    response = call(fast(), mode, MODEL, QUERY, DOCS, api_base=tei.url, cache=False)
    assert response.backend == "tei" and len(response.results) == 3
    assert len(tei.scoring()) == 2


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_retry_after_is_honoured(tei: LoopbackServer, mode: str) -> None:
    tei.fail(Fault(429, headers={"Retry-After": "1"}))
    started = time.monotonic()
    call(fast(), mode, MODEL, QUERY, DOCS, api_base=tei.url, cache=False)
    assert time.monotonic() - started >= 1.0  # FAST's own backoff is at most 0.05 s
    assert len(tei.scoring()) == 2


def test_a_retry_after_beyond_the_cap_fails_now(tei: LoopbackServer) -> None:
    tei.fail(Fault(503, headers={"Retry-After": "3600"}))
    started = time.monotonic()
    with pytest.raises(AllBackendsFailedError, match="answered 503"):
        fast().rerank(MODEL, QUERY, DOCS, api_base=tei.url, cache=False)
    assert time.monotonic() - started < 2 and len(tei.scoring()) == 1


def test_retry_after_parsing() -> None:
    assert retry_after_seconds("2") == 2.0
    assert retry_after_seconds("0.5") == 0.5
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    in_ten = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert 8.0 <= retry_after_seconds(in_ten) <= 10.0


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_client_errors_are_not_retried(tei: LoopbackServer, status: int) -> None:
    tei.always = Fault(status, body={"error": f"you did {status}", "error_type": "Validation"})
    with pytest.raises(AllBackendsFailedError) as caught:
        fast().rerank(MODEL, QUERY, DOCS, api_base=tei.url, cache=False)
    assert caught.value.status == status
    assert f"TEI endpoint {tei.url}/rerank answered {status}: you did {status}" in str(caught.value)
    assert len(tei.scoring()) == 1


def test_attempts_are_bounded(tei: LoopbackServer) -> None:
    tei.always = Fault(503, body={"error": "unhealthy", "error_type": "Unhealthy"})
    with pytest.raises(AllBackendsFailedError, match="answered 503: unhealthy"):
        fast(max_attempts=3).rerank(MODEL, QUERY, DOCS, api_base=tei.url, cache=False)
    assert len(tei.scoring()) == 3


def test_the_overall_deadline_stops_retrying(tei: LoopbackServer) -> None:
    tei.always = Fault(503)
    reranker = fast(max_attempts=1000, base_delay=0.05, max_delay=0.05, deadline=0.5)
    started = time.monotonic()
    with pytest.raises(AllBackendsFailedError):
        reranker.rerank(MODEL, QUERY, DOCS, api_base=tei.url, cache=False)
    assert time.monotonic() - started < 1.5
    assert 2 <= len(tei.scoring()) < 20


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_the_deadline_also_bounds_a_slow_request(tei: LoopbackServer, mode: str) -> None:
    tei.always = Fault(delay=5.0)
    started = time.monotonic()
    with pytest.raises(AllBackendsFailedError, match="timed out"):
        call(fast(read_timeout=30.0, deadline=0.5), mode, MODEL, QUERY, DOCS, api_base=tei.url, cache=False)
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_slow_responses_time_out_and_are_retried(tei: LoopbackServer, mode: str) -> None:
    tei.always = Fault(delay=3.0)
    started = time.monotonic()
    with pytest.raises(AllBackendsFailedError, match=f"TEI endpoint {tei.url}/rerank timed out"):
        call(fast(read_timeout=0.3, max_attempts=2), mode, MODEL, QUERY, DOCS, api_base=tei.url, cache=False)
    assert time.monotonic() - started < 2.0
    assert len(tei.scoring()) == 2


def test_the_timeout_option_overrides_the_policy(tei: LoopbackServer) -> None:
    tei.fail(Fault(delay=3.0))  # only the first request is slow
    started = time.monotonic()
    response = fast(read_timeout=30.0).rerank(MODEL, QUERY, DOCS, api_base=tei.url, timeout=0.3, cache=False)
    assert response.backend == "tei"
    assert time.monotonic() - started < 2.0 and len(tei.scoring()) == 2


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_refused_connection_is_retried_then_reported(mode: str) -> None:
    down = f"http://127.0.0.1:{closed_port()}"
    started = time.monotonic()
    with pytest.raises(AllBackendsFailedError, match=f"TEI endpoint {down}/rerank could not be reached"):
        call(fast(), mode, MODEL, QUERY, DOCS, api_base=down)
    assert time.monotonic() - started < 2.0


def test_malformed_json_is_an_error_without_retry(tei: LoopbackServer) -> None:
    tei.always = Fault(malformed=True)
    with pytest.raises(AllBackendsFailedError, match="answered 200 with a body that is not JSON") as caught:
        fast().rerank(MODEL, QUERY, DOCS, api_base=tei.url, cache=False)
    assert '{"results": [{"index": 0' in str(caught.value)  # the start of the body, to recognise it
    assert len(tei.scoring()) == 1


def test_an_unusable_api_base_is_a_dheera_error() -> None:
    with pytest.raises(AllBackendsFailedError, match="could not be called"):
        fast().rerank(MODEL, QUERY, DOCS, api_base="http://127.0.0.1:not-a-port")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_failed_part_cancels_the_parts_not_yet_sent(servers: Servers, tiny_bert: Path, mode: str) -> None:
    tei = servers.tei(tiny_bert, max_client_batch_size=1)
    tei.always = Fault(503)
    docs = [f"document {i}" for i in range(40)]  # 40 parts of one, 8 in flight at most
    with pytest.raises(AllBackendsFailedError):
        call(fast(max_attempts=2), mode, MODEL, QUERY, docs, api_base=tei.url, cache=False)
    assert len(tei.scoring()) < 40  # 80 if every part had run out its attempts


def test_connections_are_pooled_and_reused(tei: LoopbackServer) -> None:
    reranker = fast()
    for query in ("one", "two", "three"):
        reranker.rerank(MODEL, query, DOCS, api_base=tei.url, cache=False)
    ports = [r.client_port for r in tei.requests]
    assert len(ports) == 4 and len(set(ports)) == 1  # /info and three /rerank on one connection
    reranker.close()


# Token hygiene ----------------------------------------------------------------------------------


def _assert_no_token(text: str) -> None:
    assert TOKEN not in text
    assert TOKEN[:12] not in text  # not even a prefix cut off by a length limit


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_rejected_token_echoed_by_the_server_never_reaches_errors_or_logs(
    servers: Servers, tiny_bert: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    tei = servers.tei(tiny_bert, token="the-right-token", echo_token=True)
    with caplog.at_level(logging.DEBUG), pytest.raises(AllBackendsFailedError) as caught:
        call(fast(), mode, MODEL, QUERY, DOCS, api_base=tei.url, api_key=TOKEN, cache=False)
    assert tei.scoring()[0].headers["authorization"] == f"Bearer {TOKEN}"  # it was sent, and echoed
    assert len(tei.scoring()) == 1  # 401 is not retried
    error = caught.value
    assert error.status == 401 and "answered 401" in str(error) and "***" in str(error)
    for text in (str(error), repr(error), caplog.text, *(f"{e} {e!r}" for _, e in error.attempts)):
        _assert_no_token(text)


def test_a_token_at_the_cut_of_a_long_message_is_masked_whole(tei: LoopbackServer) -> None:
    # Server messages are cut at 300 characters, non-JSON snippets at 120: mask first, then cut.
    tei.always = Fault(400, body={"error": "x" * 270 + f" bad key {TOKEN}"})
    with pytest.raises(AllBackendsFailedError) as caught:
        fast().rerank(MODEL, QUERY, DOCS, api_base=tei.url, api_key=TOKEN, cache=False)
    _assert_no_token(str(caught.value))
    call_ = Call("POST", "https://h/rerank", "TEI endpoint", "tei", token=TOKEN)
    with pytest.raises(RemoteBackendError, match="not JSON") as not_json:
        decode(call_, httpx.Response(200, text="y" * 100 + TOKEN))
    _assert_no_token(str(not_json.value))


def test_timeouts_refusals_and_successes_log_no_token(tei: LoopbackServer, caplog: pytest.LogCaptureFixture) -> None:
    tei.fail(Fault(503), Fault(delay=2.0))
    down = f"http://127.0.0.1:{closed_port()}"
    reranker = fast(read_timeout=0.3)
    with caplog.at_level(logging.DEBUG):
        assert reranker.rerank(MODEL, QUERY, DOCS, api_base=tei.url, api_key=TOKEN, cache=False).backend == "tei"
        with pytest.raises(AllBackendsFailedError) as caught:
            reranker.rerank(MODEL, QUERY, DOCS, api_base=down, api_key=TOKEN, cache=False)
    assert "retry 1/2" in caplog.text  # the retries were logged...
    _assert_no_token(caplog.text)  # ...without the token
    _assert_no_token(f"{caught.value} {caught.value!r}")


def test_a_call_and_a_backend_repr_hide_the_token() -> None:
    assert TOKEN not in repr(Call("POST", "https://h/rerank", "TEI endpoint", "tei", token=TOKEN))
    reranker = fast()
    backend = reranker.backends.endpoint("tei", build_options(api_base="https://h", api_key=TOKEN), model="m")
    assert TOKEN not in repr(backend) and TOKEN not in str(backend.describe())


def test_hf_token_is_not_sent_to_a_custom_endpoint(tei: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    fast().rerank(MODEL, QUERY, DOCS, api_base=tei.url, cache=False)
    assert all("authorization" not in r.headers for r in tei.requests)


def test_redirects_are_not_followed_so_the_token_stays_home(servers: Servers, tiny_bert: Path) -> None:
    tei, elsewhere = servers.tei(tiny_bert), servers.tei(tiny_bert)
    tei.always = Fault(307, headers={"Location": elsewhere.url + "/rerank"})
    with pytest.raises(AllBackendsFailedError, match="redirects are not followed") as caught:
        fast().rerank(MODEL, QUERY, DOCS, api_base=tei.url, api_key=TOKEN, cache=False)
    assert elsewhere.url in str(caught.value)
    assert elsewhere.requests == []


def test_a_token_over_plain_http_to_another_host_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    host = f"reranker-{uuid.uuid4().hex[:8]}.example.test"
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/info":
            return httpx.Response(404)
        count = len(json.loads(request.content)["texts"])
        return httpx.Response(200, json=[{"index": i, "score": 0.0} for i in range(count)])

    reranker = Reranker(retry=FAST, transport=httpx.MockTransport(answer))
    with caplog.at_level(logging.WARNING, logger="dheera_local"):
        reranker.rerank(MODEL, QUERY, DOCS, api_base=f"http://{host}:8080", api_key=TOKEN, cache=False)
    warnings = [r.getMessage() for r in caplog.records if "plain http" in r.getMessage()]
    assert warnings == [f"sending an API key over plain http to {host}; use https for non-local endpoints"]
    assert {r.url.host for r in seen} == {host}
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in seen)
    _assert_no_token(caplog.text)


def test_no_warning_for_loopback_https_or_no_token(tei: LoopbackServer, caplog: pytest.LogCaptureFixture) -> None:
    from dheera_local._remote.http import _warn_plain_http

    with caplog.at_level(logging.WARNING, logger="dheera_local"):
        fast().rerank(MODEL, QUERY, DOCS, api_base=tei.url, api_key=TOKEN, cache=False)
        _warn_plain_http(Call("POST", "https://secure.example.test/rerank", "TEI endpoint", "tei", token=TOKEN))
        _warn_plain_http(Call("POST", "http://open.example.test/rerank", "TEI endpoint", "tei", token=None))
        _warn_plain_http(Call("POST", "http://localhost:9/rerank", "TEI endpoint", "tei", token=TOKEN))
        _warn_plain_http(Call("POST", "http://[::1]:9/rerank", "TEI endpoint", "tei", token=TOKEN))
    assert "plain http" not in caplog.text


def test_retry_policy_timeouts() -> None:
    policy = RetryPolicy(connect_timeout=2.0, read_timeout=30.0)
    assert (policy.timeout(None).read, policy.timeout(None).connect) == (30.0, 2.0)
    assert (policy.timeout(0.5).read, policy.timeout(0.5).connect) == (0.5, 0.5)
    assert policy.timeout(None, remaining=1.5).read == 1.5
    assert all(policy.base_delay * 0.75 <= policy.backoff(1) <= policy.base_delay for _ in range(20))
    assert policy.backoff(30) <= policy.max_delay
