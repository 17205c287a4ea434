"""The pair-file readers and the resumable writers of ``dheera_local.score.io``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dheera_local import InvalidRequestError
from dheera_local.score.io import (
    ResumeMismatch,
    count_records,
    file_format,
    json_line,
    open_writer,
    read_records,
)


def test_formats_follow_the_extension() -> None:
    assert [file_format(Path(name), "input") for name in ("a.JSONL", "b.ndjson", "c.csv", "d.tsv", "e.pq")] == [
        "jsonl", "jsonl", "csv", "tsv", "parquet",
    ]  # fmt: skip
    with pytest.raises(InvalidRequestError, match=r"--output x\.json has extension '\.json'; use one of"):
        file_format(Path("x.json"), "output")


def test_jsonl_records_count_lines_and_skip_blank_ones(tmp_path: Path) -> None:
    source = tmp_path / "p.jsonl"
    source.write_text('{"a": 1}\n\n  \n{"a": 2}\n[1]\n{"a": 3}', encoding="utf-8")  # no final newline
    records = list(read_records(source, "jsonl"))
    assert [(r.index, r.line) for r in records] == [(0, 1), (1, 4), (2, 5), (3, 6)]
    assert records[2].fields is None and records[2].problem == "a JSON list, not an object"
    assert records[3].fields == {"a": 3}
    assert count_records(source, "jsonl") == 6  # a fast line count: an estimate for the progress bar


def test_csv_records_cite_the_line_a_multiline_record_starts_on(tmp_path: Path) -> None:
    source = tmp_path / "p.csv"
    source.write_text('\ufeffquery,document\nq1,"two\nlines"\nq2,d2\n', encoding="utf-8")  # with a BOM
    records = list(read_records(source, "csv"))
    assert [(r.line, r.fields) for r in records] == [
        (2, {"query": "q1", "document": "two\nlines"}),
        (4, {"query": "q2", "document": "d2"}),
    ]


def _commit_rows(path: Path, fmt: str, batches: list[list[dict]]) -> dict:
    writer = open_writer(path, fmt)
    state: dict = {}
    for rows in batches:
        writer.write(rows)
        state = writer.commit()
    writer.close()
    return state


def test_jsonl_writer_resumes_at_its_last_commit(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl.partial"
    state = _commit_rows(path, "jsonl", [[{"i": 1}], [{"i": 2}, {"i": 3}]])
    with path.open("ab") as handle:
        handle.write(b'{"i": 4}\n{"i": 5')  # written after the last commit
    writer = open_writer(path, "jsonl", state)
    writer.write([{"i": 4}])
    writer.finish()
    assert [json.loads(line)["i"] for line in path.read_text().splitlines()] == [1, 2, 3, 4]


def test_jsonl_writer_refuses_a_file_that_does_not_match_its_state(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl.partial"
    state = _commit_rows(path, "jsonl", [[{"i": 1}], [{"i": 2}]])
    path.write_bytes(path.read_bytes().replace(b"2", b"9"))
    with pytest.raises(ResumeMismatch, match="differs"):
        open_writer(path, "jsonl", state)
    path.write_bytes(b'{"i": 1}\n')
    with pytest.raises(ResumeMismatch, match="shorter"):
        open_writer(path, "jsonl", state)


def test_json_lines_are_standard_json() -> None:
    line = json_line({"score": math.nan, "text": "naïve", "raw": b"\xff"})
    assert line == '{"score": null, "text": "naïve", "raw": "\ufffd"}\n'.encode()


def test_csv_writer_keeps_the_first_rows_header(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    state = _commit_rows(path, "csv", [[{"a": "x", "b": {"n": 1}}], [{"a": "y"}]])
    assert state["fields"] == ["a", "b"]
    assert path.read_text() == 'a,b\nx,"{""n"": 1}"\ny,\n'
    writer = open_writer(path, "csv", state)
    with pytest.raises(InvalidRequestError, match=r"fields \['c'\] that the CSV header \['a', 'b'\] lacks"):
        writer.write([{"a": "z", "c": 1}])
    writer.close()


def test_parquet_parts_unify_the_types_each_chunk_inferred(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow", reason="Parquet needs pyarrow (the batch extra)")
    import pyarrow.parquet as pq

    path = tmp_path / "out.parquet.partial"
    state = _commit_rows(path, "parquet", [[{"id": None, "s": 0.5}], [{"id": 7, "s": 0.25, "extra": "e"}]])
    assert state == {"parts": 2}
    writer = open_writer(path, "parquet", state)
    writer.write([{"s": 0.125, "id": 8}])
    writer.finish()
    table = pq.read_table(path)
    assert table.to_pylist() == [
        {"id": None, "s": 0.5, "extra": None},
        {"id": 7, "s": 0.25, "extra": "e"},
        {"id": 8, "s": 0.125, "extra": None},
    ]
    assert str(table.schema.field("id").type) == "int64"


def test_parquet_resume_needs_its_committed_parts(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow", reason="Parquet needs pyarrow (the batch extra)")
    path = tmp_path / "out.parquet.partial"
    state = _commit_rows(path, "parquet", [[{"i": 1}], [{"i": 2}]])
    (tmp_path / "out.parquet.partial.parts" / "part-000001.parquet").unlink()
    with pytest.raises(ResumeMismatch, match="part-000001.parquet is missing"):
        open_writer(path, "parquet", state)
