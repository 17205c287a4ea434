"""What the framework adapters share: their fields and the one call into the engine.

An adapter is a pydantic model made of :class:`RerankFields` and its framework's base class. It
turns the framework's objects into texts, calls :meth:`RerankFields.rank` (or ``arank``) and maps
the results back by ``index``. Ordering, ``top_n``, the cache and the fallback stay in
:class:`dheera_local.Reranker`, exactly as for ``dheera_local.rerank``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, model_validator

from .._engine.orchestrator import Reranker
from .._engine.runtime import default_reranker
from .._models.model_ref import parse_model
from .._options import OPTION_NAMES, RerankOptions, build_options, merge_options
from .._response import RerankResult


def missing_extra(module: str, package: str, extra: str) -> str:
    """The message of the ImportError raised when an adapter's framework is not installed."""
    return f'dheera_local.integrations.{module} needs {package}; install it with: pip install "dheera_local[{extra}]"'


class RerankFields(BaseModel):
    """The model, ``top_n`` and the engine options: the fields of every ``DheeraRerank``.

    Values are checked when the adapter is made (a bad ``backend`` fails there, not at the first
    query), by the same checks as ``dheera_local.rerank``.
    """

    # extra="forbid": a misspelt option (``topn=5``) is an error, not a silently ignored field.
    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    model: str = Field(
        description="huggingface/ORG/NAME, ORG/NAME, a local model folder, or a name an api_base endpoint knows."
    )
    top_n: int | None = Field(default=3, ge=1, description="How many results to return (None: all, best first).")
    api_base: str | None = Field(default=None, description="A TEI-, Cohere- or HF-compatible endpoint to fall back to.")
    # Left out of model_dump/to_dict: a saved pipeline config never holds the key (give it again when loading).
    api_key: SecretStr | None = Field(
        default=None, exclude=True, description="The endpoint's key (HF hosted: HF_TOKEN by default)."
    )
    api_format: str | None = Field(default=None, description="The endpoint's wire format: tei, cohere or hf.")
    backend: str = Field(default="auto", description="auto (local weights first, then remote), local or remote.")
    cache: bool = Field(default=True, description="Read and write the on-disk score cache.")
    device: str | None = Field(default=None, description="Torch device of the local backend (default: the best).")
    dtype: str | None = Field(default=None, description="Precision: auto, float32, bfloat16, float16, int8 (CPU).")
    max_length: int | None = Field(default=None, description="Tokens per (query, document) pair.")
    timeout: float | None = Field(default=None, description="Seconds one remote request may take.")
    instruction: str | None = Field(default=None, description="Qwen3-Reranker's task instruction (LLM rerankers).")
    prompt: str | None = Field(default=None, description="bge-reranker-v2-gemma's prompt (LLM rerankers).")
    # Every engine option, those without a field of their own included (raw_scores, batch_tokens, cache_dir, and
    # any option added later): the fields above, when set, go on top of it.
    options: RerankOptions | None = Field(
        default=None, exclude=True, description="Engine options made once (dheera_local.RerankOptions)."
    )
    reranker: Reranker | None = Field(
        default=None, exclude=True, description="The engine to use (default: the one behind dheera_local.rerank)."
    )
    # The options made of the fields above, and the field values they were made of (a field set later is seen).
    _options: tuple[tuple[Any, ...], RerankOptions] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check(self) -> RerankFields:
        # InvalidRequestError is a ValueError: pydantic reports it as a ValidationError naming the value.
        parse_model(self.model)
        self.rerank_options()
        return self

    def engine_options(self) -> dict[str, Any]:
        """The engine options among this adapter's fields, as keyword arguments."""
        return {name: getattr(self, name) for name in ENGINE_OPTIONS}

    def rerank_options(self) -> RerankOptions:
        """The engine options passed to :meth:`dheera_local.Reranker.rerank`: checked when the adapter is made,
        not per query (again only after a field changed). With ``options``, only the fields set on the adapter
        go on top of it (an unset field's default does not undo what ``options`` says)."""
        values = (self.options, tuple(getattr(self, name) for name in ENGINE_OPTIONS), frozenset(self.model_fields_set))
        if self._options is None or self._options[0] != values:
            if self.options is None:
                made = build_options(**self.engine_options())
            else:
                chosen = {name: getattr(self, name) for name in ENGINE_OPTIONS if name in self.model_fields_set}
                made = merge_options(self.options, chosen)
            self._options = (values, made)
        return self._options[1]

    def engine(self) -> Reranker:
        """The Reranker that serves this adapter: the one given, else the process's default."""
        # Looked up per call, not kept: close_all() replaces the default one, and a kept one would be closed.
        return self.reranker if self.reranker is not None else default_reranker()

    def rank(self, query: str, texts: list[str]) -> list[RerankResult]:
        """Rerank ``texts`` for ``query``: the best ``top_n`` results, each naming its text by ``index``."""
        return self.engine().rerank(self.model, query, texts, top_n=self.top_n, options=self.rerank_options()).results

    async def arank(self, query: str, texts: list[str]) -> list[RerankResult]:
        """The async twin of :meth:`rank`; never blocks the event loop."""
        options = self.rerank_options()
        response = await self.engine().arerank(self.model, query, texts, top_n=self.top_n, options=options)
        return response.results


# The engine options an adapter takes as fields: RerankOptions' fields that RerankFields declares (in the options'
# order); every other option comes in through ``options``.
ENGINE_OPTIONS = tuple(name for name in OPTION_NAMES if name in RerankFields.model_fields)
