"""The seed docs' SDK examples, run as written (model names, tokens and all), imports included: `import dheera_ai`.

The seed names huggingface/BAAI/bge-reranker-base: here it is served by a tiny model, either from a
local HF cache entry under that id, or by a loopback HF hosted / TEI endpoint.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import dheera_ai
import dheera_local
from conftest import SEED_DOCUMENTS, SEED_QUERY
from dheera_local.testing import install_in_hub_cache
from loopback import Servers, reference_logits, sigmoid


def expected_top3(folder: Path) -> list[tuple[int, float]]:
    scores = [sigmoid(x) for x in reference_logits(folder, SEED_QUERY, SEED_DOCUMENTS)]
    return sorted(enumerate(scores), key=lambda p: -p[1])[:3]


def assert_seed_answer(response: dheera_ai.RerankResponse, folder: Path) -> None:
    assert len(response.results) == 3
    for result, (index, score) in zip(response.results, expected_top3(folder), strict=True):
        assert result.index == index
        assert result.relevance_score == pytest.approx(score, abs=1e-4)


def test_basic_usage_with_hf_token_through_hf_hosted(tiny_xlmr: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Servers() as servers:
        hosted = servers.hf({"BAAI/bge-reranker-base": tiny_xlmr}, token="hf_xxxxxx")
        monkeypatch.setenv("DHEERA_HF_INFERENCE_URL", hosted.url)
        monkeypatch.setenv("HF_TOKEN", "hf_xxxxxx")  # the seed sets os.environ["HF_TOKEN"]
        response = dheera_ai.rerank(
            model="huggingface/BAAI/bge-reranker-base", query=SEED_QUERY, documents=SEED_DOCUMENTS, top_n=3
        )
    assert response.backend == "hf_hosted"
    assert_seed_answer(response, tiny_xlmr)


def test_basic_usage_served_locally_when_the_weights_are_here(
    tiny_xlmr: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "hub"
    install_in_hub_cache(tiny_xlmr, "BAAI/bge-reranker-base", cache)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_TOKEN", "hf_xxxxxx")
    response = dheera_ai.rerank(
        model="huggingface/BAAI/bge-reranker-base", query=SEED_QUERY, documents=SEED_DOCUMENTS, top_n=3,
        dtype="float32",
    )  # fmt: skip
    assert response.backend == "local"
    assert_seed_answer(response, tiny_xlmr)


def test_custom_endpoint_usage(tiny_bert: Path) -> None:
    from dheera_ai import rerank  # the form the seed's config section names

    with Servers() as servers:
        endpoint = servers.tei(tiny_bert, token="test_api_key")
        response = rerank(
            model="huggingface/BAAI/bge-reranker-base",
            query="hello",
            documents=["hello", "world"],
            top_n=2,
            api_base=endpoint.url,
            api_key="test_api_key",
        )
    assert response.backend == "tei"
    expected = [sigmoid(x) for x in reference_logits(tiny_bert, "hello", ["hello", "world"])]
    assert {r.index: r.relevance_score for r in response.results} == pytest.approx(dict(enumerate(expected)), abs=1e-6)


def test_async_usage(tiny_xlmr: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Servers() as servers:
        hosted = servers.hf({"BAAI/bge-reranker-base": tiny_xlmr}, token="hf_xxxxxx")
        monkeypatch.setenv("DHEERA_HF_INFERENCE_URL", hosted.url)
        monkeypatch.setenv("HF_TOKEN", "hf_xxxxxx")

        async def async_rerank_example() -> dheera_ai.RerankResponse:
            return await dheera_ai.arerank(
                model="huggingface/BAAI/bge-reranker-base", query=SEED_QUERY, documents=SEED_DOCUMENTS, top_n=3
            )

        response = asyncio.run(async_rerank_example())
    assert_seed_answer(response, tiny_xlmr)


def test_a_wrong_token_fails_with_a_message_that_does_not_leak_it(
    tiny_xlmr: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Servers() as servers:
        hosted = servers.hf({"BAAI/bge-reranker-base": tiny_xlmr}, token="hf_right")
        monkeypatch.setenv("DHEERA_HF_INFERENCE_URL", hosted.url)
        with pytest.raises(dheera_ai.AllBackendsFailedError) as caught:
            dheera_ai.rerank(
                "huggingface/BAAI/bge-reranker-base", SEED_QUERY, SEED_DOCUMENTS, api_key="hf_wrong_secret"
            )
    assert "401" in str(caught.value) and "hf_wrong_secret" not in str(caught.value)


def test_dheera_ai_is_dheera_local_under_the_seed_name() -> None:
    from dheera_ai import AllBackendsFailedError, RerankResponse, arerank, rerank

    assert rerank is dheera_local.rerank and arerank is dheera_local.arerank
    assert RerankResponse is dheera_local.RerankResponse  # one class: isinstance works across both names
    assert AllBackendsFailedError is dheera_local.AllBackendsFailedError
    assert dheera_ai.__version__ == dheera_local.__version__ and set(dheera_ai.__all__) == set(dheera_local.__all__)
    with pytest.raises(AttributeError, match="no_such_name"):
        dheera_ai.no_such_name  # noqa: B018
