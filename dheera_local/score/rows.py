"""One input record's pair, or why it has none; one output row: shared by ``score`` and :mod:`dheera_local.ray`."""

from __future__ import annotations

from typing import Any

from .._engine.orchestrator import relevance_score
from .._engine.request import check_text
from .._errors import InvalidRequestError
from .._options import RerankOptions
from .io import Record


def pair_of(record: Record, query_field: str, document_field: str) -> tuple[str, str] | str:
    """The record's (query, document), or why it has none."""
    if record.problem is not None or record.fields is None:
        return record.problem or "not a record"
    texts = []
    for name in (query_field, document_field):
        value = record.fields.get(name)
        problem = text_problem(name, value, present=name in record.fields)
        if problem is not None:
            return problem
        texts.append(value)
    for name, value in record.fields.items():  # the output copies every field: all must be writable
        if isinstance(value, str) and name not in (query_field, document_field):
            try:
                check_text(value, f"field {name!r}")
            except InvalidRequestError as exc:
                return str(exc)
    return texts[0], texts[1]


def text_problem(name: str, value: object, present: bool = True) -> str | None:
    """Why ``value`` cannot be the text of field ``name`` (missing, null, not a string, empty), or None."""
    if not present:
        return f"field {name!r} is missing"
    if value is None or (isinstance(value, float) and value != value):  # NaN: a missing value in pandas
        return f"field {name!r} is null"
    if not isinstance(value, str):
        return f"field {name!r} must be a string, got {type(value).__name__}"
    if not value.strip():
        return f"field {name!r} is empty"
    try:
        check_text(value, f"field {name!r}")
    except InvalidRequestError as exc:
        return str(exc)
    return None


def scored_row(fields: dict[str, Any], logit: float, options: RerankOptions) -> dict[str, Any]:
    """The input fields plus ``relevance_score`` (the logit's score under ``options``: its sigmoid) and ``logit``."""
    return {**fields, "relevance_score": relevance_score(logit, options), "logit": logit}
