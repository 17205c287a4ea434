"""Finding weights without network: local folders and the huggingface_hub cache layout."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import dheera_local
from conftest import BERT_REVISION, TINY_BERT_ID
from dheera_local import ModelNotAvailableError
from dheera_local._models.discovery import find_in_hub_cache, folder_fingerprint
from dheera_local._models.model_ref import ModelKind, parse_model
from dheera_local._settings import hub_cache_dir
from dheera_local.testing import install_in_hub_cache

QUERY = "capital city"
DOCS = ["washington is the capital", "a river in france"]


def test_model_string_forms() -> None:
    assert parse_model("huggingface/BAAI/bge-reranker-base").hub_id == "BAAI/bge-reranker-base"
    assert parse_model("BAAI/bge-reranker-base").kind is ModelKind.HUB
    assert parse_model("cohere/rerank-v3.5").kind is ModelKind.NAMED
    assert parse_model("bge-reranker-base").kind is ModelKind.NAMED


def test_prefixed_and_bare_hub_ids_are_the_same_model() -> None:
    first = dheera_local.rerank(f"huggingface/{TINY_BERT_ID}", QUERY, DOCS)
    second = dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS)
    assert second.cache_hits == len(DOCS)  # same identity, same cache keys
    assert [r.relevance_score for r in first.results] == [r.relevance_score for r in second.results]


def test_hf_home_and_hf_hub_cache_are_honoured(monkeypatch: pytest.MonkeyPatch, hub_cache: Path) -> None:
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(hub_cache.parent))
    assert hub_cache_dir() == hub_cache
    assert dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS, backend="local").backend == "local"
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    dheera_local.close_all()  # the default Reranker read its settings when made: the next one reads these
    with pytest.raises(ModelNotAvailableError, match="dheera-local pull"):
        dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS, backend="local")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))  # HF_HUB_CACHE takes priority over HF_HOME
    dheera_local.close_all()
    assert dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS, backend="local", cache=False).backend == "local"


def test_an_injected_reranker_keeps_its_settings(monkeypatch: pytest.MonkeyPatch, hub_cache: Path) -> None:
    reranker = dheera_local.Reranker(settings=dheera_local.Settings.from_env())
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-hub-cache")
    assert reranker.rerank(TINY_BERT_ID, QUERY, DOCS, backend="local", cache=False).backend == "local"
    with pytest.raises(ModelNotAvailableError, match="/nonexistent-hub-cache"):
        dheera_local.Reranker().rerank(TINY_BERT_ID, QUERY, DOCS, backend="local", cache=False)


def test_discovery_works_with_hf_hub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS).backend == "local"


def test_missing_model_message_says_how_to_fix_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError) as caught:
        dheera_local.rerank("huggingface/BAAI/bge-reranker-base", QUERY, DOCS)
    message = str(caught.value)
    assert "dheera-local pull BAAI/bge-reranker-base" in message
    assert "HF_TOKEN" in message and "api_base" in message


def _copy_cache(hub_cache: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "hub"
    shutil.copytree(hub_cache, copy, symlinks=True)
    return copy


def test_resolves_the_revision_refs_main_names(tmp_path: Path, tiny_xlmr: Path, tiny_bert: Path) -> None:
    cache = tmp_path / "hub"
    install_in_hub_cache(tiny_bert, "org/model", cache, revision="a" * 40)
    install_in_hub_cache(tiny_xlmr, "org/model", cache, revision="b" * 40)  # refs/main -> b
    assert find_in_hub_cache("org/model", cache).revision == "b" * 40
    (cache / "models--org--model" / "refs" / "main").write_text("a" * 40)
    found = find_in_hub_cache("org/model", cache)
    assert found.revision == "a" * 40 and found.path.name == "a" * 40


def test_a_new_revision_on_disk_misses_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                 hub_cache: Path, tiny_xlmr: Path) -> None:  # fmt: skip
    cache = _copy_cache(hub_cache, tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS).cache_hits == 0
    assert dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS).cache_hits == 2
    install_in_hub_cache(tiny_xlmr, TINY_BERT_ID, cache, revision="c" * 40)  # the repo moved on
    response = dheera_local.rerank(TINY_BERT_ID, QUERY, DOCS)
    assert response.cache_hits == 0 and response.backend == "local"


def test_snapshot_without_refs_main_is_still_found(tmp_path: Path, tiny_bert: Path) -> None:
    cache = tmp_path / "hub"
    install_in_hub_cache(tiny_bert, "org/copied", cache, revision="d" * 40)
    (cache / "models--org--copied" / "refs" / "main").unlink()
    assert find_in_hub_cache("org/copied", cache).revision == "d" * 40


def test_incomplete_snapshots_are_not_weights(tmp_path: Path, tiny_bert: Path) -> None:
    cache = tmp_path / "hub"
    snapshot = install_in_hub_cache(tiny_bert, "org/partial", cache, revision="e" * 40)
    (snapshot / "model.safetensors").unlink()
    assert find_in_hub_cache("org/partial", cache) is None
    config_only = install_in_hub_cache(tiny_bert, "org/sharded", cache, revision="f" * 40)
    (config_only / "model.safetensors").unlink()
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (config_only / "model.safetensors.index.json").write_text(json.dumps(index))
    (config_only / "model-00001-of-00002.safetensors").write_bytes(b"x")
    assert find_in_hub_cache("org/sharded", cache) is None  # second shard missing


def test_hub_layout_uses_symlinks_into_blobs(hub_cache: Path) -> None:
    snapshot = hub_cache / f"models--{TINY_BERT_ID.replace('/', '--')}" / "snapshots" / BERT_REVISION
    weights = snapshot / "model.safetensors"
    assert weights.is_symlink() and Path(os.path.realpath(weights)).parent.name == "blobs"
    assert (snapshot.parent.parent / "refs" / "main").read_text() == BERT_REVISION


def test_local_folder_revision_changes_when_weights_change(tmp_path: Path, tiny_bert: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_bert, folder)
    before = folder_fingerprint(folder)
    assert dheera_local.rerank(str(folder), QUERY, DOCS).cache_hits == 0
    assert dheera_local.rerank(str(folder), QUERY, DOCS).cache_hits == 2
    weights = folder / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert folder_fingerprint(folder) != before
    assert dheera_local.rerank(str(folder), QUERY, DOCS).cache_hits == 0
