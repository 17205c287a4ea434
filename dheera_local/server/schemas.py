"""Request and response bodies of the HTTP API: Cohere v1, Cohere v2 and TEI.

Optional fields accept an explicit ``null`` (the Cohere SDK sends them) and unknown fields are
ignored, as LiteLLM's proxy and TEI do. Types are checked here (422 naming the field); values
(``top_n >= 1``, documents without ``text``) are checked by ``build_request`` (400). A body with
``texts`` and no ``documents`` is a TEI request.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .._errors import InvalidRequestError
from .._response import RerankResponse
from .errors import BodyValidationError, loc_to_param

Body = TypeVar("Body", bound=BaseModel)


class _Request(BaseModel):
    # strict: `top_n: true` or `"3"` is a client bug to report, not a value to coerce.
    model_config = ConfigDict(extra="ignore", strict=True)


class CohereRerankRequest(_Request):
    """Cohere v1 (``/v1/rerank``), also LiteLLM's ``/rerank``: documents as strings or objects."""

    model: str | None = Field(default=None, description="a model_name from config.yaml (default: the first)")
    query: str
    documents: list[str | dict[str, Any]]
    top_n: int | None = None
    rank_fields: list[str] | None = None
    return_documents: bool | None = None
    max_chunks_per_doc: int | None = None
    max_tokens_per_doc: int | None = None
    raw_scores: bool | None = Field(default=None, description="extension: logits instead of [0, 1] scores")
    instruction: str | None = Field(default=None, description="extension: Qwen3-Reranker's task instruction")
    prompt: str | None = Field(default=None, description="extension: bge-reranker-v2-gemma's prompt")


class CohereV2RerankRequest(_Request):
    """Cohere v2 (``/v2/rerank``): documents as strings."""

    model: str | None = Field(default=None, description="a model_name from config.yaml (default: the first)")
    query: str
    documents: list[str]
    top_n: int | None = None
    max_tokens_per_doc: int | None = None
    priority: int | None = Field(default=None, description="accepted, not used")
    return_documents: bool | None = Field(default=None, description="as older v2 SDKs send it")
    raw_scores: bool | None = Field(default=None, description="extension: logits instead of [0, 1] scores")
    instruction: str | None = Field(default=None, description="extension: Qwen3-Reranker's task instruction")
    prompt: str | None = Field(default=None, description="extension: bge-reranker-v2-gemma's prompt")


class TEIRerankRequest(_Request):
    """text-embeddings-inference's ``/rerank`` body; the model comes from the URL or is the first."""

    query: str
    texts: list[str]
    raw_scores: bool | None = None
    return_text: bool | None = None
    truncate: bool | None = Field(default=None, description="accepted; pairs are always truncated to max_length")
    truncation_direction: str | None = Field(default=None, description="accepted, not used")
    top_n: int | None = Field(default=None, description="extension (LiteLLM sends it): keep the best top_n")
    instruction: str | None = Field(default=None, description="extension: Qwen3-Reranker's task instruction")
    prompt: str | None = Field(default=None, description="extension: bge-reranker-v2-gemma's prompt")


class TEIRank(BaseModel):
    """One entry of TEI's bare-array answer."""

    index: int
    score: float
    text: str | None = None


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str


class ErrorBody(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        400: "invalid value (param names the field)",
        401: "missing or wrong master key",
        404: "unknown model (the message lists the configured names)",
        413: "body or document list larger than the configured limits",
        422: "body of the wrong shape (param names the field)",
        429: "queue full; retry after Retry-After seconds",
        502: "the backend failed",
        503: "the backend is unreachable or the model unavailable",
    }.items()
}
COHERE_RESPONSE: dict[int | str, dict[str, Any]] = {200: {"model": RerankResponse}, **ERROR_RESPONSES}
TEI_RESPONSE: dict[int | str, dict[str, Any]] = {200: {"model": list[TEIRank]}, **ERROR_RESPONSES}


def is_tei(body: dict[str, Any]) -> bool:
    """A TEI request carries ``texts`` and no ``documents``."""
    return "texts" in body and "documents" not in body


def parse_json(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; 400 when it is not JSON (or nests too deep), 422 when not an object."""
    try:
        data = pydantic_core.from_json(raw)  # fast path, with a nesting limit; json.loads below for the rest
    except ValueError as exc:
        if "recursion limit" in str(exc):
            raise InvalidRequestError("request body nests too deeply (more than 200 levels)", field="body") from None
        data = _explain_json_error(raw)
    if not isinstance(data, dict):
        raise BodyValidationError(f"request body must be a JSON object, got {type(data).__name__}", field="body")
    return data


def _explain_json_error(raw: bytes) -> Any:
    """json.loads where pydantic-core refused: it accepts a lone ``\\ud800`` escape, which
    ``build_request`` then rejects naming the field; anything else is answered here."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        where = f" at line {exc.lineno}, column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise InvalidRequestError(f"request body is not valid JSON{where}", field="body") from None


def validate(schema: type[Body], data: dict[str, Any]) -> Body:
    """``data`` as ``schema``; raises BodyValidationError naming the first bad field."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        param = loc_to_param(tuple(first["loc"]))
        problem = "required field is missing" if first["type"] == "missing" else first["msg"]
    # Raised outside the except: pydantic's error quotes the body's values, which must not be its __context__.
    raise BodyValidationError(f"{param}: {problem}", field=param)


def openapi_body(*schemas: type[BaseModel]) -> dict[str, Any]:
    """An ``openapi_extra`` request body for routes that parse their JSON themselves."""
    documented = [schema.model_json_schema() for schema in schemas]
    schema = documented[0] if len(documented) == 1 else {"oneOf": documented}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
