"""The local backend: fidelity with sentence-transformers, caching, precision and device rules."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from pathlib import Path

import pytest
import torch
from sentence_transformers import CrossEncoder

import dheera_local
from conftest import BERT_REVISION, TINY_BERT_ID, TINY_XLMR_ID
from dheera_local import UnsupportedModelError
from dheera_local._local.hardware import CpuFeatures, resolve_dtype
from dheera_local._models.identity import ModelIdentity
from dheera_local.testing import build_cross_encoder

QUERY = "what is the capital of the united states"
DOCS = [
    "washington is the capital of the united states",
    "carson city is the capital city of nevada",
    "the commonwealth of the northern mariana islands is a group of islands in the pacific ocean " * 20,
    "capital punishment",
    "",
    "paris",
]


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize("model_fixture", ["tiny_bert", "tiny_xlmr"])
def test_scores_equal_sigmoid_of_crossencoder_logits_in_fp32(
    model_fixture: str, request: pytest.FixtureRequest
) -> None:
    folder: Path = request.getfixturevalue(model_fixture)
    encoder = CrossEncoder(str(folder), activation_fn=torch.nn.Identity(), device="cpu")
    expected = encoder.predict([(QUERY, doc) for doc in DOCS])
    response = dheera_local.rerank(str(folder), QUERY, DOCS, dtype="float32", device="cpu", cache=False)
    by_index = {r.index: r.relevance_score for r in response.results}
    for index, logit in enumerate(expected):
        assert by_index[index] == pytest.approx(sigmoid(float(logit)), abs=1e-5)
    raw = dheera_local.rerank(str(folder), QUERY, DOCS, dtype="float32", raw_scores=True, cache=False)
    for result in raw.results:
        assert result.relevance_score == pytest.approx(float(expected[result.index]), abs=1e-5)


def test_trained_model_ranks_the_keyword_document_first(keyword_model: Path) -> None:
    docs = ["berlin is in germany", "the city of paris has a famous museum", "rome and madrid", "tea and coffee"]
    response = dheera_local.rerank(str(keyword_model), "which city has the museum", docs, dtype="float32")
    assert response.results[0].index == 1
    assert response.results[0].relevance_score > 0.9
    assert all(r.relevance_score < 0.1 for r in response.results[1:])


def test_cached_answer_is_bit_for_bit_the_uncached_answer() -> None:
    uncached = dheera_local.rerank(TINY_XLMR_ID, QUERY, DOCS, cache=False)
    first = dheera_local.rerank(TINY_XLMR_ID, QUERY, DOCS)
    cached = dheera_local.rerank(TINY_XLMR_ID, QUERY, DOCS)
    assert cached.backend == "cache" and cached.cache_hits == len(DOCS)
    for a, b, c in zip(uncached.results, first.results, cached.results, strict=True):
        assert a.index == b.index == c.index
        assert a.relevance_score == b.relevance_score == c.relevance_score  # exact, not approx


def test_partial_cache_hits_compute_only_the_misses() -> None:
    dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS[:3])
    response = dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS)
    assert response.cache_hits == 3
    assert response.meta.dheera_local.scored == len(DOCS) - 3
    assert response.backend == "local"


def test_cache_key_depends_on_max_length_and_query() -> None:
    dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS)
    assert dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS, max_length=64).cache_hits == 0
    assert dheera_local.rerank(TINY_BERT_ID, "another query", DOCS).cache_hits == 0


def test_cache_false_neither_reads_nor_writes(isolated_env: Path) -> None:
    dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS, cache=False)
    assert not (isolated_env / "score-cache").exists()
    assert dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS).cache_hits == 0


def test_top_n_and_return_documents() -> None:
    docs = ["a", {"text": "b", "id": "doc-b", "year": 2020}, "c"]
    response = dheera_local.rerank(TINY_BERT_ID, QUERY, docs, top_n=2, return_documents=True)
    assert len(response.results) == 2
    full = dheera_local.rerank(TINY_BERT_ID, QUERY, docs, return_documents=True)
    documents = {r.index: r.document for r in full.results}
    assert documents == {0: {"text": "a"}, 1: {"text": "b", "id": "doc-b", "year": 2020}, 2: {"text": "c"}}


def test_long_documents_are_truncated_not_rejected() -> None:
    huge = "washington capital " * 5000
    response = dheera_local.rerank(TINY_BERT_ID, QUERY, [huge, "short"], max_length=64)
    assert len(response.results) == 2


def test_bf16_weights_keep_scores_close_and_return_fp32_floats(keyword_model: Path) -> None:
    docs = ["paris museum", "berlin zoo", "a paris cafe", "madrid", "tokyo tower"]
    fp32 = dheera_local.rerank(str(keyword_model), "city", docs, dtype="float32", cache=False)
    bf16 = dheera_local.rerank(str(keyword_model), "city", docs, dtype="bfloat16", cache=False)
    assert bf16.meta.dheera_local.dtype == "bfloat16"
    assert {r.index for r in bf16.results[:2]} == {r.index for r in fp32.results[:2]} == {0, 2}
    ref = {r.index: r.relevance_score for r in fp32.results}
    assert all(abs(r.relevance_score - ref[r.index]) < 0.02 for r in bf16.results)


def test_fp16_scores_do_not_collapse_into_ties(keyword_model: Path) -> None:
    # Logits are upcast before the sigmoid: distinct logits stay distinct scores.
    docs = [" ".join(["paris"] + ["museum"] * n) for n in range(6)]
    response = dheera_local.rerank(str(keyword_model), "city", docs, dtype="float16", raw_scores=False, cache=False)
    assert all(isinstance(r.relevance_score, float) for r in response.results)
    assert response.meta.dheera_local.dtype == "float16"


def test_auto_precision_rule() -> None:
    assert resolve_dtype("auto", "cpu", CpuFeatures(avx512_bf16=True)) is torch.bfloat16
    assert resolve_dtype("auto", "cpu", CpuFeatures(amx_bf16=True)) is torch.bfloat16
    assert resolve_dtype(None, "cpu", CpuFeatures()) is torch.float32  # no native bf16: fp32
    assert resolve_dtype("fp16", "cpu", CpuFeatures()) is torch.float16  # an explicit choice wins
    assert resolve_dtype("auto", "mps", CpuFeatures()) is torch.float16
    # torch's kernels capped below AVX-512 (ATEN_CPU_CAPABILITY=avx2, a laptop stand-in): bf16 is emulated.
    assert resolve_dtype(None, "cpu", CpuFeatures(avx512_bf16=True, torch_isa="AVX2")) is torch.float32


def test_auto_precision_on_cuda_takes_bf16_only_where_the_requested_gpu_computes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No GPU here: torch's capability query stands in for the card. torch.cuda.is_bf16_supported() says yes on
    # a T4 or V100 (emulated bf16), and asks about the current device, not the one requested.
    asked = []

    def capability(device: torch.device) -> tuple[int, int]:
        asked.append(device)
        return {0: (9, 0), 1: (7, 5)}[device.index]

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    assert resolve_dtype("auto", "cuda:0") is torch.bfloat16  # Hopper
    assert resolve_dtype(None, "cuda:1") is torch.float16  # Turing: bf16 only emulated
    assert [d.index for d in asked] == [0, 1]
    assert resolve_dtype("bf16", "cuda:1") is torch.bfloat16  # an explicit choice wins


def test_a_gpu_index_past_the_machines_gpus_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    from dheera_local import InvalidRequestError
    from dheera_local._local.hardware import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # no GPU here: torch's answers stand in
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(InvalidRequestError, match=r"has 2 CUDA device\(s\): use cuda:0..cuda:1") as caught:
        resolve_device("cuda:5")
    assert caught.value.field == "device"


def test_a_capped_isa_is_taken_as_a_cpu_without_native_bf16() -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    code = "from dheera_local._local.hardware import resolve_dtype; print(resolve_dtype(None, 'cpu'))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "torch.float32", done.stderr


def test_response_reports_device_and_dtype() -> None:
    response = dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS, device="cpu", dtype="float32")
    assert (response.meta.dheera_local.device, response.meta.dheera_local.dtype) == ("cpu", "float32")


def test_one_load_per_model_device_dtype_even_under_concurrency() -> None:
    from dheera_local._local.backend import ModelStore
    from dheera_local._models.discovery import find_in_hub_cache

    weights = find_in_hub_cache(TINY_BERT_ID)
    store, loaded = ModelStore(), []

    def key(dtype: str) -> ModelIdentity:
        return ModelIdentity(weights.model_id, weights.revision, 0, path=str(weights.path), device="cpu", dtype=dtype)

    threads = [threading.Thread(target=lambda: loaded.append(store.load(weights, key("float32")))) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(model) for model in loaded}) == 1
    assert store.load(weights, key("bfloat16")) is not loaded[0]


def test_a_model_still_loading_when_the_store_is_cleared_is_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    # close_all() during traffic: the load in flight finishes for its caller, but the store does not hold it
    # (else a GPU could end up holding two copies, one invisible to the clear); a caller that was waiting for
    # it queues again behind the loads that start after the clear, so they share one copy.
    from dheera_local._local import backend as local
    from dheera_local._models.discovery import find_in_hub_cache

    weights = find_in_hub_cache(TINY_BERT_ID)
    key = ModelIdentity(weights.model_id, weights.revision, 0, path=str(weights.path), device="cpu", dtype="float32")
    store, started = local.ModelStore(), threading.Event()
    gates = [threading.Event(), threading.Event()]  # the first load's, then every later load's
    real_load, loads, loaded = local._load, [], {}

    def slow_load(weights, key, *rest):  # noqa: ANN001, ANN002, ANN202 - the real load, held at its gate
        gate = gates[min(len(loads), 1)]
        loads.append(key)
        started.set()
        gate.wait(30)
        return real_load(weights, key, *rest)

    def caller(name: str) -> threading.Thread:
        thread = threading.Thread(target=lambda: loaded.__setitem__(name, store.load(weights, key)))
        thread.start()
        return thread

    monkeypatch.setattr(local, "_load", slow_load)
    first = caller("first")
    assert started.wait(30)
    waiting = caller("waiting")  # blocks on the key's lock behind the first load
    time.sleep(0.2)
    store.clear()
    after = caller("after")  # a new lock: its load starts and is held
    gates[0].set()
    first.join(60)
    time.sleep(0.3)  # room for the waiting caller to start a load of its own, if it were going to
    assert len(loads) == 2  # the first, and the one after the clear
    gates[1].set()
    for thread in (waiting, after):
        thread.join(60)
    assert loaded["first"] is not loaded["after"]
    assert loaded["waiting"] is loaded["after"] is store.get(key)


def test_a_failed_load_is_remembered_for_a_while_then_retried(tiny_bert: Path, tmp_path: Path) -> None:
    import shutil

    from dheera_local import LocalBackendError
    from dheera_local._local.backend import LocalBackend, ModelStore
    from dheera_local._models.discovery import find_local_weights
    from dheera_local._models.model_ref import parse_model

    folder = tmp_path / "model"
    shutil.copytree(tiny_bert, folder)
    good_weights = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    store = ModelStore(retry_failed_after=3600)
    backend = LocalBackend(find_local_weights(parse_model(str(folder))), max_length=64, dtype="float32", models=store)
    assert backend.numerics() == "float32"  # fp32 numerics are known without loading
    with pytest.raises(LocalBackendError, match="could not be loaded"):
        backend.score(QUERY, DOCS)
    (folder / "model.safetensors").write_bytes(good_weights)
    # Remembered: no second read of the weights, and the cache identity names the failure too.
    with pytest.raises(LocalBackendError, match="failed to load 0 s ago"):
        backend.score(QUERY, DOCS)
    with pytest.raises(LocalBackendError, match="failed to load"):
        backend.numerics()
    store.retry_failed_after = 0
    assert len(backend.score(QUERY, DOCS)) == len(DOCS)
    assert store.recent_failure(backend._key) is None


def test_threads_with_different_max_length_on_one_model_each_get_their_own_truncation(keyword_model: Path) -> None:
    # The fast tokenizer holds truncation as shared state. Unserialized, one thread's max_length
    # leaked into the other's calls: about 1 row in 10 below was truncated wrongly before the fix.
    # Tokenizing is hammered directly because forward passes, serialized anyway, hide the race.
    from dheera_local._local.backend import LocalBackend
    from dheera_local._models.discovery import find_local_weights
    from dheera_local._models.model_ref import parse_model

    weights = find_local_weights(parse_model(str(keyword_model)))
    short = LocalBackend(weights, max_length=16, dtype="float32")
    full = LocalBackend(weights, max_length=512, dtype="float32")
    docs = [" ".join(["museum"] * 30 + ["paris"]), "paris museum"]  # 'paris' is cut off at 16 tokens
    assert short.score("city", docs)[0] < 0 < full.score("city", docs)[0]
    model = short.model()
    assert model is full.model()  # one loaded model, one tokenizer, two truncation settings
    pairs = [("city", docs[0])] * 4
    full_length = len(model._tokenize(pairs, 512)["input_ids"][0])
    wrong: list[int] = []

    def hammer(max_length: int) -> None:
        for _ in range(1000):
            encoded = model._tokenize(pairs, max_length)
            wrong.extend(len(ids) for ids in encoded["input_ids"] if len(ids) != min(max_length, full_length))

    threads = [threading.Thread(target=hammer, args=(max_length,)) for max_length in (16, 512)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not wrong, f"{len(wrong)} rows truncated with the other thread's max_length"


def test_concurrent_async_calls_are_correct_and_match_sync() -> None:
    queries = [f"query number {i} capital" for i in range(8)]

    async def many() -> list:
        return await asyncio.gather(*(dheera_local.arerank(TINY_BERT_ID, q, DOCS, cache=False) for q in queries))

    async_results = asyncio.run(many())
    for query, response in zip(queries, async_results, strict=True):
        sync = dheera_local.rerank(TINY_BERT_ID, query, DOCS, cache=False)
        assert [(r.index, r.relevance_score) for r in response.results] == [
            (r.index, r.relevance_score) for r in sync.results
        ]


def test_arerank_does_not_block_the_event_loop() -> None:
    ticks = []

    async def ticker(stop: asyncio.Event) -> None:
        while not stop.is_set():
            ticks.append(1)
            await asyncio.sleep(0.001)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(ticker(stop))
        await dheera_local.arerank(TINY_XLMR_ID, QUERY, DOCS * 30, cache=False, max_length=256)
        stop.set()
        await task

    asyncio.run(main())
    assert len(ticks) > 5  # the loop kept running while inference ran in a worker thread


def test_layerwise_llm_rerankers_are_refused_with_a_clear_message() -> None:
    with pytest.raises(UnsupportedModelError, match="not a cross-encoder"):
        dheera_local.rerank("huggingface/BAAI/bge-reranker-v2-minicpm-layerwise", QUERY, DOCS)


def test_a_model_without_a_classification_head_is_refused(tmp_path: Path, tiny_bert: Path) -> None:
    import json
    import shutil

    folder = tmp_path / "causal"
    shutil.copytree(tiny_bert, folder)
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["BertForMaskedLM"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="ForSequenceClassification"):
        dheera_local.rerank(str(folder), QUERY, DOCS)


def test_two_label_models_score_the_positive_class(tmp_path: Path) -> None:
    folder = build_cross_encoder(tmp_path / "two-labels", num_labels=2, seed=3)
    encoder = CrossEncoder(str(folder), device="cpu")
    probabilities = encoder.predict([(QUERY, d) for d in DOCS[:3]], apply_softmax=True)
    response = dheera_local.rerank(str(folder), QUERY, DOCS[:3], dtype="float32", cache=False)
    for result in response.results:
        assert result.relevance_score == pytest.approx(float(probabilities[result.index][1]), abs=1e-5)


def test_revision_on_disk_is_part_of_the_identity() -> None:
    response = dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS)
    from dheera_local._models.discovery import find_in_hub_cache

    assert find_in_hub_cache(TINY_BERT_ID).revision == BERT_REVISION
    assert response.meta.dheera_local.model == TINY_BERT_ID


class _OutOfMemoryAbove(torch.nn.Module):
    """The real network, raising CUDA's out-of-memory error for batches over ``limit`` padded tokens (no GPU here)."""

    def __init__(self, network: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.network, self.limit, self.raised = network, limit, 0

    def forward(self, **features: torch.Tensor) -> object:
        if features["input_ids"].numel() > self.limit:
            self.raised += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.network(**features)


def test_an_out_of_memory_halves_the_budget_keeps_every_score_and_is_remembered(tiny_bert: Path) -> None:
    from dheera_local._local.torch_model import LocalModel
    from dheera_local._models.discovery import LocalWeights

    model = LocalModel(LocalWeights(tiny_bert, "tiny", "r"), "cpu", torch.float32)
    pairs = [(QUERY, f"{doc} " + "word " * (i % 7)) for i, doc in enumerate(DOCS * 4)]
    reference = model.logits(pairs, 64, 4096)
    model.network = _OutOfMemoryAbove(model.network, limit=120)
    assert model.logits(pairs, 64, 4096) == pytest.approx(reference, abs=1e-5)
    first = model.network.raised
    assert first > 0
    assert model.logits(pairs, 64, 4096) == pytest.approx(reference, abs=1e-5)
    assert model.network.raised == first  # the smaller budget was kept: no out-of-memory again
