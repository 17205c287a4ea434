"""The public surface: names, signatures, the response schema and the seed docs' examples."""

from __future__ import annotations

import asyncio
import inspect
import json
import uuid

import pytest

import dheera_local
import dheera_local as dheera_ai
from conftest import SEED_DOCUMENTS, SEED_QUERY, TINY_XLMR_ID


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in dir(dheera_local) if not name.startswith("_") or name == "__version__"}
    modules = {name for name in public if inspect.ismodule(getattr(dheera_local, name))}
    assert set(dheera_local.__all__) == public - modules


def test_rerank_signature_is_the_contract() -> None:
    expected = [
        "model", "query", "documents", "top_n", "return_documents", "api_base", "api_key", "backend", "cache",
        "cache_dir", "device", "dtype", "max_length", "raw_scores", "timeout",
    ]  # fmt: skip
    for function in (dheera_local.rerank, dheera_local.arerank):
        params = list(inspect.signature(function).parameters)
        assert params[: len(expected)] == expected
        assert inspect.signature(function).parameters["backend"].default == "auto"
    assert inspect.iscoroutinefunction(dheera_local.arerank)


def test_the_signatures_spell_out_every_option_with_its_default() -> None:
    from dheera_local._options import RerankOptions

    options = {name: field.default for name, field in RerankOptions.model_fields.items()}
    request = {"top_n": None, "return_documents": False, "rank_fields": None, "max_chunks_per_doc": None,
               "max_tokens_per_doc": None}  # fmt: skip
    for function in (dheera_local.rerank, dheera_local.arerank):
        parameters = inspect.signature(function).parameters
        keywords = {name: p.default for name, p in parameters.items() if name not in ("model", "query", "documents")}
        assert keywords == {**options, **request}, function.__name__


def test_seed_sdk_example_runs_unchanged_and_matches_the_response_shape() -> None:
    response = dheera_ai.rerank(
        model=f"huggingface/{TINY_XLMR_ID}", query=SEED_QUERY, documents=SEED_DOCUMENTS, top_n=3
    )
    data = response.model_dump()
    assert list(data) == ["results", "id", "meta"]
    assert uuid.UUID(data["id"]).version == 4
    assert len(data["results"]) == 3
    for result in data["results"]:
        assert set(result) == {"index", "relevance_score"}  # no "document" key, not even null
        assert 0.0 < result["relevance_score"] < 1.0
    scores = [r["relevance_score"] for r in data["results"]]
    assert scores == sorted(scores, reverse=True)
    assert data["meta"]["api_version"] == {"version": "2", "is_experimental": False}
    tokens = data["meta"]["tokens"]["input_tokens"]  # the tokens scored (tests/test_usage_tokens.py)
    assert tokens > 0 and data["meta"]["billed_units"] == {"search_units": 1, "total_tokens": tokens}
    assert data["meta"]["dheera_local"]["backend"] == "local"
    assert json.loads(response.model_dump_json()) == data


def test_seed_async_example_runs_unchanged() -> None:
    async def async_rerank_example() -> dheera_local.RerankResponse:
        return await dheera_ai.arerank(
            model=f"huggingface/{TINY_XLMR_ID}", query=SEED_QUERY, documents=SEED_DOCUMENTS, top_n=3
        )

    response = asyncio.run(async_rerank_example())
    assert [r.index for r in response.results] == [
        r.index for r in dheera_ai.rerank(f"huggingface/{TINY_XLMR_ID}", SEED_QUERY, SEED_DOCUMENTS, top_n=3).results
    ]


def test_litellm_style_item_access() -> None:
    response = dheera_ai.rerank(TINY_XLMR_ID, SEED_QUERY, SEED_DOCUMENTS, return_documents=True)
    assert response["results"][0]["index"] == response.results[0].index
    assert response["results"][0]["document"] == {"text": SEED_DOCUMENTS[response.results[0].index]}
    assert "results" in response and response.get("missing", 7) == 7
    assert response["meta"]["billed_units"]["search_units"] == 1
    with pytest.raises(KeyError):
        response["nope"]


def test_response_reports_backend_and_cache_hits() -> None:
    first = dheera_ai.rerank(TINY_XLMR_ID, SEED_QUERY, SEED_DOCUMENTS)
    second = dheera_ai.rerank(TINY_XLMR_ID, SEED_QUERY, SEED_DOCUMENTS)
    assert (first.backend, first.cache_hits) == ("local", 0)
    assert (second.backend, second.cache_hits) == ("cache", 4)
    assert second.meta.dheera_local.scored == 0
