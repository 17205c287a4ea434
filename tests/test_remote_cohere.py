"""Cohere-compatible endpoints: which names go there, URL and body, results[] and data[], documents."""

from __future__ import annotations

from pathlib import Path

import pytest

import dheera_local
from conftest import TINY_BERT_ID
from dheera_local import AllBackendsFailedError, ModelNotAvailableError, Reranker
from loopback import Fault, Servers, by_index, call, reference_logits, sigmoid

QUERY = "what is the capital of the united states"
DOCS = [
    "washington is the capital of the united states",
    "carson city is the capital city of nevada",
    "capital punishment existed in the united states",
    "the river in paris",
]


@pytest.mark.parametrize(
    ("model", "sent_as"),
    [
        ("bge-reranker-base", "bge-reranker-base"),
        ("cohere/rerank-v3.5", "rerank-v3.5"),
        ("tiny-org/remote-only", "tiny-org/remote-only"),  # ORG/NAME without huggingface/: Cohere-compatible
    ],
)
def test_names_without_the_huggingface_prefix_use_the_cohere_format(
    servers: Servers, tiny_bert: Path, model: str, sent_as: str
) -> None:
    server = servers.cohere(tiny_bert)
    response = dheera_local.rerank(model, QUERY, DOCS, api_base=server.url, api_key="sk-proxy", cache=False)
    assert response.backend == "cohere"
    assert server.paths() == ["POST /rerank"]
    recorded = server.scoring()[0]
    assert recorded.headers["authorization"] == "Bearer sk-proxy"
    assert recorded.body == {
        "model": sent_as,
        "query": QUERY,
        "documents": DOCS,
        "top_n": len(DOCS),
        "return_documents": False,
    }
    expected = reference_logits(tiny_bert, QUERY, DOCS)
    assert by_index(response) == pytest.approx({i: sigmoid(x) for i, x in enumerate(expected)}, abs=1e-6)


@pytest.mark.parametrize(
    ("suffix", "path"),
    [("", "/rerank"), ("/", "/rerank"), ("/rerank", "/rerank"), ("/v1", "/v1/rerank"), ("/v2/rerank/", "/v2/rerank")],
)
def test_api_base_forms(servers: Servers, tiny_bert: Path, suffix: str, path: str) -> None:
    server = servers.cohere(tiny_bert)
    dheera_local.rerank("served-model", QUERY, DOCS, api_base=server.url + suffix, cache=False)
    assert server.paths() == [f"POST {path}"]


@pytest.mark.parametrize(("results_key", "document_style"), [("results", "object"), ("data", "string")])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_cohere_and_voyage_response_shapes(
    servers: Servers, tiny_bert: Path, reranker: Reranker, results_key: str, document_style: str, mode: str
) -> None:
    server = servers.cohere(tiny_bert, results_key=results_key, document_style=document_style, echo_documents=True)
    response = call(reranker, mode, "served-model", QUERY, DOCS, api_base=server.url, raw_scores=True, cache=False)
    expected = reference_logits(tiny_bert, QUERY, DOCS)
    assert by_index(response) == pytest.approx(dict(enumerate(expected)), abs=1e-6)  # logits recovered


def test_top_n_and_documents_are_served_from_the_full_ranking(servers: Servers, tiny_bert: Path) -> None:
    server = servers.cohere(tiny_bert)
    full = dheera_local.rerank("served-model", QUERY, DOCS, api_base=server.url, cache=False)
    top = dheera_local.rerank(
        "served-model", QUERY, [{"text": d, "n": i} for i, d in enumerate(DOCS)], top_n=2,
        return_documents=True, api_base=server.url, cache=False,
    )  # fmt: skip
    assert [r.index for r in top.results] == [r.index for r in full.results[:2]]
    assert [r.document for r in top.results] == [{"text": DOCS[r.index], "n": r.index} for r in top.results]
    assert server.scoring()[-1].body["top_n"] == len(DOCS)  # all scores are cached, top_n applied here


def test_more_than_1000_documents_are_split(servers: Servers, tiny_bert: Path, reranker: Reranker) -> None:
    server = servers.cohere(tiny_bert)
    docs = [f"d{i} capital" for i in range(1001)]
    response = reranker.rerank("served-model", QUERY, docs, api_base=server.url, top_n=3, cache=False)
    assert sorted(len(r.body["documents"]) for r in server.scoring()) == [1, 1000]
    assert len(response.results) == 3


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"answer": []}, "expected an object with a results (or data) array"),
        ({"results": [{"index": 0, "relevance_score": 0.5}]}, "1 results for 4 documents"),
        ({"results": [{"index": 9, "relevance_score": 0.5}]}, "bad result entry"),
        ({"results": [{"index": 0, "relevance_score": "high"}]}, "bad result entry"),
    ],
)
def test_bodies_of_the_wrong_shape_are_errors(
    servers: Servers, tiny_bert: Path, reranker: Reranker, body: object, problem: str
) -> None:
    server = servers.cohere(tiny_bert)
    server.always = Fault(200, body=body)
    with pytest.raises(AllBackendsFailedError, match="unexpected body") as caught:
        reranker.rerank("served-model", QUERY, DOCS, api_base=server.url, cache=False)
    assert problem in str(caught.value)
    assert len(server.scoring()) == 1


def test_a_named_model_needs_an_api_base() -> None:
    with pytest.raises(ModelNotAvailableError, match="pass api_base"):
        dheera_local.rerank("bge-reranker-base", QUERY, DOCS)
    with pytest.raises(ModelNotAvailableError, match="cannot run locally"):
        dheera_local.rerank("cohere/rerank-v3.5", QUERY, DOCS, api_base="http://127.0.0.1:1", backend="local")


def test_a_hub_id_with_local_weights_still_scores_locally_first(servers: Servers, tiny_bert: Path) -> None:
    server = servers.cohere(tiny_bert)
    response = dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS, api_base=server.url, cache=False)
    assert response.backend == "local"
    assert server.requests == []
