"""Resuming ``dheera-local score``: a run killed mid-way and restarted writes what an uninterrupted
run writes, and a partial output never sits at the output path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_score_file import FLOAT32, make_rows, read_jsonl, write_jsonl

from dheera_local import Reranker
from dheera_local.cli import main

PAIRS = 4000
CHUNK = 250
KILL_AFTER = 2 * CHUNK  # records committed before the kill


def _progress(manifest: Path) -> int:
    try:
        return json.loads(manifest.read_text(encoding="utf-8"))["position"]
    except (OSError, ValueError, KeyError):
        return 0


def _kill_mid_run(command: list[str], manifest: Path, output: Path) -> int:
    """Start ``command``, SIGKILL it once ``KILL_AFTER`` records are committed; returns that count."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while _progress(manifest) < KILL_AFTER:
            if process.poll() is not None:
                pytest.fail(f"the run ended before it could be killed: {process.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the run committed nothing in 300 s")
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    return _progress(manifest)


def test_a_killed_run_resumes_to_the_same_bytes_as_an_uninterrupted_run(
    tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_jsonl(tmp_path / "pairs.jsonl", make_rows(PAIRS, seed=11))
    common = ["--model", str(tiny_bert), "--input", str(source), "--chunk-size", str(CHUNK), "-q", *FLOAT32]
    complete = tmp_path / "complete.jsonl"
    assert main(["score", *common, "--output", str(complete), "--cache-dir", str(tmp_path / "cache-a")]) == 0

    output = tmp_path / "resumed.jsonl"
    manifest = tmp_path / "resumed.jsonl.progress.json"
    command = [sys.executable, "-m", "dheera_local", "score", *common, "--output", str(output),
               "--cache-dir", str(tmp_path / "cache-b")]  # fmt: skip
    done = _kill_mid_run(command, manifest, output)
    assert KILL_AFTER <= done < PAIRS
    assert not output.exists()  # the partial file is never at the output path
    partial = tmp_path / "resumed.jsonl.partial"
    assert partial.exists() and len(read_jsonl_prefix(partial)) >= done

    capsys.readouterr()
    assert main([arg for arg in command[3:] if arg != "-q"]) == 0  # the same arguments, with messages
    messages = capsys.readouterr().err
    assert f"{done} records already done" in messages  # it resumed: it did not start over
    assert output.read_bytes() == complete.read_bytes()
    assert not partial.exists() and not manifest.exists()


def read_jsonl_prefix(path: Path) -> list[dict]:
    """The complete lines of a file that may end mid-line."""
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


def _interrupted_state(tmp_path: Path, tiny_bert: Path, rows: list[dict]) -> tuple[list[str], Path]:
    """A run stopped by --strict at a bad row in its last chunk: a real partial output and manifest."""
    bad = [*rows, {"query": "paris"}]
    source = write_jsonl(tmp_path / "pairs.jsonl", bad)
    output = tmp_path / "scores.jsonl"
    args = ["score", "--model", str(tiny_bert), "--input", str(source), "--output", str(output), "--chunk-size",
            "100", "-q", *FLOAT32]  # fmt: skip
    assert main([*args, "--strict"]) == 1
    assert not output.exists() and (tmp_path / "scores.jsonl.partial").stat().st_size > 0
    return args, output


def test_resume_truncates_rows_written_after_the_last_commit(tmp_path: Path, tiny_bert: Path) -> None:
    rows = make_rows(450, seed=12)
    args, output = _interrupted_state(tmp_path, tiny_bert, rows)
    partial = tmp_path / "scores.jsonl.partial"
    committed = _progress(tmp_path / "scores.jsonl.progress.json")
    assert committed == 400
    with partial.open("ab") as handle:  # a crash between writing and committing leaves extra bytes
        handle.write(b'{"half a row')
    assert main(args) == 0
    written = read_jsonl(output)
    assert [row["id"] for row in written] == [row["id"] for row in rows]
    assert len(read_jsonl(tmp_path / "scores.jsonl.errors.jsonl")) == 1


def test_a_partial_file_that_changed_is_not_trusted(tmp_path: Path, tiny_bert: Path) -> None:
    rows = make_rows(450, seed=13)
    args, output = _interrupted_state(tmp_path, tiny_bert, rows)
    partial = tmp_path / "scores.jsonl.partial"
    data = partial.read_bytes()
    partial.write_bytes(data.replace(b'"id": 399', b'"id": 999'))  # inside the last committed chunk
    assert main(args) == 0
    assert [row["id"] for row in read_jsonl(output)] == [row["id"] for row in rows]


def test_changed_arguments_start_over(tmp_path: Path, tiny_bert: Path) -> None:
    rows = make_rows(450, seed=14)
    args, output = _interrupted_state(tmp_path, tiny_bert, rows)
    assert main([*args, "--query-field", "document", "--document-field", "query"]) == 0
    written = read_jsonl(output)
    swapped = Reranker().score_pairs(
        str(tiny_bert), [(row["document"], row["query"]) for row in rows], dtype="float32", device="cpu"
    )
    assert [row["id"] for row in written] == [row["id"] for row in rows]
    assert [row["logit"] for row in written] == pytest.approx(swapped.logits, abs=1e-6)


def test_parquet_output_resumes_from_its_committed_parts(tmp_path: Path, tiny_bert: Path) -> None:
    pytest.importorskip("pyarrow", reason="Parquet needs pyarrow (the batch extra)")
    import pyarrow.parquet as pq

    rows = make_rows(450, seed=15)
    source = write_jsonl(tmp_path / "pairs.jsonl", [*rows, {"query": "paris"}])
    output = tmp_path / "scores.parquet"
    args = ["score", "--model", str(tiny_bert), "--input", str(source), "--output", str(output), "--chunk-size",
            "100", "-q", *FLOAT32]  # fmt: skip
    assert main([*args, "--strict"]) == 1
    parts = sorted((tmp_path / "scores.parquet.partial.parts").iterdir())
    assert len(parts) == 4 and not output.exists()
    (parts[0].parent / "part-000009.parquet").write_bytes(b"a stray part from a crash")
    assert main(args) == 0
    assert pq.read_table(output).column("id").to_pylist() == [row["id"] for row in rows]
    assert not os.path.exists(tmp_path / "scores.parquet.partial.parts")
