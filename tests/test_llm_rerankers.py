"""LLM rerankers (bge-reranker-v2-gemma, Qwen3-Reranker and its seq-cls conversion) on tiny random twins.

Every score is compared, in fp32, with a straight transcription of the model's reference code, written
out below: FlagEmbedding's ``FlagLLMReranker.compute_score_single_gpu``
(``FlagEmbedding/inference/reranker/decoder_only/base.py``, FlagOpen/FlagEmbedding@0dff36c) and the
Qwen3-Reranker model card's ``format_instruction`` / ``process_inputs`` / ``compute_logits``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import dheera_local
from dheera_local import InvalidRequestError, Reranker, UnsupportedModelError
from dheera_local._cache.store import KeyMaker
from dheera_local._errors import LocalBackendError
from dheera_local._local.cpu_kernels import packing_available
from dheera_local._local.llm_model import LlmModel, check_fits_memory
from dheera_local._models.catalog import check_cross_encoder, lookup
from dheera_local._models.discovery import LocalWeights
from dheera_local._models.llm_templates import BGE_GEMMA, QWEN3
from dheera_local.cli import main
from dheera_local.testing import install_in_hub_cache
from dheera_local.testing.models import build_llm_reranker, convert_to_seq_cls
from loopback import Fault, Servers
from server_harness import MASTER_KEY, LiveServer

GEMMA_ID = "BAAI/bge-reranker-v2-gemma"
QWEN_ID = "Qwen/Qwen3-Reranker-0.6B"
SEQ_CLS_ID = "tiny-org/Qwen3-Reranker-0.6B-seq-cls"
FP32 = {"dtype": "float32", "device": "cpu"}
QUERY = "what is the capital of france"
DOCS = [
    "paris is the capital of france",
    "the river flows through the old city past the museum and the market " * 12,  # truncated
    "berlin germany",
    "paris is the capital of france",  # a duplicate
    "tea",
]
LONG_QUERY = "which city has the famous museum near the river " * 10  # cut at 3/4 of max_length (gemma)


@pytest.fixture(scope="session")
def llm_models(models_root: Path, hub_cache: Path) -> dict[str, Path]:
    gemma = build_llm_reranker(models_root / "llm-gemma", family="gemma", seed=1)
    qwen = build_llm_reranker(models_root / "llm-qwen3", family="qwen3", seed=2)
    seq_cls = convert_to_seq_cls(qwen, models_root / "llm-qwen3-seq-cls")
    for folder, hub_id in ((gemma, GEMMA_ID), (qwen, QWEN_ID), (seq_cls, SEQ_CLS_ID)):
        install_in_hub_cache(folder, hub_id, hub_cache)
    return {"gemma": gemma, "qwen3": qwen, "seq-cls": seq_cls}


# The reference code, transcribed -----------------------------------------------------------------------

GEMMA_DEFAULT_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by "
    "providing a prediction of either 'Yes' or 'No'."
)


def _only_second(first: list[int], second: list[int], max_length: int) -> list[int]:
    # tokenizer.prepare_for_model(first, second, truncation="only_second", max_length=..., add_special_tokens=False)
    # as transformers 4 defines it (transformers 5 removed the method): the second sequence loses its tail.
    over = len(first) + len(second) - max_length
    if over > 0 and over < len(second):
        second = second[:-over]
    return first + second


def flag_llm_reference(folder: Path, pairs: list[tuple[str, str]], max_length: int, prompt: str | None = None,
                       batch_size: int = 4) -> list[float]:  # fmt: skip
    """FlagLLMReranker.compute_score_single_gpu, use_dataloader=False, normalize=False, fp32 (its
    query/passage instructions "A: " and "B: " applied as AbsReranker does)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    yes_loc = tokenizer("Yes", add_special_tokens=False)["input_ids"][0]
    query_max_length = max_length * 3 // 4
    all_queries = tokenizer(
        [f"A: {q}" for q, _ in pairs], return_tensors=None, add_special_tokens=False,
        max_length=query_max_length, truncation=True,
    )["input_ids"]  # fmt: skip
    all_passages = tokenizer(
        [f"B: {p}" for _, p in pairs], return_tensors=None, add_special_tokens=False, max_length=max_length,
        truncation=True,
    )["input_ids"]  # fmt: skip
    length_sorted_idx = np.argsort([-len(x) - len(y) for x, y in zip(all_queries, all_passages, strict=True)])
    if prompt is None:
        prompt = GEMMA_DEFAULT_PROMPT
    prompt_inputs = tokenizer(prompt, return_tensors=None, add_special_tokens=False)["input_ids"]
    sep_inputs = tokenizer("\n", return_tensors=None, add_special_tokens=False)["input_ids"]
    encode_max_length = max_length + len(sep_inputs) + len(prompt_inputs)
    all_scores: list[float] = []
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            batch_inputs = []
            for i in length_sorted_idx[start : start + batch_size]:
                first = [tokenizer.bos_token_id] + all_queries[i]
                ids = _only_second(first, sep_inputs + all_passages[i], encode_max_length)
                ids = ids + sep_inputs + prompt_inputs
                batch_inputs.append({"input_ids": ids, "attention_mask": [1] * len(ids)})
            inputs = tokenizer.pad(
                batch_inputs, padding=True, max_length=encode_max_length, pad_to_multiple_of=8, return_tensors="pt"
            )
            logits = model(**inputs, output_hidden_states=True).logits
            mask = inputs["attention_mask"]
            if mask[:, -1].sum() == mask.shape[0]:  # last_logit_pool
                last = logits[:, -1, :]
            else:
                lengths = mask.sum(dim=1) - 1
                last = torch.stack([logits[i, lengths[i], :] for i in range(logits.shape[0])], dim=0)
            all_scores.extend(last[:, yes_loc].cpu().float().tolist())
    return [all_scores[idx] for idx in np.argsort(length_sorted_idx)]


QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def qwen3_card_reference(
    folder: Path,
    pairs: list[tuple[str, str]],
    max_length: int,
    instruction: str | None = None,
    batch_size: int = 8,
    seq_cls: bool = False,
) -> list[float]:
    """The Qwen3-Reranker card's transformers example: P(yes) per pair, batches of ``batch_size`` in input
    order. ``seq_cls``: the same inputs through a ``*ForSequenceClassification`` conversion (its logit)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, padding_side="left")
    auto = AutoModelForSequenceClassification if seq_cls else AutoModelForCausalLM
    model = auto.from_pretrained(folder, dtype=torch.float32).eval()
    token_false_id = tokenizer.convert_tokens_to_ids("no")
    token_true_id = tokenizer.convert_tokens_to_ids("yes")
    prefix_tokens = tokenizer.encode(QWEN3_PREFIX, add_special_tokens=False)
    suffix_tokens = tokenizer.encode(QWEN3_SUFFIX, add_special_tokens=False)

    def format_instruction(instruction: str | None, query: str, doc: str) -> str:
        if instruction is None:
            instruction = "Given a web search query, retrieve relevant passages that answer the query"
        return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}"

    def process_inputs(pairs: list[str]) -> Any:
        inputs = tokenizer(
            pairs, padding=False, truncation="longest_first", return_attention_mask=False,
            max_length=max_length - len(prefix_tokens) - len(suffix_tokens),
        )  # fmt: skip
        for i, ele in enumerate(inputs["input_ids"]):
            inputs["input_ids"][i] = prefix_tokens + ele + suffix_tokens
        return tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=max_length)

    @torch.no_grad()
    def compute_logits(inputs: Any) -> list[float]:
        if seq_cls:
            return model(**inputs).logits[:, 0].tolist()
        batch_scores = model(**inputs).logits[:, -1, :]
        true_vector = batch_scores[:, token_true_id]
        false_vector = batch_scores[:, token_false_id]
        batch_scores = torch.stack([false_vector, true_vector], dim=1)
        batch_scores = torch.nn.functional.log_softmax(batch_scores, dim=1)
        return batch_scores[:, 1].exp().tolist()

    scores: list[float] = []
    for start in range(0, len(pairs), batch_size):
        texts = [format_instruction(instruction, q, d) for q, d in pairs[start : start + batch_size]]
        scores.extend(compute_logits(process_inputs(texts)))
    return scores


def logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def by_index(response: Any) -> dict[int, float]:
    return {result.index: result.relevance_score for result in response.results}


# Exact to the reference ----------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", [None, "Does passage B answer query A? Say 'Yes' or 'No'."])
def test_gemma_equals_flagembedding(llm_models: dict[str, Path], prompt: str | None) -> None:
    pairs = [(QUERY, doc) for doc in DOCS] + [(LONG_QUERY, doc) for doc in DOCS[:3]]
    expected = flag_llm_reference(llm_models["gemma"], pairs, max_length=48, prompt=prompt)
    options = {"prompt": prompt} if prompt else {}
    with Reranker() as reranker:
        got = reranker.score_pairs(GEMMA_ID, pairs, max_length=48, cache=False, **options, **FP32)
        response = reranker.rerank(GEMMA_ID, QUERY, DOCS, max_length=48, cache=False, **options, **FP32)
    assert got.served_by.backend == "local"
    assert got.logits == pytest.approx(expected, abs=1e-4)
    assert len(set(np.round(expected, 3))) >= 5  # the twin's scores differ: the comparison compares something
    scores = by_index(response)
    for index in range(len(DOCS)):  # relevance_score = sigmoid(the Yes logit) = FlagEmbedding's normalize=True
        assert scores[index] == pytest.approx(1 / (1 + math.exp(-expected[index])), abs=1e-4)


@pytest.mark.parametrize("instruction", [None, "Given a question, find the passage that names the city"])
def test_qwen3_equals_the_model_card(llm_models: dict[str, Path], instruction: str | None) -> None:
    pairs = [(QUERY, doc) for doc in DOCS] + [(LONG_QUERY, doc) for doc in DOCS[:3]]
    expected = qwen3_card_reference(llm_models["qwen3"], pairs, max_length=120, instruction=instruction)
    options = {"instruction": instruction} if instruction else {}
    with Reranker() as reranker:
        raw = reranker.score_pairs(QWEN_ID, pairs, max_length=120, cache=False, **options, **FP32)
        response = reranker.rerank(QWEN_ID, QUERY, DOCS, max_length=120, top_n=3, cache=False, **options, **FP32)
    assert raw.scores == pytest.approx(expected, abs=1e-4)  # sigmoid(logit(yes) - logit(no)) = P(yes)
    assert raw.logits == pytest.approx([logit(p) for p in expected], abs=1e-3)
    assert len(set(np.round(expected, 3))) >= 5
    best = sorted(range(len(DOCS)), key=lambda i: (-expected[i], i))[:3]
    assert [r.index for r in response.results] == best  # top_n, best first; the duplicate scores as its twin
    for result in response.results:
        assert result.relevance_score == pytest.approx(expected[result.index], abs=1e-4)


def test_seq_cls_conversion_scores_with_the_template(llm_models: dict[str, Path]) -> None:
    pairs = [(QUERY, doc) for doc in DOCS]
    with Reranker() as reranker:
        ours = reranker.score_pairs(SEQ_CLS_ID, pairs, max_length=120, cache=False, **FP32).logits
        causal = reranker.score_pairs(QWEN_ID, pairs, max_length=120, cache=False, **FP32).logits
    expected = qwen3_card_reference(llm_models["seq-cls"], pairs, max_length=120, seq_cls=True)
    assert ours == pytest.approx(expected, abs=1e-4)
    assert ours == pytest.approx(causal, abs=1e-4)  # the conversion is the causal model's yes - no row
    # What a cross-encoder path scores (the pair, no template) is another number entirely.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llm_models["seq-cls"])
    model = AutoModelForSequenceClassification.from_pretrained(llm_models["seq-cls"]).eval()
    with torch.no_grad():
        bare = [model(**tokenizer(q, d, return_tensors="pt")).logits[0, 0].item() for q, d in pairs]
    assert max(abs(a - b) for a, b in zip(ours, bare, strict=True)) > 0.05


@pytest.mark.parametrize("family", ["gemma", "qwen3"])
def test_prefix_reuse_padding_side_and_batches_change_no_score(llm_models: dict[str, Path], family: str) -> None:
    template = BGE_GEMMA if family == "gemma" else QWEN3
    weights = LocalWeights(llm_models[family], family, "test")
    pairs = [(QUERY, doc) for doc in DOCS] + [(LONG_QUERY, doc) for doc in DOCS] + [("tea", "a cup of tea")]
    baseline = LlmModel(weights, "cpu", torch.float32, template, prefix_reuse=False).logits(pairs, 96, 1 << 20)
    for reuse in (True, False):
        for side in ("right", "left"):
            model = LlmModel(weights, "cpu", torch.float32, template, prefix_reuse=reuse, padding_side=side)
            for budget in (1 << 20, 150, 1):  # one batch; a few; one pair per batch
                assert model.logits(pairs, 96, budget) == pytest.approx(baseline, abs=1e-4)
    reused = LlmModel(weights, "cpu", torch.float32, template)
    groups = reused._groups(pairs, template.encode(reused.tokenizer, pairs, 96, template.default))
    assert [len(g.indices) for g in groups if g.prefix_len] == [5, 5]  # each query's documents share its prefix
    # One pair alone scores as it does among others.
    assert reused.logits(pairs[1:2], 96, 1 << 20) == pytest.approx(baseline[1:2], abs=1e-4)


@pytest.mark.parametrize("family", ["gemma", "qwen3"])
def test_packed_cpu_linears_change_no_score(llm_models: dict[str, Path], family: str) -> None:
    template = BGE_GEMMA if family == "gemma" else QWEN3
    weights = LocalWeights(llm_models[family], family, "test")
    pairs = [(QUERY, doc) for doc in DOCS] + [("tea", "a cup of tea")]
    eager = LlmModel(weights, "cpu", torch.float32, template, cpu_kernels="eager")
    assert eager.kernels == "sdpa"
    packed = LlmModel(weights, "cpu", torch.float32, template)
    if not packing_available("cpu", torch.float32):
        pytest.skip("this torch build or CPU has no oneDNN packed fp32 linears")
    assert packed.kernels == "sdpa, onednn-packed"
    assert any(type(m).__name__ == "PackedLinear" for m in packed.body.modules())
    assert packed.logits(pairs, 96, 1 << 20) == pytest.approx(eager.logits(pairs, 96, 1 << 20), abs=1e-4)


# Cache, options, catalog ------------------------------------------------------------------------------


def test_cache_keys_never_collide_across_instructions_or_models(llm_models: dict[str, Path]) -> None:
    with Reranker() as reranker:
        first = reranker.rerank(QWEN_ID, QUERY, DOCS, max_length=120, **FP32)
        again = reranker.rerank(QWEN_ID, QUERY, DOCS, max_length=120, **FP32)
        spelled = reranker.rerank(QWEN_ID, QUERY, DOCS, max_length=120, instruction=QWEN3.default, **FP32)
        other = reranker.rerank(QWEN_ID, QUERY, DOCS, max_length=120, instruction="find cities", **FP32)
        gemma = reranker.rerank(GEMMA_ID, QUERY, DOCS, max_length=120, **FP32)
        plans = [
            reranker.plan(QWEN_ID, max_length=120, **FP32),
            reranker.plan(QWEN_ID, max_length=120, instruction="find cities", **FP32),
            reranker.plan(GEMMA_ID, max_length=120, **FP32),
            reranker.plan(GEMMA_ID, max_length=120, prompt="another prompt", **FP32),
        ]
    unique = len(set(DOCS))
    assert first.meta.dheera_local.cache_hits == 0
    assert again.meta.dheera_local.cache_hits == unique and by_index(again) == by_index(first)
    assert spelled.meta.dheera_local.cache_hits == unique  # the default, spelled out, is the same prompt
    assert other.meta.dheera_local.cache_hits == 0 and by_index(other) != by_index(first)
    assert gemma.meta.dheera_local.cache_hits == 0
    keys = {KeyMaker(plan.cache_identity(0))(QUERY, DOCS[0]) for plan in plans}
    assert len(keys) == len(plans)


def test_prompt_options_are_checked_against_the_model(llm_models: dict[str, Path], tiny_bert: Path) -> None:
    with pytest.raises(InvalidRequestError, match="takes 'instruction', not 'prompt'") as qwen:
        dheera_local.rerank(QWEN_ID, QUERY, DOCS, prompt="x", **FP32)
    assert qwen.value.field == "prompt"
    with pytest.raises(InvalidRequestError, match="takes 'prompt', not 'instruction'"):
        dheera_local.rerank(GEMMA_ID, QUERY, DOCS, instruction="x", **FP32)
    with pytest.raises(InvalidRequestError, match="cross-encoder and takes no prompt") as bert:
        dheera_local.rerank(str(tiny_bert), QUERY, DOCS, instruction="x", **FP32)
    assert bert.value.field == "instruction"
    with pytest.raises(InvalidRequestError, match="instruction must be a string"):
        dheera_local.rerank(QWEN_ID, QUERY, DOCS, instruction=3, **FP32)
    # An endpoint applies its own template: an instruction given here is never silently dropped there.
    with pytest.raises(InvalidRequestError, match="local engine only") as remote:
        dheera_local.rerank(QWEN_ID, QUERY, DOCS, instruction="x", backend="remote", api_base="http://127.0.0.1:9")
    assert remote.value.field == "instruction"
    with Reranker() as reranker:
        plan = reranker.plan(QWEN_ID, instruction="x", api_base="http://127.0.0.1:9", **FP32)
        assert plan.backend_names == ("local",)  # the endpoint is no fallback for it
        assert reranker.plan(QWEN_ID, api_base="http://127.0.0.1:9", **FP32).backend_names == ("local", "cohere")


def test_models_txt_kinds_and_the_layerwise_refusal() -> None:
    for hub_id in (GEMMA_ID, QWEN_ID, "Qwen/Qwen3-Reranker-4B", "Qwen/Qwen3-Reranker-8B"):
        assert lookup(hub_id).kind == "llm-reranker"
        check_cross_encoder(hub_id)  # pull and plan accept it
    with pytest.raises(UnsupportedModelError, match="custom modeling code") as refused:
        check_cross_encoder("BAAI/bge-reranker-v2-minicpm-layerwise")
    assert "does not run code from the hub" in str(refused.value)
    assert "BAAI/bge-reranker-v2-gemma" in str(refused.value)


def test_models_and_pull_agree_with_models_txt(
    llm_models: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["models", "--json"]) == 0
    rows = {row["model"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows[QWEN_ID]["kind"] == "llm-reranker" and rows[QWEN_ID]["local"] is True
    assert rows[SEQ_CLS_ID]["kind"] == "llm-reranker"  # found in the HF cache, listed as what it is
    assert rows["BAAI/bge-reranker-v2-minicpm-layerwise"]["kind"] == "llm-layerwise"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["pull", "Qwen/Qwen3-Reranker-4B"]) == 1
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err  # accepted: only the network stops it
    assert main(["pull", "BAAI/bge-reranker-v2-minicpm-layerwise"]) == 1
    assert "does not run code from the hub" in capsys.readouterr().err


def test_a_model_too_large_for_the_device_is_refused_with_numbers(llm_models: dict[str, Path]) -> None:
    weights = LocalWeights(llm_models["qwen3"], QWEN_ID, "test")
    config = json.loads((llm_models["qwen3"] / "config.json").read_text())
    with pytest.raises(LocalBackendError, match=r"need .* GiB as float32 on cpu, but only 0\.0 GiB is free"):
        check_fits_memory(weights, config, "cpu", torch.float32, free=1000)
    check_fits_memory(weights, config, "cpu", torch.float32, free=1 << 40)


# Through score and the proxy ------------------------------------------------------------------------------


def test_score_file_with_several_queries_and_an_instruction(llm_models: dict[str, Path], tmp_path: Path) -> None:
    queries = [QUERY, LONG_QUERY, "tea"]
    rows = [{"id": f"{q}-{d}", "query": queries[q], "document": DOCS[d]} for q in range(3) for d in range(len(DOCS))]
    source = tmp_path / "pairs.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = tmp_path / "scores.jsonl"
    instruction = "Judge the passage for the question"
    code = main([
        "score", "--model", QWEN_ID, "--input", str(source), "--output", str(output), "--no-cache", "-q",
        "--dtype", "float32", "--device", "cpu", "--max-length", "120", "--instruction", instruction,
    ])  # fmt: skip
    assert code == 0
    written = [json.loads(line) for line in output.read_text().splitlines()]
    pairs = [(row["query"], row["document"]) for row in rows]
    expected = qwen3_card_reference(llm_models["qwen3"], pairs, max_length=120, instruction=instruction)
    assert [row["id"] for row in written] == [row["id"] for row in rows]
    assert [row["relevance_score"] for row in written] == pytest.approx(expected, abs=1e-4)


def test_the_proxy_serves_them_with_config_and_body_prompts(llm_models: dict[str, Path], tmp_path: Path) -> None:
    configured = "Given a question, retrieve the passage that answers it"
    data = {
        "model_list": [
            {"model_name": "qwen3", "dheera_ai_params": {"model": QWEN_ID, "instruction": configured,
                                                        "max_length": 120, **FP32}},
            {"model_name": "gemma", "dheera_ai_params": {"model": GEMMA_ID, "max_length": 48, **FP32}},
        ],
        "general_settings": {"master_key": MASTER_KEY, "cache_dir": str(tmp_path / "server-cache")},
    }  # fmt: skip
    live = LiveServer(data).start()
    try:
        from_config = live.post("/v1/rerank", {"model": "qwen3", "query": QUERY, "documents": DOCS, "top_n": 2})
        from_body = live.post(
            "/v2/rerank", {"model": "qwen3", "query": QUERY, "documents": DOCS, "instruction": "find cities"}
        )
        tei = live.post("/rerank", {"query": QUERY, "texts": DOCS, "prompt": "Answer Yes or No."}, headers={})
        gemma = live.post(
            "/v1/rerank", {"model": "gemma", "query": QUERY, "documents": DOCS, "prompt": "Answer Yes or No."}
        )
    finally:
        live.stop()
    pairs = [(QUERY, doc) for doc in DOCS]
    for answer, instruction, count in ((from_config, configured, 2), (from_body, "find cities", len(DOCS))):
        assert answer.status_code == 200, answer.text
        expected = qwen3_card_reference(llm_models["qwen3"], pairs, max_length=120, instruction=instruction)
        results = answer.json()["results"]
        assert len(results) == count
        for result in results:
            assert result["relevance_score"] == pytest.approx(expected[result["index"]], abs=1e-4)
    assert tei.status_code == 400 and "takes 'instruction', not 'prompt'" in tei.text  # Qwen3 first
    expected = flag_llm_reference(llm_models["gemma"], pairs, max_length=48, prompt="Answer Yes or No.")
    for result in gemma.json()["results"]:
        assert result["relevance_score"] == pytest.approx(1 / (1 + math.exp(-expected[result["index"]])), abs=1e-4)


# Remote: vLLM's /rerank answer ------------------------------------------------------------------------------


def test_a_vllm_rerank_answer_is_understood(servers: Servers, tiny_bert: Path) -> None:
    server = servers.cohere(tiny_bert)
    vllm = {  # vLLM's /rerank (and /v1/rerank): usage.total_tokens, no meta
        "id": "rerank-0a1b", "model": QWEN_ID, "usage": {"total_tokens": 57},
        "results": [
            {"index": 1, "document": {"text": DOCS[1]}, "relevance_score": 0.25},
            {"index": 0, "document": {"text": DOCS[0]}, "relevance_score": 0.875},
            {"index": 2, "document": {"text": DOCS[2]}, "relevance_score": 0.5},
        ],
    }  # fmt: skip
    server.fail(Fault(status=200, body=vllm))
    response = dheera_local.rerank(
        "vllm/Qwen3-Reranker-0.6B", QUERY, DOCS[:3], api_base=server.url, backend="remote", cache=False
    )
    assert response.backend == "cohere"
    assert [(r.index, r.relevance_score) for r in response.results] == [
        (0, pytest.approx(0.875)), (2, pytest.approx(0.5)), (1, pytest.approx(0.25))
    ]  # fmt: skip
    assert server.scoring()[0].body["documents"] == DOCS[:3]


def test_the_langchain_adapter_passes_the_instruction(llm_models: dict[str, Path]) -> None:
    from langchain_core.documents import Document

    from dheera_local.integrations.langchain import DheeraRerank

    instruction = "Given a question, find the passage that names the city"
    compressor = DheeraRerank(model=QWEN_ID, top_n=None, instruction=instruction, max_length=120, cache=False, **FP32)
    kept = compressor.compress_documents([Document(page_content=doc) for doc in DOCS], QUERY)
    pairs = [(QUERY, doc) for doc in DOCS]
    expected = qwen3_card_reference(llm_models["qwen3"], pairs, max_length=120, instruction=instruction)
    got = {doc.page_content: doc.metadata["relevance_score"] for doc in kept}
    assert got == {doc: pytest.approx(expected[i], abs=1e-4) for i, doc in enumerate(DOCS)}
