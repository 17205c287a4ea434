"""dtype="int8": opt-in dynamic int8 on CPU, its own score-cache entry, refused where it cannot run.

Its fidelity on a real reranker is pinned in test_real_reranker.py; these run on the tiny random models.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import dheera_local
from conftest import SEED_DOCUMENTS, SEED_QUERY
from dheera_local import InvalidRequestError
from dheera_local._local.hardware import CpuFeatures, resolve_dtype
from dheera_local._local.int8 import INT8_KERNELS


def test_int8_loads_on_cpu_and_says_so(tiny_bert: Path) -> None:
    fp32 = dheera_local.rerank(str(tiny_bert), SEED_QUERY, SEED_DOCUMENTS, dtype="float32", raw_scores=True)
    int8 = dheera_local.rerank(str(tiny_bert), SEED_QUERY, SEED_DOCUMENTS, dtype="int8", raw_scores=True)
    served = int8.meta.dheera_local
    assert (served.backend, served.device, served.dtype, served.kernels) == ("local", "cpu", "int8", INT8_KERNELS)
    exact = {r.index: r.relevance_score for r in fp32.results}
    close = {r.index: r.relevance_score for r in int8.results}
    assert close.keys() == exact.keys()
    scale = max(1.0, max(abs(v) for v in exact.values()))
    # int8 moves logits (that is its price) but by a small fraction of their range, never to garbage.
    assert max(abs(close[i] - exact[i]) for i in exact) < 0.1 * scale
    assert close != exact


def test_int8_scores_are_cached_apart_from_fp32(tiny_bert: Path) -> None:
    first = dheera_local.rerank(str(tiny_bert), SEED_QUERY, SEED_DOCUMENTS, dtype="float32", raw_scores=True)
    assert first.meta.dheera_local.cache_hits == 0
    int8 = dheera_local.rerank(str(tiny_bert), SEED_QUERY, SEED_DOCUMENTS, dtype="int8", raw_scores=True)
    assert int8.meta.dheera_local.backend == "local"  # not fp32's cached scores under int8's name
    assert int8.meta.dheera_local.scored == len(SEED_DOCUMENTS)
    again = dheera_local.rerank(str(tiny_bert), SEED_QUERY, SEED_DOCUMENTS, dtype="int8", raw_scores=True)
    assert again.meta.dheera_local.cache_hits == len(SEED_DOCUMENTS)
    assert [r.relevance_score for r in again.results] == [r.relevance_score for r in int8.results]


@pytest.mark.parametrize("device", ["cuda", "cuda:0", "mps"])
def test_int8_off_the_cpu_is_refused_naming_dtype(device: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        resolve_dtype("int8", device)
    assert caught.value.field == "dtype"
    assert "CPU only" in str(caught.value)


@pytest.mark.parametrize("features", [CpuFeatures(), CpuFeatures(avx512_bf16=True, amx_bf16=True, avx512_vnni=True)])
def test_auto_never_chooses_int8(features: CpuFeatures) -> None:
    import torch

    assert resolve_dtype("auto", "cpu", features) in (torch.float32, torch.bfloat16)
    assert resolve_dtype("INT8", "cpu", features) == torch.int8
