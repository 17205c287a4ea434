"""Usage: every answer carries the tokens a model scored for it (``meta.tokens.input_tokens`` as Cohere v2,
``meta.billed_units.total_tokens`` as LiteLLM's per-token pricing reads), from the SDK, the CLI and the
proxy; remotes pass on what they report, and an unknown count is left out. Per-key ``tpm`` limits and
per-key token counters in ``/metrics``."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from transformers import AutoTokenizer

import dheera_local
from conftest import TINY_BERT_ID
from dheera_local import OverloadedError, Reranker
from dheera_local._backend import Logits, total_tokens
from dheera_local._remote.cohere import CohereBackend
from dheera_local._remote.http import HttpClients
from dheera_local.server.keys import KeyPolicy
from loopback import FAST, Servers
from server_harness import MASTER_KEY, LiveServer

QUERY = "what is the capital of the united states"
DOCS = ["washington is the capital", "a river in paris", "tokyo"]


def expected_tokens(folder: Path, query: str, documents: list[str]) -> int:
    """Independently of dheera_local: the pairs' input ids as the model's own tokenizer encodes them."""
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return sum(len(tokenizer(query, document, truncation=True)["input_ids"]) for document in documents)


def usage_of(response: dheera_local.RerankResponse) -> dict:
    meta = response.model_dump()["meta"]
    return {"tokens": meta.get("tokens"), "billed_units": meta["billed_units"]}


# The SDK ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_local_answer_carries_the_tokens_its_pairs_held(tiny_bert: Path, mode: str) -> None:
    with Reranker() as reranker:
        if mode == "sync":
            response = reranker.rerank(str(tiny_bert), QUERY, DOCS, cache=False, dtype="float32")
        else:
            response = asyncio.run(reranker.arerank(str(tiny_bert), QUERY, DOCS, cache=False, dtype="float32"))
    tokens = expected_tokens(tiny_bert, QUERY, DOCS)
    assert response.input_tokens == tokens
    assert usage_of(response) == {
        "tokens": {"input_tokens": tokens, "output_tokens": 0},
        "billed_units": {"search_units": 1, "total_tokens": tokens},
    }
    assert response.meta["tokens"]["input_tokens"] == tokens  # LiteLLM-style item access


def test_cache_hits_and_repeated_pairs_cost_no_tokens(tiny_bert: Path) -> None:
    model = str(tiny_bert)
    first = dheera_local.rerank(model, QUERY, DOCS + [DOCS[0]], dtype="float32")  # a repeat scores once
    assert first.input_tokens == expected_tokens(tiny_bert, QUERY, DOCS)
    again = dheera_local.rerank(model, QUERY, DOCS, dtype="float32")
    assert again.cache_hits == 3 and again.backend == "cache"
    assert usage_of(again)["tokens"] == {"input_tokens": 0, "output_tokens": 0}
    assert usage_of(again)["billed_units"] == {"search_units": 1, "total_tokens": 0}
    mixed = dheera_local.rerank(model, QUERY, [*DOCS, "the white house"], dtype="float32")
    assert mixed.cache_hits == 3
    assert mixed.input_tokens == expected_tokens(tiny_bert, QUERY, ["the white house"])


def test_a_cut_document_counts_only_the_tokens_the_model_read(tiny_bert: Path) -> None:
    long_document = " ".join(f"word{i}" for i in range(60))
    whole = dheera_local.rerank(str(tiny_bert), QUERY, [long_document], dtype="float32", cache=False)
    cut = dheera_local.rerank(str(tiny_bert), QUERY, [long_document], dtype="float32", cache=False,
                              max_tokens_per_doc=16)  # fmt: skip
    assert whole.input_tokens == expected_tokens(tiny_bert, QUERY, [long_document])
    query_tokens = len(AutoTokenizer.from_pretrained(str(tiny_bert))(QUERY, add_special_tokens=False)["input_ids"])
    assert cut.input_tokens == query_tokens + 16 + 3  # [CLS] query [SEP] 16 document tokens [SEP]


@pytest.mark.parametrize(
    ("options", "reported"),
    [
        ({"usage": "cohere"}, "meta.tokens"),
        ({"usage": "vllm"}, "usage.total_tokens"),
        ({"results_key": "data"}, "Voyage's usage"),
    ],
)
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_remote_that_reports_its_usage_is_believed(
    servers: Servers, tiny_bert: Path, options: dict, reported: str, mode: str
) -> None:
    cohere = servers.cohere(tiny_bert, **options)
    with Reranker(retry=FAST) as reranker:
        call = reranker.rerank if mode == "sync" else None
        args = ("huggingface/org/x", QUERY, DOCS)
        kwargs = {"api_base": cohere.url, "api_format": "cohere", "cache": False}
        response = call(*args, **kwargs) if call else asyncio.run(reranker.arerank(*args, **kwargs))
    assert response.backend == "cohere"
    # The remote's count, from its own tokenizer, equals what the local backend counts for the same pairs.
    local = dheera_local.rerank(str(tiny_bert), QUERY, DOCS, dtype="float32", cache=False)
    assert response.input_tokens == local.input_tokens == expected_tokens(tiny_bert, QUERY, DOCS), reported


def test_a_remote_that_does_not_report_usage_leaves_the_count_out(
    servers: Servers, tiny_bert: Path, tiny_xlmr: Path
) -> None:
    tei = servers.tei(tiny_bert)
    hosted = servers.hf({"org/x": tiny_xlmr})
    cohere = servers.cohere(tiny_bert)  # Cohere's own API: search units only
    answers = [
        dheera_local.rerank("huggingface/org/x", QUERY, DOCS, api_base=tei.url, cache=False),
        dheera_local.rerank("huggingface/org/x", QUERY, DOCS, api_base=hosted.url + "/models/org/x",
                            api_format="hf", cache=False),
        dheera_local.rerank("huggingface/org/x", QUERY, DOCS, api_base=cohere.url, api_format="cohere", cache=False),
    ]  # fmt: skip
    assert [a.backend for a in answers] == ["tei", "hf_hosted", "cohere"]
    for answer in answers:
        assert answer.input_tokens is None
        assert usage_of(answer) == {"tokens": None, "billed_units": {"search_units": 1}}  # never null


def test_odd_usage_fields_are_ignored_never_an_error() -> None:
    backend = CohereBackend("http://127.0.0.1:9", "m", HttpClients(), FAST)
    assert backend.usage({"meta": {"tokens": {"input_tokens": 12.0}}}) == 12
    assert backend.usage({"meta": {"billed_units": {"search_units": 1, "total_tokens": 7}}}) == 7
    assert backend.usage({"usage": {"total_tokens": 5, "prompt_tokens": 5}}) == 5
    for odd in ({"usage": {"total_tokens": -1}}, {"usage": {"total_tokens": True}}, {"usage": {"total_tokens": 1.5}},
                {"usage": {"total_tokens": "12"}}, {"usage": [3]}, {"meta": None}, [], None):  # fmt: skip
        assert backend.usage(odd) is None
    # A request split in parts knows its total only when every part does.
    assert total_tokens([Logits([0.1], tokens=2), Logits([0.2], tokens=3)]) == 5
    assert total_tokens([Logits([0.1], tokens=2), Logits([0.2])]) is None
    assert Logits([0.1, 0.2, 0.3], pair_tokens=[4, 5, 6]).part(1, 3).tokens == 11


def test_the_cli_prints_the_tokens(tmp_path: Path) -> None:
    from test_cli import cli

    done = cli("rerank", "--model", TINY_BERT_ID, "--query", "capital", "washington", "paris")
    assert done.returncode == 0, done.stderr
    meta = json.loads(done.stdout)["meta"]
    assert meta["tokens"]["input_tokens"] > 0
    assert meta["billed_units"]["total_tokens"] == meta["tokens"]["input_tokens"]


# The proxy --------------------------------------------------------------------------------------

METERED = "sk-canary-metered-7f3a9c21"
FREE = "sk-canary-unlimited-4be81d07"


@pytest.fixture(scope="module")
def token_budget(tiny_bert: Path) -> int:
    """Tokens in two requests of DOCS, less one: the third request crosses nothing, it is refused."""
    return 2 * expected_tokens(tiny_bert, QUERY, DOCS) - 1


@pytest.fixture
def server(tiny_bert: Path, token_budget: int, tmp_path: Path) -> Iterator[LiveServer]:
    live = LiveServer({
        "model_list": [{"model_name": "local", "dheera_ai_params": {"model": str(tiny_bert), "dtype": "float32"}}],
        "general_settings": {
            "master_key": MASTER_KEY, "cache": False, "cache_dir": str(tmp_path / "cache"),
            "api_keys": [{"key": METERED, "name": "metered", "tpm": token_budget}, {"key": FREE, "name": "free"}],
        },
    }).start()  # fmt: skip
    yield live
    live.stop()


def rerank(server: LiveServer, key: str, documents: list[str] = DOCS):  # noqa: ANN201
    return server.post("/v1/rerank", {"model": "local", "query": QUERY, "documents": documents}, key=key)


def metric(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


def test_the_proxy_answers_with_the_tokens_in_both_formats(server: LiveServer, tiny_bert: Path) -> None:
    tokens = expected_tokens(tiny_bert, QUERY, DOCS)
    cohere = rerank(server, FREE)
    assert cohere.status_code == 200
    assert cohere.json()["meta"]["tokens"] == {"input_tokens": tokens, "output_tokens": 0}
    assert cohere.json()["meta"]["billed_units"] == {"search_units": 1, "total_tokens": tokens}
    tei = server.post("/rerank", {"query": QUERY, "texts": DOCS}, key=FREE)  # a bare array: the count in a header
    assert tei.status_code == 200 and isinstance(tei.json(), list)
    assert tei.headers["x-dheera-tokens"] == str(tokens)


def test_tpm_answers_429_with_retry_after_past_the_budget_and_spares_other_keys(
    server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dheera_local")
    answers = [rerank(server, METERED) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    refused = answers[-1]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    message = refused.json()["error"]["message"]
    assert "'metered' is over its limit" in message and "tokens a minute" in message
    assert all(rerank(server, FREE).status_code == 200 for _ in range(3))  # its budget is its own
    assert rerank(server, METERED).status_code == 429  # still refused: the tokens have not aged out
    # The key never shows: not in errors, /metrics, nor the logs.
    metrics = server.get("/metrics").text
    seen = [message, refused.text, metrics, caplog.text, *(a.text for a in answers)]
    assert not any(METERED in text or FREE in text for text in seen)


def test_tpm_retry_after_is_when_enough_tokens_age_out() -> None:
    now = [0.0]
    policy = KeyPolicy("team", tpm=10)
    policy.admit(lambda: now[0])
    policy.charge(6, lambda: now[0])
    now[0] = 10.0
    policy.admit(lambda: now[0])  # 6 < 10: admitted, though this one will cross the limit
    policy.charge(6, lambda: now[0])
    now[0] = 20.0
    with pytest.raises(OverloadedError) as refused:
        policy.admit(lambda: now[0])
    assert refused.value.retry_after == 40  # the first 6 age out at 60 s, leaving 6 < 10
    assert "over its limit of 10 tokens a minute (12 scored in the last 60s)" in str(refused.value)
    now[0] = 60.0
    policy.admit(lambda: now[0])
    policy.charge(None, lambda: now[0])  # unknown (a remote without usage): nothing
    policy.charge(0, lambda: now[0])
    unlimited = KeyPolicy("free")
    unlimited.admit()
    unlimited.charge(10**9)  # no tpm: nothing kept, nothing refused
    unlimited.admit()


def test_metrics_count_tokens_per_key_name(server: LiveServer, tiny_bert: Path) -> None:
    tokens = expected_tokens(tiny_bert, QUERY, DOCS)
    rerank(server, METERED)
    rerank(server, FREE)
    rerank(server, FREE, DOCS[:1])
    text = server.get("/metrics").text
    one = expected_tokens(tiny_bert, QUERY, DOCS[:1])
    assert metric(text, "dheera_key_tokens_scored_total", key="metered") == tokens
    assert metric(text, "dheera_key_tokens_scored_total", key="free") == tokens + one
    assert metric(text, "dheera_tokens_scored_total", model="local", backend="local") == 2 * tokens + one
    assert metric(text, "dheera_key_pairs_scored_total", key="free") == 4  # beside the existing counters
    assert METERED not in text and FREE not in text and MASTER_KEY not in text


def test_concurrent_requests_each_count_their_own_pairs(server: LiveServer, tiny_bert: Path) -> None:
    """The micro-batcher merges concurrent requests into one forward pass; each answer keeps its own tokens."""
    sets = [DOCS, DOCS[:1], ["a much longer document about the capital city " * 3], DOCS[1:]]
    found: dict[int, int] = {}

    def one(index: int) -> None:
        found[index] = rerank(server, FREE, sets[index]).json()["meta"]["tokens"]["input_tokens"]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(sets))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert found == {i: expected_tokens(tiny_bert, QUERY, documents) for i, documents in enumerate(sets)}


def test_a_proxy_in_front_of_another_passes_its_count_on(server: LiveServer, tiny_bert: Path) -> None:
    """dheera-local as a Cohere-compatible remote of another: the front reports what the back scored."""
    params = {"model": "cohere/local", "api_base": server.url + "/v1", "api_key": FREE, "cache": False}
    front = LiveServer({
        "model_list": [{"model_name": "front", "dheera_ai_params": params}],
        "general_settings": {"master_key": MASTER_KEY, "num_retries": 0},
    }).start()  # fmt: skip
    try:
        answer = front.post("/v1/rerank", {"model": "front", "query": QUERY, "documents": DOCS})
    finally:
        front.stop()
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-dheera-backend"] == "cohere"
    assert answer.json()["meta"]["tokens"]["input_tokens"] == expected_tokens(tiny_bert, QUERY, DOCS)
