"""LlamaIndex: :class:`DheeraRerank`, a node postprocessor served by dheera_local's engine.

>>> from dheera_local.integrations.llama_index import DheeraRerank
>>> query_engine = index.as_query_engine(
...     similarity_top_k=10, node_postprocessors=[DheeraRerank(model="BAAI/bge-reranker-base", top_n=3)]
... )

Like LlamaIndex's ``SentenceTransformerRerank`` and ``CohereRerank``, it scores each node's content
(``MetadataMode.EMBED``) against ``QueryBundle.query_str`` and returns the best ``top_n`` nodes,
best first, with ``NodeWithScore.score`` set to the relevance score. New ``NodeWithScore`` objects
are returned: the ones it is given keep their retrieval scores. Both ``postprocess_nodes`` and
``apostprocess_nodes`` go through the engine (the async one without blocking the event loop).
Needs ``pip install "dheera_local[llama-index]"``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from .._response import RerankResult
from ._base import RerankFields, missing_extra

try:
    from llama_index.core.callbacks import CBEventType, EventPayload
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
except ImportError as exc:  # one message naming the extra, not llama_index's own
    raise ImportError(missing_extra("llama_index", "llama-index-core", "llama-index")) from exc

__all__ = ["DheeraRerank"]

dispatcher = get_dispatcher(__name__)


class DheeraRerank(RerankFields, BaseNodePostprocessor):
    """Reranks LlamaIndex nodes with a cross-encoder: local weights first, remote fallback, cached.

    Args:
        model: ``huggingface/ORG/NAME``, ``ORG/NAME``, a local model folder, or a name ``api_base`` knows.
        top_n: How many nodes to keep (None: all), best first.
        api_base, api_key, api_format, backend, cache, device, dtype, max_length, timeout: As for
            :func:`dheera_local.rerank`.
        reranker: The :class:`dheera_local.Reranker` to use (default: the one behind ``dheera_local.rerank``).
    """

    @classmethod
    def class_name(cls) -> str:
        """The name LlamaIndex serializes this component under."""
        return "DheeraRerank"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        query = _required(query_bundle)
        if not nodes:
            return []
        with self._reranking(nodes, query) as event:
            reranked = _scored(nodes, self.rank(query.query_str, _texts(nodes)))
            event.on_end(payload={EventPayload.NODES: reranked})
        dispatcher.event(ReRankEndEvent(nodes=reranked))
        return reranked

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        # The engine's own async path (pooled async HTTP, scoring in worker threads), not the base
        # class's default of running the sync method in a thread.
        query = _required(query_bundle)
        if not nodes:
            return []
        with self._reranking(nodes, query) as event:
            reranked = _scored(nodes, await self.arank(query.query_str, _texts(nodes)))
            event.on_end(payload={EventPayload.NODES: reranked})
        dispatcher.event(ReRankEndEvent(nodes=reranked))
        return reranked

    def _reranking(self, nodes: list[NodeWithScore], query_bundle: QueryBundle) -> AbstractContextManager[Any]:
        """Report the rerank to LlamaIndex's instrumentation and callbacks, as its own rerankers do."""
        top_n = self.top_n if self.top_n is not None else len(nodes)
        dispatcher.event(ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=top_n, model_name=self.model))
        payload = {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: self.model,
            EventPayload.QUERY_STR: query_bundle.query_str,
            EventPayload.TOP_K: top_n,
        }
        return self.callback_manager.event(CBEventType.RERANKING, payload=payload)


def _required(query_bundle: QueryBundle | None) -> QueryBundle:
    # ValueError, as LlamaIndex's own rerankers raise when the query is missing.
    if query_bundle is None:
        raise ValueError("DheeraRerank needs the query: pass query_bundle or query_str to postprocess_nodes")
    return query_bundle


def _texts(nodes: list[NodeWithScore]) -> list[str]:
    # MetadataMode.EMBED: what LlamaIndex's own rerankers score (the text with its embed-visible metadata).
    return [node.node.get_content(metadata_mode=MetadataMode.EMBED) for node in nodes]


def _scored(nodes: list[NodeWithScore], results: list[RerankResult]) -> list[NodeWithScore]:
    """New NodeWithScore objects for the nodes the results name, in the results' order."""
    return [NodeWithScore(node=nodes[result.index].node, score=result.relevance_score) for result in results]
