"""The public functions: ``rerank`` and ``arerank``, served by the default :class:`Reranker`.

Their signatures spell out every option for users and IDEs; the options are defined once, in
:mod:`._options` (a test keeps the two in step), and checked once, by ``build_request``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._engine.request import build_request
from ._engine.runtime import default_reranker
from ._response import RerankResponse


def rerank(
    model: str,
    query: str,
    documents: Sequence[str | dict[str, Any]],
    top_n: int | None = None,
    return_documents: bool = False,
    *,
    api_base: str | None = None,
    api_key: str | None = None,
    backend: str = "auto",
    cache: bool = True,
    cache_dir: str | Path | None = None,
    device: str | None = None,
    dtype: str | None = None,
    max_length: int | None = None,
    raw_scores: bool = False,
    timeout: float | None = None,
    rank_fields: list[str] | None = None,
    max_chunks_per_doc: int | None = None,
    max_tokens_per_doc: int | None = None,
    batch_tokens: int | None = None,
    api_format: str | None = None,
    instruction: str | None = None,
    prompt: str | None = None,
) -> RerankResponse:
    """Rerank ``documents`` by relevance to ``query``.

    Args:
        model: ``huggingface/ORG/NAME``, ``ORG/NAME``, a local model folder, or (with ``api_base``)
            the name a Cohere-compatible server knows (``cohere/NAME`` forces that format).
        query: The search query.
        documents: Strings, or objects with a ``text`` field (or the fields named by ``rank_fields``).
        top_n: Return only the best ``top_n`` results (all when None or larger than the list).
        return_documents: Include each document in its result.
        api_base: A remote endpoint: TEI-compatible for ``huggingface/ORG/NAME``, Cohere-compatible for
            any other name (bare ``ORG/NAME`` included). Local weights still win under ``backend="auto"``.
        api_key: Token for the remote endpoint; for the HF hosted API defaults to ``HF_TOKEN``.
        api_format: The endpoint's wire format, ``tei``, ``cohere`` or ``hf`` (HF Inference Endpoints);
            default: ``tei`` for ``huggingface/ORG/NAME``, else ``cohere``.
        backend: ``auto`` (local weights first, then remote), ``local`` or ``remote``.
        cache: Use the on-disk score cache.
        cache_dir: Cache folder (default ``$DHEERA_CACHE_DIR`` or ``~/.cache/dheera_local``).
        device: Torch device for the local backend (default: cuda, then mps, then cpu).
        dtype: Precision for the local backend: ``auto``, ``float32``, ``bfloat16``, ``float16``, ``int8`` (CPU only).
        max_length: Tokens per (query, document) pair; longer pairs are truncated.
        raw_scores: Return logits instead of sigmoid scores.
        timeout: Seconds one remote HTTP request may take, its whole answer included (retries get their own).
        rank_fields: Fields of object documents to score, joined as ``field: value`` lines.
        max_chunks_per_doc: Score long documents as up to this many windows (max over windows).
        max_tokens_per_doc: Cohere v2 form: score up to this many tokens of each document.
        batch_tokens: Padded tokens per forward pass of the local backend (default: per device).
        instruction: Qwen3-Reranker's task instruction (default: the model card's); part of the cache key.
        prompt: bge-reranker-v2-gemma's prompt after the pair (default: FlagEmbedding's); part of the cache key.

    Returns:
        A Cohere-style :class:`RerankResponse`, results sorted best first.

    Raises:
        InvalidRequestError: Bad input; names the field and document index.
        ModelNotAvailableError: No local weights and no usable remote path; says how to fix it.
        AllBackendsFailedError: Every candidate backend failed; lists why.
    """
    # The parameters are build_request's, one for one: a new option is a parameter here and nothing more.
    request = build_request(**locals())
    return default_reranker().run(request)


async def arerank(
    model: str,
    query: str,
    documents: Sequence[str | dict[str, Any]],
    top_n: int | None = None,
    return_documents: bool = False,
    *,
    api_base: str | None = None,
    api_key: str | None = None,
    backend: str = "auto",
    cache: bool = True,
    cache_dir: str | Path | None = None,
    device: str | None = None,
    dtype: str | None = None,
    max_length: int | None = None,
    raw_scores: bool = False,
    timeout: float | None = None,
    rank_fields: list[str] | None = None,
    max_chunks_per_doc: int | None = None,
    max_tokens_per_doc: int | None = None,
    batch_tokens: int | None = None,
    api_format: str | None = None,
    instruction: str | None = None,
    prompt: str | None = None,
) -> RerankResponse:
    """The async twin of :func:`rerank` (same parameters); never blocks the event loop."""
    # The parameters are build_request's, one for one: a new option is a parameter here and nothing more.
    request = build_request(**locals())
    return await default_reranker().arun(request)
