"""Bad input gets an error naming the field (and document index), before any model or cache work."""

from __future__ import annotations

import pytest

import dheera_local
from conftest import TINY_BERT_ID
from dheera_local import InvalidRequestError


def rerank(**overrides):  # noqa: ANN003, ANN201
    args = {"model": TINY_BERT_ID, "query": "capital", "documents": ["a", "b"]}
    args.update(overrides)
    return dheera_local.rerank(**args)


@pytest.mark.parametrize(
    ("overrides", "field", "index"),
    [
        ({"query": ""}, "query", None),
        ({"query": "   "}, "query", None),
        ({"query": 42}, "query", None),
        ({"documents": "one string"}, "documents", None),
        ({"documents": None}, "documents", None),
        ({"documents": ["ok", 3, "ok"]}, "documents", 1),
        ({"documents": ["ok", {"title": "no text"}]}, "documents", 1),
        ({"documents": ["ok", "ok", {"text": 5}]}, "documents", 2),
        ({"top_n": 0}, "top_n", None),
        ({"top_n": -2}, "top_n", None),
        ({"top_n": "3"}, "top_n", None),
        ({"top_n": True}, "top_n", None),
        ({"backend": "gpu"}, "backend", None),
        ({"max_length": 2}, "max_length", None),
        ({"timeout": -1}, "timeout", None),
        ({"api_base": "ftp://x"}, "api_base", None),
        ({"model": ""}, "model", None),
        ({"model": "huggingface/not-a-hub-id"}, "model", None),
        ({"model": "./no/such/folder"}, "model", None),
        ({"dtype": "float8"}, "dtype", None),
        ({"device": "warp-drive"}, "device", None),
        ({"return_documents": "yes"}, "return_documents", None),
    ],
)
def test_bad_input_names_the_field(overrides: dict, field: str, index: int | None) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        rerank(**overrides)
    assert caught.value.field == field
    assert caught.value.index == index
    assert field in str(caught.value)
    if index is not None:
        assert f"documents[{index}]" in str(caught.value)


def test_a_max_length_past_the_models_positions_is_refused_whatever_the_documents(tiny_bert) -> None:  # noqa: ANN001
    # Torch would only fail on a document longer than the model's 512 positions, so the same request would work
    # or not depending on its data (and under backend="auto", fall back to a remote service).
    for documents in (["short"], ["short", "the river flows " * 300]):
        with pytest.raises(InvalidRequestError) as caught:
            rerank(model=str(tiny_bert), documents=documents, max_length=1024, cache=False)
        assert caught.value.field == "max_length"
        assert "max_length <= 512" in str(caught.value)
    response = rerank(model=str(tiny_bert), documents=["short", "the river flows " * 300], max_length=512)
    assert len(response.results) == 2


def test_invalid_request_is_also_a_value_error() -> None:
    with pytest.raises(ValueError):
        rerank(query="")


def test_empty_documents_return_empty_results_without_loading() -> None:
    # A model with no weights anywhere: any attempt to plan or load would raise.
    response = rerank(model="tiny-org/no-weights-anywhere", documents=[], backend="local")
    assert response.results == []
    assert response.meta.billed_units.search_units == 0


def test_top_n_larger_than_documents_returns_all() -> None:
    assert len(rerank(top_n=50).results) == 2


def test_duplicate_documents_keep_their_own_indices_and_are_scored_once() -> None:
    docs = ["paris is in france", "berlin", "paris is in france", "berlin"]
    response = rerank(documents=docs)
    assert sorted(r.index for r in response.results) == [0, 1, 2, 3]
    by_index = {r.index: r.relevance_score for r in response.results}
    assert by_index[0] == by_index[2] and by_index[1] == by_index[3]
    assert response.meta.dheera_local.scored == 2


def test_caller_documents_are_not_mutated() -> None:
    docs = [{"text": "a", "id": 1}, {"text": "b", "id": 2}]
    snapshot = [dict(d) for d in docs]
    response = rerank(documents=docs, return_documents=True)
    response.results[0].document["id"] = 99
    assert docs == snapshot
