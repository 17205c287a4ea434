"""Hostile input and faults against the command line, run as a real subprocess: one-line errors, bad
rows reported (never a traceback that aborts a file), a cache folder that cannot be turned against
the user, no secret on the terminal."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

from loopback import Fault, Servers

QUERY = "capital city"
DOCS = ["washington is the capital", "a river in france", "tokyo"]


def cli(*args: str | bytes, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dheera_local", *args],
        capture_output=True,
        text=True,
        errors="backslashreplace",
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def assert_one_line_error(done: subprocess.CompletedProcess, *phrases: str) -> None:
    assert done.returncode == 1, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def test_invalid_utf8_in_arguments_is_a_one_line_error(tiny_bert: Path) -> None:
    done = cli("rerank", "--model", str(tiny_bert), "--query", b"caf\xe9", "washington", "paris")
    assert_one_line_error(done, "query is not valid Unicode")
    done = cli("rerank", "--model", str(tiny_bert), "--query", "capital", "washington", b"par\xffis")
    assert_one_line_error(done, "documents[1] is not valid Unicode")


def test_invalid_utf8_in_a_documents_file_or_stdin_names_the_document(tmp_path: Path, tiny_bert: Path) -> None:
    docs = tmp_path / "docs.txt"
    docs.write_bytes(b"washington is the capital\nparis \xff\xfe is a city\n")
    done = cli("rerank", "--model", str(tiny_bert), "--query", "capital", "--documents-file", str(docs))
    assert_one_line_error(done, "documents[1] is not valid Unicode")
    piped = subprocess.run(
        [sys.executable, "-m", "dheera_local", "rerank", "--model", str(tiny_bert), "--query", "capital"],
        input=b"tokyo\n\xc3(bad\n", capture_output=True, timeout=300,
    )  # fmt: skip
    assert piped.returncode == 1 and b"Traceback" not in piped.stderr
    assert b"error: documents[1] is not valid Unicode" in piped.stderr


def test_lone_surrogates_in_a_score_file_are_bad_rows(tmp_path: Path, tiny_bert: Path) -> None:
    lines = [
        json.dumps({"id": 0, "query": QUERY, "document": DOCS[0]}),
        '{"id": 1, "query": "capital\\ud800", "document": "x"}',
        '{"id": 2, "query": "capital", "document": "y", "note": "\\udcff"}',
        json.dumps({"id": 3, "query": QUERY, "document": DOCS[1]}),
    ]
    source = tmp_path / "pairs.jsonl"
    source.write_text("\n".join(lines) + "\n")
    output = tmp_path / "scores.jsonl"
    for _ in range(2):  # a rerun finds the finished output and redoes nothing wrong
        done = cli("score", "--model", str(tiny_bert), "--input", str(source), "--output", str(output), "-q")
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr
    scored = [json.loads(line) for line in output.read_text().splitlines()]
    assert [row["id"] for row in scored] == [0, 3]
    errors = [json.loads(line) for line in (tmp_path / "scores.jsonl.errors.jsonl").read_text().splitlines()]
    assert [(row["line"], row["id"]) for row in errors] == [(2, 1), (3, 2)]
    assert "not valid Unicode" in errors[0]["error"] and errors[0]["record"]["query"] == "capital\ud800"


def test_cache_clear_never_deletes_a_planted_filename(tmp_path: Path, tiny_bert: Path) -> None:
    cache_dir = tmp_path / "cache"
    done = cli("rerank", "--model", str(tiny_bert), "--query", QUERY, "--cache-dir", str(cache_dir), *DOCS)
    assert done.returncode == 0, done.stderr
    victim = tmp_path / "home" / "important.txt"
    victim.parent.mkdir()
    victim.write_text("keep me")
    with sqlite3.connect(cache_dir / "cache.db") as db:
        db.execute("UPDATE Cache SET mode = 4, filename = ?", (str(victim),))
    done = cli("cache", "clear", "--cache-dir", str(cache_dir))
    assert done.returncode == 0, done.stderr
    assert "removed 3 cached scores" in done.stdout
    assert victim.read_text() == "keep me"
    assert "not deleting" in done.stderr and "planted row" in done.stderr


def test_a_corrupt_settings_table_is_a_one_line_error(tmp_path: Path, tiny_bert: Path) -> None:
    cache_dir = tmp_path / "cache"
    cli("rerank", "--model", str(tiny_bert), "--query", QUERY, "--cache-dir", str(cache_dir), *DOCS)
    with sqlite3.connect(cache_dir / "cache.db") as db:
        db.execute("INSERT INTO Settings VALUES ('disk_evil', 1)")
    assert_one_line_error(cli("cache", "stats", "--cache-dir", str(cache_dir)), "score cache cannot be opened")
    done = cli("rerank", "--model", str(tiny_bert), "--query", QUERY, "--cache-dir", str(cache_dir), *DOCS)
    assert done.returncode == 0 and "Traceback" not in done.stderr  # scored, uncached, with a warning
    assert json.loads(done.stdout)["meta"]["dheera_local"]["backend"] == "local"


def test_an_echoed_api_key_never_reaches_the_terminal(servers: Servers, tiny_bert: Path) -> None:
    tei, token = servers.tei(tiny_bert), f"sk-{uuid.uuid4().hex}"
    tei.always = Fault(401, body={"error": f"key {token} is not valid for this endpoint"})
    done = cli(
        "rerank", "--model", "huggingface/x/y", "--api-base", tei.url, "--api-key", token, "--query", QUERY,
        "--backend", "remote", "-v", *DOCS,
    )  # fmt: skip
    assert_one_line_error(done, "answered 401: key *** is not valid")
    assert token[:8] not in done.stderr + done.stdout
