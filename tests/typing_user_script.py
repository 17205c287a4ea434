"""A user's code against dheera_local's public API, type-checked with ``mypy --strict`` by
tests/test_public_surface.py (never run: it would need models and endpoints). Every name comes from a
public module, every annotation is one a user would write."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
from langchain_core.documents import Document
from llama_index.core.schema import NodeWithScore, TextNode

import dheera_local
from dheera_local import (
    AllBackendsFailedError,
    ApiVersion,
    Backend,
    BackendError,
    Backends,
    BilledUnits,
    CacheStore,
    InvalidRequestError,
    LlmFamily,
    ModelBackend,
    ModelIdentity,
    PairScores,
    Plan,
    RemoteBackendError,
    Reranker,
    RerankMeta,
    RerankResponse,
    RerankResult,
    RetryPolicy,
    ServedBy,
    Settings,
    arerank,
    register_llm_family,
    rerank,
    unregister_llm_family,
)
from dheera_local.integrations.langchain import DheeraRerank as LangChainRerank
from dheera_local.integrations.llama_index import DheeraRerank as LlamaIndexRerank
from dheera_local.score import ScoreJob, ScoreReport, score_file
from dheera_local.testing import FakeBackend, fake_reranker

MODEL = "huggingface/BAAI/bge-reranker-base"


def best(query: str, documents: list[str]) -> list[tuple[int, float]]:
    response: RerankResponse = rerank(MODEL, query, documents, top_n=3, device="cpu", dtype="float32")
    return [(result.index, result.relevance_score) for result in response.results]


def with_objects(query: str, rows: list[dict[str, str]]) -> list[dict[str, Any] | None]:
    response = rerank(MODEL, query, rows, return_documents=True, rank_fields=["title", "body"], cache=False)
    results: list[RerankResult] = response.results
    return [result.document for result in results]


def where_it_came_from(response: RerankResponse) -> tuple[str | None, int, list[str], int, str]:
    meta: RerankMeta = response.meta
    served: ServedBy | None = meta.dheera_local
    version: ApiVersion = meta.api_version
    units: BilledUnits = meta.billed_units
    fallbacks = served.fallbacks if served is not None else []
    return response.backend, response.cache_hits, fallbacks, units.search_units, version.version


async def best_async(query: str, documents: list[str]) -> list[int]:
    response = await arerank(MODEL, query, documents, api_base="http://localhost:8080", timeout=5.0)
    return [result.index for result in response.results]


def own_engine(query: str, documents: list[str]) -> float:
    retry = RetryPolicy(max_attempts=2, deadline=10.0)
    settings = Settings.from_env()
    with Reranker(settings=settings, cache=CacheStore(), retry=retry, transport=httpx.HTTPTransport()) as reranker:
        plan: Plan = reranker.plan(MODEL, backend="auto")
        candidates: list[Backend] = plan.candidates
        local: ModelBackend | None = plan.local
        if local is not None:
            identity: ModelIdentity = local.identity
            print(identity.device, identity.dtype, identity.batch_tokens)
        names: tuple[str, ...] = plan.backend_names
        print(len(candidates), local is None, names)
        pairs: PairScores = reranker.score_pairs(MODEL, [(query, document) for document in documents])
        served: ServedBy = pairs.served_by
        print(served.backend, pairs.logits)
        response = reranker.rerank(MODEL, query, documents)
        return max(pairs.scores, default=0.0) + len(response.results)


async def own_engine_async(query: str, documents: list[str]) -> int:
    reranker = Reranker(backends=Backends(Settings.from_env(), retry=RetryPolicy()))
    try:
        response = await reranker.arerank(MODEL, query, documents, top_n=1)
        return response.results[0].index
    finally:
        await reranker.aclose()
        dheera_local.close_all()


def explain(query: str, documents: list[str]) -> str:
    try:
        rerank(MODEL, query, documents)
    except InvalidRequestError as exc:
        return f"{exc.param}: {exc}"
    except AllBackendsFailedError as exc:
        failures: list[tuple[str, BackendError]] = exc.attempts
        statuses = [error.status for _, error in failures if isinstance(error, RemoteBackendError)]
        return f"{exc.status} {statuses}"
    return "ok"


def langchain_pipeline(query: str, texts: list[str]) -> list[str]:
    compressor = LangChainRerank(model=MODEL, top_n=2, api_base="http://localhost:8080")
    documents = compressor.compress_documents([Document(page_content=text) for text in texts], query)
    return [document.page_content for document in documents]


def llama_index_pipeline(query: str, texts: list[str]) -> list[float | None]:
    postprocessor = LlamaIndexRerank(model=MODEL, top_n=2, reranker=fake_reranker())
    nodes = [NodeWithScore(node=TextNode(text=text)) for text in texts]
    return [node.score for node in postprocessor.postprocess_nodes(nodes, query_str=query)]


def offline(folder: Path) -> int:
    job = ScoreJob(model=MODEL, input=folder / "pairs.jsonl", output=folder / "scores.jsonl", rerank=True)
    report: ScoreReport = score_file(job)
    return report.rows - report.bad_rows


def judge_encode(tokenizer: Any, pairs: list[tuple[str, str]], max_length: int, instruction: str) -> list[list[int]]:
    texts = [f"{instruction}\n{query}\n{document}" for query, document in pairs]
    ids: list[list[int]] = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    return ids


def my_llm_family() -> str:
    family = LlmFamily(
        "judge", "instruction", "Judge.", ("yes",), (1.0,), judge_encode, architectures=("Qwen2ForCausalLM",)
    )
    registered: LlmFamily = register_llm_family(family)
    unregister_llm_family(registered.name)
    return registered.text(None)


def in_my_tests() -> list[tuple[str, list[str]]]:
    reranker: Reranker = fake_reranker(score=lambda query, document: float(len(document)))
    reranker.rerank("any-org/any-model", "query", ["a", "bb"])
    backend = FakeBackend()
    return backend.calls


if __name__ == "__main__":
    asyncio.run(best_async("q", ["d"]))
