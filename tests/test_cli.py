"""The dheera-local command line, run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY_BERT_ID
from dheera_local.testing import install_in_hub_cache


def cli(*args: str, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dheera_local", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def test_rerank_documents_as_arguments() -> None:
    done = cli("rerank", "--model", TINY_BERT_ID, "--query", "capital", "--top-n", "2", "washington", "paris", "tokyo")
    assert done.returncode == 0, done.stderr
    response = json.loads(done.stdout)
    assert len(response["results"]) == 2
    tokens = response["meta"]["tokens"]["input_tokens"]  # the tokens scored (tests/test_usage_tokens.py)
    assert tokens > 0 and response["meta"]["billed_units"] == {"search_units": 1, "total_tokens": tokens}
    assert "document" not in response["results"][0]


def test_rerank_documents_from_a_file_and_from_stdin(tmp_path: Path) -> None:
    lines = tmp_path / "docs.txt"
    lines.write_text("washington is the capital\n\nparis\n")
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"text": "washington is the capital", "id": 7}\n"paris"\n')
    from_lines = json.loads(cli("rerank", "--model", TINY_BERT_ID, "--query", "q", "--documents-file", str(lines),
                                "--return-documents").stdout)  # fmt: skip
    assert sorted(r["document"]["text"] for r in from_lines["results"]) == ["paris", "washington is the capital"]
    from_jsonl = json.loads(cli("rerank", "--model", TINY_BERT_ID, "--query", "q", "--documents-file", str(jsonl),
                                "--return-documents").stdout)  # fmt: skip
    documents = {r["index"]: r["document"] for r in from_jsonl["results"]}
    assert documents == {0: {"text": "washington is the capital", "id": 7}, 1: {"text": "paris"}}
    from_stdin = json.loads(cli("rerank", "--model", TINY_BERT_ID, "--query", "q", stdin="a\nb\nc\n").stdout)
    assert sorted(r["index"] for r in from_stdin["results"]) == [0, 1, 2]


def test_errors_are_one_line_and_non_zero() -> None:
    bad_top_n = cli("rerank", "--model", TINY_BERT_ID, "--query", "q", "--top-n", "0", "a")
    assert bad_top_n.returncode == 1
    assert bad_top_n.stderr.strip().splitlines() == [bad_top_n.stderr.strip()]
    assert "top_n" in bad_top_n.stderr and "Traceback" not in bad_top_n.stderr
    missing = cli("rerank", "--model", "huggingface/BAAI/bge-reranker-base", "--backend", "local", "--query", "q", "a")
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "dheera-local pull BAAI/bge-reranker-base" in missing.stderr
    refused = cli("rerank", "--model", "BAAI/bge-reranker-v2-minicpm-layerwise", "--query", "q", "a")
    assert refused.returncode == 1 and "not a cross-encoder" in refused.stderr


def test_models_lists_models_txt_with_local_weights(tmp_path: Path, tiny_bert: Path) -> None:
    cache = tmp_path / "hub"
    snapshot = install_in_hub_cache(tiny_bert, "cross-encoder/ms-marco-TinyBERT-L-2-v2", cache)
    done = cli("models", "--json", env={"HF_HUB_CACHE": str(cache)})
    rows = {row["model"]: row for row in json.loads(done.stdout)}
    catalog = Path(__file__).parent.parent / "models.txt"
    listed = [line.split()[0] for line in catalog.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert list(rows) == listed
    assert rows["cross-encoder/ms-marco-TinyBERT-L-2-v2"]["local"] is True
    assert rows["cross-encoder/ms-marco-TinyBERT-L-2-v2"]["path"] == str(snapshot)
    assert rows["BAAI/bge-reranker-base"]["local"] is False
    table = cli("models", env={"HF_HUB_CACHE": str(cache)}).stdout
    assert "no (dheera-local pull BAAI/bge-reranker-base)" in table and str(snapshot) in table


@pytest.mark.parametrize("offline", [True, False])
def test_pull_without_network_says_how_to_provide_weights(offline: bool) -> None:
    env = {"HF_HUB_OFFLINE": "1"} if offline else {}
    done = cli("pull", "BAAI/bge-reranker-base", env=env)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    error_lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    assert "copy a snapshot" in error_lines[0] and "local model folder" in error_lines[0]


def test_cache_stats_and_clear(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    cli("rerank", "--model", TINY_BERT_ID, "--query", "q", "--cache-dir", str(folder), "a", "b")
    stats = json.loads(cli("cache", "stats", "--cache-dir", str(folder)).stdout)
    assert stats["entries"] == 2 and stats["directory"] == str(folder.resolve())
    assert "removed 2" in cli("cache", "clear", "--cache-dir", str(folder)).stdout
    assert json.loads(cli("cache", "stats", "--cache-dir", str(folder)).stdout)["entries"] == 0


def test_seed_proxy_form_routes_to_serve(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    done = cli("--config", str(missing))
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "nope.yaml" in done.stderr
