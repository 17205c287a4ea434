"""The LlamaIndex adapter: postprocess_nodes and apostprocess_nodes, alone and as a query engine's
node_postprocessors; real ranking (the keyword model), top_n, scores on new NodeWithScore objects,
and every call served by the engine (its cache, its remote fallback)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload, LlamaDebugHandler
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.response_synthesizers import get_response_synthesizer
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

import dheera_local
from dheera_local import Reranker, testing
from dheera_local.integrations.llama_index import DheeraRerank
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


def retrieved() -> list[NodeWithScore]:
    """Nodes as a vector store would return them, with their retrieval scores."""
    return [
        NodeWithScore(node=TextNode(text=text, id_=f"node-{i}"), score=0.5 + i / 100) for i, text in enumerate(TEXTS)
    ]


def postprocess(postprocessor: DheeraRerank, nodes: list[NodeWithScore], mode: str) -> list[NodeWithScore]:
    """``postprocess_nodes`` with a query string, or ``apostprocess_nodes`` with a QueryBundle."""
    if mode == "sync":
        return postprocessor.postprocess_nodes(nodes, query_str=QUERY)
    return asyncio.run(postprocessor.apostprocess_nodes(nodes, query_bundle=QueryBundle(QUERY)))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_the_paris_nodes_come_first_scored_and_the_input_keeps_its_scores(keyword_model: Path, mode: str) -> None:
    nodes = retrieved()
    kept = postprocess(DheeraRerank(model=str(keyword_model), top_n=2, dtype="float32"), nodes, mode)
    assert {n.node.get_content() for n in kept} == PARIS
    scores = [n.score for n in kept]
    assert scores == sorted(scores, reverse=True) and min(scores) > 0.9
    # New NodeWithScore objects around the same nodes, as LlamaIndex's CohereRerank returns.
    by_id = {n.node.node_id: n for n in nodes}
    assert all(n.node is by_id[n.node.node_id].node and n is not by_id[n.node.node_id] for n in kept)
    assert [n.score for n in nodes] == [n.score for n in retrieved()]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_the_scores_are_the_engines_and_the_next_call_is_served_from_its_cache(keyword_model: Path, mode: str) -> None:
    kept = postprocess(DheeraRerank(model=str(keyword_model), top_n=None, dtype="float32"), retrieved(), mode)
    assert len(kept) == len(TEXTS)
    again = dheera_local.rerank(str(keyword_model), QUERY, TEXTS, dtype="float32")
    assert again.backend == "cache" and again.cache_hits == len(TEXTS)
    assert [(TEXTS[r.index], r.relevance_score) for r in again.results] == [
        (n.node.get_content(), n.score) for n in kept
    ]


def test_embed_visible_metadata_is_scored_as_llama_index_rerankers_do(keyword_model: Path) -> None:
    # The keyword model only rewards "paris": here it is in the metadata, which MetadataMode.EMBED shows...
    shown = TextNode(text="the old museum is famous", metadata={"city": "paris"}, id_="shown")
    hidden = TextNode(
        text="the old museum is famous", metadata={"city": "paris"}, excluded_embed_metadata_keys=["city"], id_="hidden"
    )
    other = TextNode(text="london has a big bridge", id_="other")
    nodes = [NodeWithScore(node=node, score=0.0) for node in (hidden, other, shown)]
    kept = DheeraRerank(model=str(keyword_model), top_n=None, dtype="float32").postprocess_nodes(nodes, query_str=QUERY)
    scores = {n.node.node_id: n.score for n in kept}
    assert kept[0].node.node_id == "shown" and scores["shown"] > 0.9
    assert scores["hidden"] < 0.1  # ...unless the node excludes it from embedding
    assert shown.get_content(metadata_mode=MetadataMode.EMBED) == "city: paris\n\nthe old museum is famous"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_as_a_query_engines_node_postprocessor(keyword_model: Path, mode: str) -> None:
    class ListRetriever(BaseRetriever):
        """Returns the same nodes for every query: a stand-in for a vector index."""

        def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
            return retrieved()

    debug = LlamaDebugHandler()
    engine = RetrieverQueryEngine(
        retriever=ListRetriever(),
        response_synthesizer=get_response_synthesizer(llm=MockLLM()),
        node_postprocessors=[DheeraRerank(model=str(keyword_model), top_n=2, dtype="float32")],
        callback_manager=CallbackManager([debug]),  # the engine hands it to its postprocessors
    )
    if mode == "sync":
        kept = engine.retrieve(QueryBundle(QUERY))
    else:
        kept = asyncio.run(engine.aretrieve(QueryBundle(QUERY)))
    assert {n.node.get_content() for n in kept} == PARIS and min(n.score for n in kept) > 0.9
    # Reported to LlamaIndex's callbacks as a reranking event, as its own rerankers do.
    ((start, end),) = debug.get_event_pairs(CBEventType.RERANKING)
    assert start.payload[EventPayload.MODEL_NAME] == str(keyword_model) and start.payload[EventPayload.TOP_K] == 2
    assert start.payload[EventPayload.QUERY_STR] == QUERY
    assert [n.node.node_id for n in end.payload[EventPayload.NODES]] == [n.node.node_id for n in kept]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_without_local_weights_it_falls_back_to_the_endpoint_once(
    servers: Servers, reranker: Reranker, keyword_model: Path, mode: str
) -> None:
    tei = servers.tei(keyword_model, token="adapter-token-123")
    postprocessor = DheeraRerank(
        model="huggingface/tiny-org/not-on-this-machine", api_base=tei.url, api_key="adapter-token-123",
        top_n=2, reranker=reranker,
    )  # fmt: skip
    first = postprocess(postprocessor, retrieved(), mode)
    assert {n.node.get_content() for n in first} == PARIS
    assert [r.body["texts"] for r in tei.scoring()] == [TEXTS]
    assert tei.scoring()[0].headers["authorization"] == "Bearer adapter-token-123"
    expected = sorted(map(sigmoid, reference_logits(keyword_model, QUERY, TEXTS)), reverse=True)[:2]
    assert [n.score for n in first] == pytest.approx(expected, abs=1e-5)
    second = postprocess(postprocessor, retrieved(), mode)
    assert [(n.node.node_id, n.score) for n in second] == [(n.node.node_id, n.score) for n in first]
    assert len(tei.scoring()) == 1  # the second call was answered by the cache


def test_the_query_is_required_and_no_nodes_make_no_call(reranker: Reranker) -> None:
    postprocessor = DheeraRerank(model="huggingface/tiny-org/not-on-this-machine", backend="remote", reranker=reranker)
    with pytest.raises(ValueError, match="DheeraRerank needs the query"):
        postprocessor.postprocess_nodes(retrieved())
    assert postprocessor.postprocess_nodes([], query_str=QUERY) == []
    assert asyncio.run(postprocessor.apostprocess_nodes([], query_str=QUERY)) == []


def test_it_serializes_as_a_llama_index_component_without_its_secrets() -> None:
    postprocessor = DheeraRerank(model="BAAI/bge-reranker-base", api_key="adapter-token-123", top_n=4)
    data = postprocessor.to_dict()
    assert data["class_name"] == "DheeraRerank" and data["model"] == "BAAI/bge-reranker-base" and data["top_n"] == 4
    assert "api_key" not in data and "reranker" not in data and "adapter-token-123" not in postprocessor.to_json()
    assert DheeraRerank.from_dict(data).model_dump() == postprocessor.model_dump()


def test_the_async_path_is_the_engines_not_a_thread_running_the_sync_one() -> None:
    # BaseNodePostprocessor's default _apostprocess_nodes runs the sync method in a thread; ours awaits
    # the engine's arerank, whose backends score on the event loop (the fake one does, in ascore).
    on_the_loop: list[bool] = []

    def score(query: str, document: str) -> float:
        on_the_loop.append(_loop_running())
        return testing.word_overlap(query, document)

    postprocessor = DheeraRerank(model="any-org/any-model", top_n=1, reranker=testing.fake_reranker(score))
    nodes = [NodeWithScore(node=TextNode(text=text)) for text in ("tokyo japan", "paris capital of france")]
    kept = asyncio.run(postprocessor.apostprocess_nodes(nodes, query_str="capital of france"))
    assert [n.node.get_content() for n in kept] == ["paris capital of france"]
    assert on_the_loop == [True, True]
    postprocessor.postprocess_nodes(nodes, query_str="the capital")  # a new query: not cached
    assert on_the_loop == [True, True, False, False]


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
