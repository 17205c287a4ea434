"""LangChain: :class:`DheeraRerank`, a document compressor served by dheera_local's engine.

>>> from langchain_classic.retrievers import ContextualCompressionRetriever
>>> from dheera_local.integrations.langchain import DheeraRerank
>>> retriever = ContextualCompressionRetriever(
...     base_compressor=DheeraRerank(model="BAAI/bge-reranker-base", top_n=3), base_retriever=my_retriever
... )

Like LangChain's own rerankers (Cohere, Jina, Infinity), it returns copies of the best documents,
best first, each with ``metadata["relevance_score"]``; the documents it is given are not changed.
Needs ``pip install "dheera_local[langchain]"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy

from .._response import RerankResult
from ._base import RerankFields, missing_extra

try:
    from langchain_core.callbacks import Callbacks
    from langchain_core.documents import BaseDocumentCompressor, Document
except ImportError as exc:  # one message naming the extra, not langchain_core's own
    raise ImportError(missing_extra("langchain", "langchain-core", "langchain")) from exc

__all__ = ["DheeraRerank"]


class DheeraRerank(RerankFields, BaseDocumentCompressor):
    """Reranks LangChain documents with a cross-encoder: local weights first, remote fallback, cached.

    Args:
        model: ``huggingface/ORG/NAME``, ``ORG/NAME``, a local model folder, or a name ``api_base`` knows.
        top_n: How many documents to keep (None: all), best first.
        api_base, api_key, api_format, backend, cache, device, dtype, max_length, timeout: As for
            :func:`dheera_local.rerank`.
        reranker: The :class:`dheera_local.Reranker` to use (default: the one behind ``dheera_local.rerank``).
    """

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """Rerank ``documents`` for ``query``; returns the best ``top_n``, scored, best first."""
        results = self.rank(query, [document.page_content for document in documents])
        return _scored(documents, results)

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """The async twin of :meth:`compress_documents` (scoring runs off the event loop)."""
        results = await self.arank(query, [document.page_content for document in documents])
        return _scored(documents, results)


def _scored(documents: Sequence[Document], results: list[RerankResult]) -> list[Document]:
    """Copies of the documents the results name, in the results' order, with their relevance score."""
    return [_with_score(documents[result.index], result.relevance_score) for result in results]


def _with_score(document: Document, score: float) -> Document:
    # A deep copy of the metadata, as LangChain's Cohere and Jina rerankers make: the caller's document
    # (often a vector store's cached object) keeps no score from this query. The id is kept, unlike theirs.
    metadata = {**deepcopy(document.metadata), "relevance_score": score}
    return document.model_copy(update={"metadata": metadata})
