"""Validation of a rerank call into a :class:`RerankRequest`.

Every check names the field (and the document index) it rejects, so a bad request never
reaches torch, httpx or the cache.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .._errors import InvalidRequestError
from .._models.model_ref import ModelRef, parse_model
from .._options import DEFAULT_OPTIONS, MIN_MAX_LENGTH, RerankOptions, check_flag, check_optional_int, merge_options

# A query is cut to the model's window anyway (1,024 tokens at most by default, 8,192 positions for
# the longest models); a longer one only costs memory, time and upload (HF hosted repeats it per pair).
MAX_QUERY_CHARS = 100_000
# A model reads a few thousand characters of a document (the rest is cut before tokenizing, see
# _text_bound); beyond this the text only costs memory and upload. As the server's request body limit.
MAX_DOCUMENT_BYTES = 10_000_000
# Structured documents are flat records; deeper nesting only serves to exhaust a recursive parser.
MAX_DOCUMENT_DEPTH = 32


@dataclass(frozen=True)
class RerankRequest:
    """A validated request. ``texts[i]`` is what gets scored for document ``i``."""

    model: ModelRef
    query: str
    texts: list[str]
    documents: list[dict[str, Any]]
    top_n: int | None = None
    return_documents: bool = False
    max_chunks_per_doc: int | None = None
    max_tokens_per_doc: int | None = None
    options: RerankOptions = DEFAULT_OPTIONS


def build_request(
    model: object,
    query: object,
    documents: object,
    top_n: object = None,
    return_documents: object = False,
    *,
    rank_fields: object = None,
    max_chunks_per_doc: object = None,
    max_tokens_per_doc: object = None,
    options: RerankOptions | None = None,
    **values: Any,
) -> RerankRequest:
    """Validate the public arguments of ``rerank()``; raises InvalidRequestError.

    The engine options are ``options`` (made at the edge: a served model's, an adapter's), with the keyword
    ``values`` (``rerank()``'s, a body's ``raw_scores``) checked and set on top."""
    fields = _rank_fields(rank_fields)
    docs = _documents(documents)
    return RerankRequest(
        model=parse_model(model),
        query=_query(query),
        texts=[_bounded_size(_text_of(doc, index, fields), index) for index, doc in enumerate(docs)],
        documents=[{"text": doc} if isinstance(doc, str) else dict(doc) for doc in docs],
        top_n=check_optional_int(top_n, "top_n"),
        return_documents=check_flag(return_documents, "return_documents"),
        max_chunks_per_doc=check_optional_int(max_chunks_per_doc, "max_chunks_per_doc"),
        max_tokens_per_doc=check_optional_int(max_tokens_per_doc, "max_tokens_per_doc", MIN_MAX_LENGTH),
        options=merge_options(options, values),
    )


def _query(query: object) -> str:
    if not isinstance(query, str):
        raise InvalidRequestError(f"query must be a string, got {type(query).__name__}", field="query")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidRequestError(
            f"query is {len(query):,} characters; the limit is {MAX_QUERY_CHARS:,} (the model reads at most "
            "max_length tokens of it). Send a shorter query",
            field="query",
        )
    if not query.strip():
        raise InvalidRequestError("query must not be empty or only whitespace", field="query")
    check_text(query, "query")
    return query


def check_text(text: str, name: str, index: int | None = None) -> None:
    """Raise InvalidRequestError unless ``text`` can be encoded as UTF-8 (no lone surrogates)."""
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        where = name if index is None else f"{name}[{index}]"
        raise InvalidRequestError(
            f"{where} is not valid Unicode: a lone surrogate {text[exc.start]!r} at character {exc.start} "
            "(invalid UTF-8 decoded with surrogateescape, or a broken \\ud800-style escape). Send UTF-8 text",
            field=name,
            index=index,
        ) from None


def _documents(documents: object) -> list[str | dict[str, Any]]:
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise InvalidRequestError(
            f"documents must be a list of strings or objects with a 'text' field, got {type(documents).__name__}",
            field="documents",
        )
    docs = list(documents)
    for index, doc in enumerate(docs):
        if not isinstance(doc, (str, dict)):
            raise InvalidRequestError(
                f"documents[{index}] must be a string or an object with a 'text' field, got {type(doc).__name__}",
                field="documents",
                index=index,
            )
    return docs


def _rank_fields(rank_fields: object) -> list[str] | None:
    if rank_fields is None:
        return None
    if (
        isinstance(rank_fields, str)
        or not isinstance(rank_fields, Sequence)
        or not rank_fields
        or not all(isinstance(name, str) and name for name in rank_fields)
    ):
        raise InvalidRequestError("rank_fields must be a non-empty list of field names", field="rank_fields")
    return list(rank_fields)


def _text_of(doc: str | dict[str, Any], index: int, rank_fields: list[str] | None) -> str:
    if isinstance(doc, str):
        check_text(doc, "documents", index)
        return doc
    _check_object(doc, index)
    if rank_fields is None:
        text = doc.get("text")
        if not isinstance(text, str):
            raise InvalidRequestError(
                f"documents[{index}] is an object without a string 'text' field "
                "(pass rank_fields to score other fields)",
                field="documents",
                index=index,
            )
        return text
    present = [name for name in rank_fields if name in doc and doc[name] is not None]
    if not present:
        raise InvalidRequestError(
            f"documents[{index}] has none of the rank_fields {rank_fields}", field="documents", index=index
        )
    # Cohere scores structured documents as "field: value" lines, in rank_fields order.
    return "\n".join(f"{name}: {_field_text(doc[name], name, index)}" for name in present)


def _bounded_size(text: str, index: int) -> str:
    """``text`` unless its UTF-8 form exceeds MAX_DOCUMENT_BYTES (counted only when it might)."""
    if len(text) * 4 <= MAX_DOCUMENT_BYTES:
        return text
    if len(text) > MAX_DOCUMENT_BYTES or len(text.encode("utf-8", "surrogatepass")) > MAX_DOCUMENT_BYTES:
        raise InvalidRequestError(
            f"documents[{index}] is more than {MAX_DOCUMENT_BYTES:,} bytes of UTF-8 ({len(text):,} characters), "
            "the limit per document (a model reads at most max_length tokens of it, or max_tokens_per_doc when "
            "chunking). Send the part to be scored",
            field="documents",
            index=index,
        )
    return text


def _field_text(value: object, name: str, index: int) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError) as exc:  # a key JSON cannot hold (a tuple), an integer past 4,300 digits
        raise InvalidRequestError(
            f"documents[{index}].{name} cannot be scored as JSON text ({exc}); send strings, numbers, lists "
            "and objects with string keys",
            field="documents",
            index=index,
        ) from None


def _check_object(doc: dict[str, Any], index: int) -> None:
    """Every string of an object document is valid Unicode, and it nests at most MAX_DOCUMENT_DEPTH deep
    (it may be scored as JSON and is returned whole)."""
    pending: list[tuple[object, int]] = [(doc, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, str):
            check_text(value, "documents", index)
        elif isinstance(value, (dict, list, tuple)):
            if depth > MAX_DOCUMENT_DEPTH:
                message = f"documents[{index}] nests more than {MAX_DOCUMENT_DEPTH} levels deep"
                raise InvalidRequestError(message, field="documents", index=index)
            items = [*value.keys(), *value.values()] if isinstance(value, dict) else list(value)
            pending.extend((item, depth + 1) for item in items)
