"""The LangChain adapter, end to end in LangChain's own ContextualCompressionRetriever: real ranking
(the keyword model), top_n, copies that carry the score, and every call served by the engine (its
cache, its remote fallback)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from conftest import TINY_BERT_ID
from dheera_local import Reranker, testing
from dheera_local.integrations.langchain import DheeraRerank
from loopback import Servers, reference_logits, sigmoid

QUERY = "which city is the capital"
TEXTS = [
    "tokyo is the capital of japan",
    "paris is the capital of france",
    "berlin is a city in germany",
    "the old museum in paris is famous",
    "london has a big bridge",
]
PARIS = {TEXTS[1], TEXTS[3]}


class ListRetriever(BaseRetriever):
    """Returns the same documents (the very objects) for every query: a stand-in for a vector store."""

    documents: list[Document]

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return self.documents


def documents() -> list[Document]:
    return [
        Document(text, metadata={"source": f"doc-{i}", "tags": ["x"]}, id=f"id-{i}") for i, text in enumerate(TEXTS)
    ]


def retrieve(compressor: DheeraRerank, docs: list[Document], mode: str, query: str = QUERY) -> list[Document]:
    """Run LangChain's ContextualCompressionRetriever with ``compressor``: ``invoke`` or ``ainvoke``."""
    retriever = ContextualCompressionRetriever(base_compressor=compressor, base_retriever=ListRetriever(documents=docs))
    if mode == "sync":
        return retriever.invoke(query)
    return asyncio.run(retriever.ainvoke(query))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_the_retriever_keeps_the_paris_documents_best_first_with_their_scores(keyword_model: Path, mode: str) -> None:
    docs = documents()
    compressor = DheeraRerank(model=str(keyword_model), top_n=2, dtype="float32")
    kept = retrieve(compressor, docs, mode)
    assert {doc.page_content for doc in kept} == PARIS
    scores = [doc.metadata["relevance_score"] for doc in kept]
    assert scores == sorted(scores, reverse=True) and min(scores) > 0.9
    # Copies keep the id and the metadata (deep-copied); the retrieved objects are left as they were.
    first = kept[0]
    original = next(doc for doc in docs if doc.page_content == first.page_content)
    assert first is not original and first.id == original.id
    assert first.metadata == {**original.metadata, "relevance_score": scores[0]}
    first.metadata["tags"].append("changed")
    assert docs == documents()


def test_top_n_none_keeps_every_document_in_the_engines_order(keyword_model: Path) -> None:
    kept = retrieve(DheeraRerank(model=str(keyword_model), top_n=None, dtype="float32"), documents(), "sync")
    assert len(kept) == len(TEXTS)
    assert {doc.page_content for doc in kept[:2]} == PARIS
    assert all(doc.metadata["relevance_score"] < 0.1 for doc in kept[2:])


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_the_scores_are_the_engines_and_the_next_call_is_served_from_its_cache(keyword_model: Path, mode: str) -> None:
    import dheera_local

    kept = retrieve(DheeraRerank(model=str(keyword_model), top_n=2, dtype="float32"), documents(), mode)
    # The same request to dheera_local.rerank finds every score in the cache the adapter filled.
    again = dheera_local.rerank(str(keyword_model), QUERY, TEXTS, top_n=2, dtype="float32")
    assert again.backend == "cache" and again.cache_hits == len(TEXTS)
    assert [(TEXTS[r.index], r.relevance_score) for r in again.results] == [
        (doc.page_content, doc.metadata["relevance_score"]) for doc in kept
    ]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_without_local_weights_it_falls_back_to_the_endpoint_once(
    servers: Servers, reranker: Reranker, keyword_model: Path, mode: str
) -> None:
    tei = servers.tei(keyword_model, token="adapter-token-123")
    compressor = DheeraRerank(
        model="huggingface/tiny-org/not-on-this-machine", api_base=tei.url, api_key="adapter-token-123",
        top_n=2, reranker=reranker,
    )  # fmt: skip
    first = retrieve(compressor, documents(), mode)
    assert {doc.page_content for doc in first} == PARIS
    assert [r.body["texts"] for r in tei.scoring()] == [TEXTS]
    assert tei.scoring()[0].headers["authorization"] == "Bearer adapter-token-123"
    expected = sorted(map(sigmoid, reference_logits(keyword_model, QUERY, TEXTS)), reverse=True)[:2]
    assert [doc.metadata["relevance_score"] for doc in first] == pytest.approx(expected, abs=1e-5)
    # The second identical call is answered by the cache: the endpoint sees nothing more.
    second = retrieve(compressor, documents(), mode)
    assert second == first and len(tei.scoring()) == 1


def test_a_named_model_goes_to_a_cohere_compatible_endpoint(
    servers: Servers, reranker: Reranker, keyword_model: Path
) -> None:
    # As with a model of a dheera-local proxy: a name that is not a hub id, and the proxy's URL.
    cohere = servers.cohere(keyword_model)
    compressor = DheeraRerank(model="bge-reranker-base", api_base=cohere.url, top_n=2, reranker=reranker)
    kept = compressor.compress_documents(documents(), QUERY)
    assert {doc.page_content for doc in kept} == PARIS
    (request,) = cohere.scoring()
    assert request.body["model"] == "bge-reranker-base" and request.body["documents"] == TEXTS


def test_local_weights_win_over_the_endpoint(servers: Servers, reranker: Reranker, tiny_bert: Path) -> None:
    tei = servers.tei(tiny_bert)
    compressor = DheeraRerank(
        model=f"huggingface/{TINY_BERT_ID}", api_base=tei.url, top_n=None, dtype="float32", reranker=reranker
    )
    kept = compressor.compress_documents(documents(), QUERY)
    assert tei.scoring() == []
    expected = dict(zip(TEXTS, map(sigmoid, reference_logits(tiny_bert, QUERY, TEXTS)), strict=True))
    assert {doc.page_content: doc.metadata["relevance_score"] for doc in kept} == pytest.approx(expected, abs=1e-5)


def test_no_documents_no_call(reranker: Reranker) -> None:
    compressor = DheeraRerank(model="huggingface/tiny-org/not-on-this-machine", backend="remote", reranker=reranker)
    assert compressor.compress_documents([], QUERY) == []
    assert asyncio.run(compressor.acompress_documents([], QUERY)) == []


def test_the_async_path_is_the_engines_not_a_thread_running_the_sync_one() -> None:
    # LangChain's default acompress_documents runs compress_documents in a thread; ours awaits the
    # engine's arerank, whose backends score on the event loop (the fake one does, in ascore).
    on_the_loop: list[bool] = []

    def score(query: str, document: str) -> float:
        on_the_loop.append(_loop_running())
        return testing.word_overlap(query, document)

    compressor = DheeraRerank(model="any-org/any-model", top_n=1, reranker=testing.fake_reranker(score))
    docs = [Document("tokyo japan"), Document("paris capital of france")]
    assert [d.page_content for d in asyncio.run(compressor.acompress_documents(docs, "capital of france"))] == [
        "paris capital of france"
    ]
    assert on_the_loop == [True, True]
    compressor.compress_documents(docs, "the capital")  # a new query: not cached
    assert on_the_loop == [True, True, False, False]


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
