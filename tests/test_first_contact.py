"""A new user's first hour: what the library prints while loading, what `pull` and `models` say, and the fix
lines of the errors a typo or an unreachable endpoint gives (issue 26, "First contact" item 8)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import dheera_local
from conftest import BERT_REVISION, SEED_DOCUMENTS, SEED_QUERY, TINY_BERT_ID, closed_port
from dheera_local import AllBackendsFailedError, ModelNotAvailableError, cli


def test_loading_a_model_prints_no_weight_loading_bar_and_keeps_transformers_setting(
    tiny_bert: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from transformers.utils import logging as transformers_logging

    assert transformers_logging.is_progress_bar_enabled()
    reranker = dheera_local.Reranker()
    try:
        reranker.rerank(str(tiny_bert), SEED_QUERY, SEED_DOCUMENTS, cache=False, device="cpu")
    finally:
        reranker.close()
    assert "Loading weights" not in capfd.readouterr().err
    assert transformers_logging.is_progress_bar_enabled()  # the host's setting, as it was


def test_pull_of_a_model_already_here_while_offline_says_it_is_here(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with caplog.at_level(logging.WARNING, logger="dheera_local"):
        assert cli.main(["pull", TINY_BERT_ID]) == 0
    assert f"{TINY_BERT_ID}: revision {BERT_REVISION} at " in capsys.readouterr().out
    assert f"{TINY_BERT_ID} is already on this machine; not checked for a newer revision (HF_HUB_OFFLINE" in caplog.text
    assert "copy" not in caplog.text


def test_pull_of_a_misspelt_id_offline_suggests_the_one_here(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], hub_cache: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli.main(["pull", "tiny-org/tiny-bert-rerankr"]) == 1
    err = capsys.readouterr().err
    assert f"it is not in {hub_cache} either. Did you mean {TINY_BERT_ID}?" in err


def test_a_misspelt_model_id_says_the_cache_was_searched_and_suggests_the_right_one(hub_cache: Path) -> None:
    # Online path: no weights for the typo, so HF hosted is tried (unreachable in tests) and fails.
    with pytest.raises(AllBackendsFailedError) as caught:
        dheera_local.rerank("tiny-org/Tiny-Bert-Rerankr", SEED_QUERY, SEED_DOCUMENTS)
    message = str(caught.value)
    assert f"(searched {hub_cache}). Did you mean {TINY_BERT_ID}?" in message
    with pytest.raises(ModelNotAvailableError) as local_only:
        dheera_local.rerank("cross-encoder/ms-marco-MiniLM-L-12-v3", SEED_QUERY, SEED_DOCUMENTS, backend="local")
    assert f"looked in {hub_cache}). Did you mean cross-encoder/ms-marco-MiniLM-L-12-v2?" in str(local_only.value)


def test_no_suggestion_for_an_unrelated_id() -> None:
    with pytest.raises(ModelNotAvailableError) as caught:
        dheera_local.rerank("someone/entirely-different", SEED_QUERY, SEED_DOCUMENTS, backend="local")
    assert "Did you mean" not in str(caught.value)


def test_an_unreachable_api_base_is_not_answered_with_pass_api_base() -> None:
    api_base = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(AllBackendsFailedError) as caught:
        dheera_local.rerank("huggingface/some-org/not-here", SEED_QUERY, SEED_DOCUMENTS, api_base=api_base)
    message = str(caught.value)
    assert api_base in message and "could not be reached" in message
    assert "pass api_base" not in message


def test_models_does_not_suggest_pulling_what_pull_refuses(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["models"]) == 0
    table = capsys.readouterr().out
    layerwise = next(line for line in table.splitlines() if line.startswith("BAAI/bge-reranker-v2-minicpm-layerwise "))
    assert "no (not supported: llm-layerwise" in layerwise
    assert "no (dheera-local pull BAAI/bge-reranker-v2-minicpm-layerwise)" not in table
    assert "no (dheera-local pull BAAI/bge-reranker-base)" in table
    gemma = next(line for line in table.splitlines() if line.startswith("BAAI/bge-reranker-v2-gemma "))
    assert "not supported" not in gemma  # LLM rerankers are served now (pulled, or built here by other tests)
    assert cli.main(["pull", "BAAI/bge-reranker-v2-minicpm-layerwise"]) == 1  # what the table does not suggest
    assert "does not run code from the hub" in capsys.readouterr().err
