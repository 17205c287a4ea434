"""The fast CPU path: oneDNN prepacked linears keep scores and rankings; the automatic choice is visible."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dheera_local
from dheera_local._local.cpu_kernels import EAGER, PACKED, pack_linears, packing_available, probe_check
from dheera_local._local.hardware import cpu_features

NATIVE_BF16 = cpu_features().native_bf16
NEEDS_PACKING = pytest.mark.skipif(
    not packing_available("cpu", torch.bfloat16), reason="oneDNN cannot pack bf16 linears with this torch build or CPU"
)
NEEDS_FP32_PACKING = pytest.mark.skipif(
    not packing_available("cpu", torch.float32), reason="oneDNN cannot pack fp32 linears with this torch build"
)
QUERY = "which city"
DOCS = [
    "the city of paris has a famous museum",
    "berlin is in germany",
    "a cafe in paris near the river",
    "rome and madrid",
    "tea and coffee in the morning",
    "paris",
    "london bridge",
]


def test_packing_applies_only_to_cpu_bf16_and_fp32_and_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not packing_available("cpu", torch.float16)
    assert not packing_available("cuda", torch.bfloat16)
    assert not packing_available("cuda", torch.float32)
    assert not packing_available("cpu", torch.bfloat16, cpu_kernels="eager")
    assert not packing_available("cpu", torch.float32, cpu_kernels="eager")
    monkeypatch.setenv("DHEERA_CPU_KERNELS", "eager")
    assert dheera_local.Settings.from_env().cpu_kernels == "eager"


@NEEDS_PACKING
@pytest.mark.parametrize("model_fixture", ["tiny_bert", "tiny_xlmr", "keyword_model"])
def test_packed_linears_match_eager_bf16(model_fixture: str, request: pytest.FixtureRequest) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder: Path = request.getfixturevalue(model_fixture)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    features = tokenizer([QUERY] * len(DOCS), DOCS, padding=True, return_tensors="pt")
    fp32 = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    eager = AutoModelForSequenceClassification.from_pretrained(folder).eval().to(torch.bfloat16)
    packed = AutoModelForSequenceClassification.from_pretrained(folder).eval().to(torch.bfloat16)
    with torch.inference_mode():
        reference = fp32(**features).logits.float()
    assert pack_linears(packed, dict(features), reference) == PACKED
    assert not any(type(m) is torch.nn.Linear for m in packed.modules())  # every linear was swapped
    with torch.inference_mode():
        expected = eager(**features).logits.float()
        actual = packed(**features).logits.float()
    assert torch.allclose(actual, expected, atol=0.05)


@NEEDS_FP32_PACKING
@pytest.mark.parametrize("model_fixture", ["tiny_bert", "tiny_xlmr", "keyword_model"])
def test_packed_fp32_linears_match_eager_fp32(model_fixture: str, request: pytest.FixtureRequest) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder: Path = request.getfixturevalue(model_fixture)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    features = dict(tokenizer([QUERY] * len(DOCS), DOCS, padding=True, return_tensors="pt"))
    eager = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    packed = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.inference_mode():
        expected = eager(**features).logits.float()
    assert pack_linears(packed, features, expected) == PACKED
    assert not any(type(m) is torch.nn.Linear for m in packed.modules())
    with torch.inference_mode():
        actual = packed(**features).logits.float()
    # Same precision, another summation order: fp32 rounding, not bf16's 1e-2.
    assert torch.allclose(actual, expected, rtol=0, atol=1e-4)


@NEEDS_FP32_PACKING
def test_fp32_on_cpu_runs_packed_with_fp32_scores(keyword_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    packed = dheera_local.rerank(str(keyword_model), QUERY, DOCS, dtype="float32", device="cpu", cache=False)
    assert packed.meta.dheera_local.kernels == PACKED
    monkeypatch.setenv("DHEERA_CPU_KERNELS", "eager")
    dheera_local.close_all()
    eager = dheera_local.rerank(str(keyword_model), QUERY, DOCS, dtype="float32", device="cpu", cache=False)
    assert eager.meta.dheera_local.kernels == EAGER
    expected = {r.index: r.relevance_score for r in eager.results}
    assert [r.index for r in packed.results] == [r.index for r in eager.results]
    assert max(abs(r.relevance_score - expected[r.index]) for r in packed.results) <= 1e-5


def test_bf16_fast_path_keeps_the_trained_models_ranking(keyword_model: Path) -> None:
    exact = dheera_local.rerank(str(keyword_model), QUERY, DOCS, dtype="float32", cache=False)
    fast = dheera_local.rerank(str(keyword_model), QUERY, DOCS, dtype="bfloat16", cache=False)
    # The three "paris" documents saturate at the same logit: compare the set above the rest.
    assert {r.index for r in fast.results[:3]} == {r.index for r in exact.results[:3]} == {0, 2, 5}
    reference = {r.index: r.relevance_score for r in exact.results}
    assert max(abs(r.relevance_score - reference[r.index]) for r in fast.results) <= 0.02
    expected_kernels = PACKED if packing_available("cpu", torch.bfloat16) else EAGER
    assert fast.meta.dheera_local.kernels == expected_kernels


def run_without_avx512(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a Python whose oneDNN is capped at AVX2 (no bf16 weight reorder); it must succeed."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    done = subprocess.run(
        [sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=120
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_a_cpu_where_onednn_cannot_pack_bf16_scores_bf16_with_eager_kernels(keyword_model: Path) -> None:
    # oneDNN capped at AVX2 has no bf16 weight reorder (as on CPUs without AVX-512BW): an explicit
    # dtype="bfloat16" must load with eager kernels there, not fail to load.
    script = (
        "import json, sys, dheera_local\n"
        "r = dheera_local.rerank(sys.argv[1], 'which city', sys.argv[2:], dtype='bfloat16', cache=False)\n"
        "print(json.dumps([r.meta.dheera_local.kernels, [x.index for x in r.results[:3]]]))\n"
    )
    done = run_without_avx512(script, str(keyword_model), *DOCS)
    kernels, top = json.loads(done.stdout.strip().splitlines()[-1])
    assert kernels == EAGER
    assert set(top) == {0, 2, 5}


def test_a_laptop_stand_in_packs_fp32_where_it_cannot_pack_bf16(keyword_model: Path) -> None:
    # Capped at AVX2 (most laptops): no native bf16, so auto precision is fp32, and fp32 packs there.
    script = (
        "import json, sys, dheera_local\n"
        "r = dheera_local.rerank(sys.argv[1], 'which city', sys.argv[2:], device='cpu', cache=False)\n"
        "m = r.meta.dheera_local\n"
        "print(json.dumps([m.dtype, m.kernels, [x.index for x in r.results[:3]]]))\n"
    )
    done = run_without_avx512(script, str(keyword_model), *DOCS)
    dtype, kernels, top = json.loads(done.stdout.strip().splitlines()[-1])
    assert (dtype, kernels) == ("float32", PACKED)
    assert set(top) == {0, 2, 5}


def test_packing_that_raises_leaves_the_eager_model_intact(tiny_bert: Path) -> None:
    # Called directly (past the availability check) where oneDNN cannot reorder bf16 weights.
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
        "from dheera_local._local.cpu_kernels import pack_linears\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[1])\n"
        "features = dict(tok(['q', 'q'], ['a b', 'c d e'], padding=True, return_tensors='pt'))\n"
        "model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1]).eval().to(torch.bfloat16)\n"
        "linears = sum(type(m) is torch.nn.Linear for m in model.modules())\n"
        "before = model(**features).logits\n"
        "kernels = pack_linears(model, features, before.float())\n"
        "same = torch.equal(model(**features).logits, before)\n"
        "print(kernels, linears, sum(type(m) is torch.nn.Linear for m in model.modules()), same)\n"
    )
    done = run_without_avx512(script, str(tiny_bert))
    kernels, before, after, same = done.stdout.split()[-4:]
    assert kernels == EAGER and int(before) == int(after) > 0 and same == "True"
    assert "not usable on this machine" in done.stderr


def test_eager_override_gives_the_same_ranking(keyword_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DHEERA_CPU_KERNELS", "eager")
    dheera_local.close_all()  # the module functions' Reranker reads the settings when made
    eager = dheera_local.rerank(str(keyword_model), QUERY, DOCS, dtype="bfloat16", cache=False)
    assert eager.meta.dheera_local.kernels == EAGER
    exact = dheera_local.rerank(str(keyword_model), QUERY, DOCS, dtype="float32", cache=False)
    assert {r.index for r in eager.results[:3]} == {r.index for r in exact.results[:3]} == {0, 2, 5}


def test_auto_precision_is_reported_and_follows_the_cpu() -> None:
    response = dheera_local.rerank("tiny-org/tiny-bert-reranker", QUERY, DOCS, device="cpu", cache=False)
    assert response.meta.dheera_local.dtype == ("bfloat16" if NATIVE_BF16 else "float32")


@NEEDS_PACKING
def test_undoing_the_swap_restores_the_eager_model(tiny_bert: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from dheera_local._local.cpu_kernels import _restore, _swap

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    features = dict(tokenizer([QUERY] * 3, DOCS[:3], padding=True, return_tensors="pt"))
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert).eval().to(torch.bfloat16)
    with torch.inference_mode():
        before = model(**features).logits
    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    swapped: list = []
    _swap(model, swapped)
    assert sum(type(m) is torch.nn.Linear for m in model.modules()) == 0
    _restore(model, swapped)
    assert sum(type(m) is torch.nn.Linear for m in model.modules()) == linears
    with torch.inference_mode():
        assert torch.equal(model(**features).logits, before)


def test_the_check_is_relative_to_what_bf16_itself_costs() -> None:
    reference = torch.tensor([[9.5], [-6.0], [0.3]])  # a real reranker's spread
    eager = reference + torch.tensor([[0.11], [-0.08], [0.01]])  # bf16's own error, ~1% of the spread
    assert probe_check(reference, eager, reference + 0.12).passed  # as close as eager: kept
    assert probe_check(reference, eager, reference - 0.16).passed  # a little worse (fused GELU rounds once)
    worse = probe_check(reference, eager, reference + torch.tensor([[0.0], [0.6], [0.0]]))
    assert not worse.passed and "allowed 0.2600" in str(worse)  # 1.5 x 0.11 + 0.01 x 9.5
    tiny = torch.tensor([[0.02], [-0.01]])  # a twin's spread: the floor decides
    assert probe_check(tiny, tiny + 0.0005, tiny + 0.009).passed
    assert not probe_check(tiny, tiny + 0.0005, tiny + 0.05).passed


@NEEDS_PACKING
def test_packing_survives_a_realistic_logit_spread(keyword_model: Path, tmp_path: Path) -> None:
    # The keyword model with its head scaled x3: logits spread over about -15..+15, as wide as a real
    # reranker's or wider. A fixed 0.05 tolerance used to drop packing here.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(keyword_model)
    with torch.no_grad():
        model.classifier.weight.mul_(3.0)
        model.classifier.bias.mul_(3.0)
    model.save_pretrained(tmp_path / "wide")
    AutoTokenizer.from_pretrained(keyword_model).save_pretrained(tmp_path / "wide")
    exact = dheera_local.rerank(str(tmp_path / "wide"), QUERY, DOCS, dtype="float32", raw_scores=True, cache=False)
    fast = dheera_local.rerank(str(tmp_path / "wide"), QUERY, DOCS, dtype="bfloat16", raw_scores=True, cache=False)
    assert fast.meta.dheera_local.kernels == PACKED
    spread = max(abs(r.relevance_score) for r in exact.results)
    assert spread > 10
    reference = {r.index: r.relevance_score for r in exact.results}
    assert max(abs(r.relevance_score - reference[r.index]) for r in fast.results) <= 0.02 * spread
    assert {r.index for r in fast.results[:3]} == {r.index for r in exact.results[:3]} == {0, 2, 5}


@pytest.mark.parametrize("model_fixture", ["tiny_bert", "tiny_xlmr"])
def test_bf16_on_cpu_leaves_the_memory_mapped_embedding_table_in_fp32(
    model_fixture: str, request: pytest.FixtureRequest
) -> None:
    # Converting the embedding table would read all of it (768 MB for XLM-R) beside its bf16 copy.
    from dheera_local._local.torch_model import LocalModel
    from dheera_local._models.discovery import LocalWeights

    folder: Path = request.getfixturevalue(model_fixture)
    weights = LocalWeights(folder, str(folder), "test")
    fast = LocalModel(weights, "cpu", torch.bfloat16)
    exact = LocalModel(weights, "cpu", torch.float32)
    embeddings = fast.network.base_model.embeddings
    assert {p.dtype for p in embeddings.parameters()} == {torch.float32}
    assert {p.dtype for p in fast.network.base_model.encoder.parameters()} <= {torch.bfloat16}
    pairs = [(QUERY, doc) for doc in DOCS]
    got, want = fast.logits(pairs, 64, 4096), exact.logits(pairs, 64, 4096)
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 0.02


@NEEDS_PACKING
def test_a_model_with_fewer_positions_than_the_probe_still_packs(tmp_path: Path) -> None:
    # The load-time probe's pairs are cut to the model's own limit (64 positions here, under the probe's 128).
    from dheera_local.testing import build_cross_encoder

    folder = build_cross_encoder(tmp_path / "short", max_position=64)
    documents = [" ".join(["river"] * 100), "a museum"]
    packed = dheera_local.rerank(str(folder), QUERY, documents, dtype="float32", cache=False)
    assert packed.meta.dheera_local.kernels == PACKED
    assert len(packed.results) == 2


@NEEDS_PACKING
def test_gelu_is_fused_only_into_a_dense_layer_that_is_packed(tiny_bert: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    class OwnLinear(torch.nn.Linear):  # e.g. a LoRA or quantization wrapper: left unpacked
        pass

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    features = dict(tokenizer([QUERY] * 3, DOCS[:3], padding=True, return_tensors="pt"))
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert).eval()
    for layer in model.bert.encoder.layer:
        dense = layer.intermediate.dense
        own = OwnLinear(dense.in_features, dense.out_features)
        own.load_state_dict(dense.state_dict())
        layer.intermediate.dense = own
    with torch.inference_mode():
        reference = model(**features).logits.float()
    assert pack_linears(model, features, reference) == PACKED
    for layer in model.bert.encoder.layer:
        assert type(layer.intermediate.dense) is OwnLinear
        assert type(layer.intermediate.intermediate_act_fn).__name__ == "GELUActivation"
    with torch.inference_mode():
        assert torch.allclose(model(**features).logits.float(), reference, atol=1e-5)
