"""Streaming readers and writers for pair files: JSONL, CSV/TSV and Parquet, chosen by extension.

Readers yield :class:`Record`s one at a time with the line (JSONL, CSV) or row (Parquet) number
that error reports cite; a record that cannot be parsed is still yielded, with its ``problem``, so
it is reported and never silently dropped. Writers append rows and ``commit()`` durably; the state
a commit returns is enough to reopen the file after a crash and carry on from that point, which
is how the runner resumes. pyarrow is imported only when a Parquet file is read or written.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .._errors import InvalidRequestError

FORMATS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
PARQUET_BATCH_ROWS = 4096
_COUNT_BLOCK = 1 << 20


@dataclass(frozen=True)
class Record:
    """One input record. ``index`` counts records from 0; ``line`` is what error reports cite."""

    index: int
    line: int
    fields: dict[str, Any] | None
    problem: str | None = None
    raw: str | None = None


def file_format(path: Path, role: str) -> str:
    """The format named by ``path``'s extension; ``role`` (``input``/``output``) goes in the error."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(FORMATS)
        raise InvalidRequestError(
            f"--{role} {path} has extension {path.suffix or '(none)'!r}; use one of {known}", field=role
        )
    return fmt


def import_pyarrow() -> Any:
    """``pyarrow.parquet``, or an error naming the extra that provides it."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise InvalidRequestError(
            "Parquet files need pyarrow: pip install 'dheera_local[score]'", field="input"
        ) from exc
    return pq


# -- readers ---------------------------------------------------------------------------------------


def read_records(path: Path, fmt: str) -> Iterator[Record]:
    """Every record of ``path`` in file order (blank JSONL/CSV lines are not records)."""
    if fmt == "jsonl":
        return _read_jsonl(path)
    if fmt in ("csv", "tsv"):
        return _read_csv(path, "\t" if fmt == "tsv" else ",")
    return _read_parquet(path)


def input_columns(path: Path, fmt: str) -> list[str] | None:
    """The column names of a CSV/TSV header or a Parquet schema; None for JSONL (per record)."""
    if fmt == "jsonl":
        return None
    if fmt == "parquet":
        return list(import_pyarrow().ParquetFile(path).schema_arrow.names)
    with path.open(newline="", encoding="utf-8-sig") as handle:
        return next(csv.reader(handle, delimiter="\t" if fmt == "tsv" else ","), [])


def count_records(path: Path, fmt: str) -> int:
    """About how many records ``path`` holds (for the progress bar's ETA): Parquet metadata, else lines."""
    if fmt == "parquet":
        return import_pyarrow().ParquetFile(path).metadata.num_rows
    lines = 0
    last = b"\n"
    with path.open("rb") as handle:
        while block := handle.read(_COUNT_BLOCK):
            lines += block.count(b"\n")
            last = block[-1:]
    lines += last != b"\n"  # a last line without a newline
    return max(lines - (fmt != "jsonl"), 0)  # CSV: minus the header


def _read_jsonl(path: Path) -> Iterator[Record]:
    index = 0
    with path.open("rb") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            yield _jsonl_record(index, line_number, line)
            index += 1


def _jsonl_record(index: int, line_number: int, line: bytes) -> Record:
    try:
        value = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        return Record(index, line_number, None, f"not valid JSON ({exc})", line.decode("utf-8", "replace").rstrip())
    if not isinstance(value, dict):
        return Record(index, line_number, None, f"a JSON {type(value).__name__}, not an object", line.decode().rstrip())
    return Record(index, line_number, value)


def _read_csv(path: Path, delimiter: str) -> Iterator[Record]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            return
        index = 0
        start = reader.line_num + 1
        for row in reader:
            line_number, start = start, reader.line_num + 1  # a quoted field may span lines
            if not row:
                continue
            fields = dict(zip(header, row, strict=False))  # a short row lacks its last fields
            problem = f"has {len(row)} columns, the header has {len(header)}" if len(row) > len(header) else None
            yield Record(index, line_number, fields, problem, delimiter.join(row) if problem else None)
            index += 1


def _read_parquet(path: Path) -> Iterator[Record]:
    parquet = import_pyarrow().ParquetFile(path)
    index = 0
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        for fields in batch.to_pylist():
            yield Record(index, index + 1, fields)
            index += 1


# -- writers ---------------------------------------------------------------------------------------


class Writer(Protocol):
    """Appends rows to a partial output file; ``commit`` makes them durable and returns resume state."""

    def write(self, rows: list[dict[str, Any]]) -> None: ...

    def commit(self) -> dict[str, Any]: ...

    def finish(self) -> None: ...

    def close(self) -> None: ...


class ResumeMismatch(Exception):
    """A partial file does not match the state its manifest recorded; the run starts over."""


def open_writer(path: Path, fmt: str, state: dict[str, Any] | None = None) -> Writer:
    """A writer for ``path``, reopened at ``state`` (from an earlier ``commit``) or started afresh.

    Raises:
        ResumeMismatch: ``path`` is shorter than, or differs from, what ``state`` describes.
    """
    if fmt == "jsonl":
        return JsonlWriter(path, state)
    if fmt in ("csv", "tsv"):
        return CsvWriter(path, state, "\t" if fmt == "tsv" else ",")
    return ParquetPartsWriter(path, state)


def json_default(value: Any) -> Any:
    """JSON for the values Parquet can hold and JSON cannot (timestamps, decimals, bytes)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def json_line(row: dict[str, Any]) -> bytes:
    """One JSONL line; NaN becomes null so every line is standard JSON.

    A lone surrogate (a bad row's text, reported as it was read) is written as its JSON escape.
    """
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
    return (json.dumps(clean, ensure_ascii=False, default=json_default) + "\n").encode("utf-8", "backslashreplace")


class _AppendFile:
    """A binary file appended to, truncated back to the last commit on resume.

    The commit state records the offset and a hash of the last committed stretch, so a partial
    file that someone else wrote to (or that a crash left shorter) is detected, not trusted.
    """

    def __init__(self, path: Path, state: dict[str, Any] | None) -> None:
        self.path = path
        self._digest = hashlib.sha256()
        if state is None:
            self.handle = path.open("wb")
            self.committed = 0
            self.tail = (0, hashlib.sha256().hexdigest())
            return
        offset, tail_start, tail_hash = int(state["bytes"]), int(state["tail_start"]), state["tail_sha256"]
        if not path.is_file() or path.stat().st_size < offset:
            raise ResumeMismatch(f"{path} is missing or shorter than the {offset} bytes recorded")
        self.handle = path.open("r+b")
        self.handle.seek(tail_start)
        if hashlib.sha256(self.handle.read(offset - tail_start)).hexdigest() != tail_hash:
            self.handle.close()
            raise ResumeMismatch(f"{path} differs from what was recorded at byte {tail_start}")
        self.handle.truncate(offset)
        self.handle.seek(offset)
        self.committed = offset
        self.tail = (tail_start, tail_hash)

    def write(self, data: bytes) -> None:
        self._digest.update(data)
        self.handle.write(data)

    def commit(self) -> dict[str, Any]:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        offset = self.handle.tell()
        if offset != self.committed:
            self.tail = (self.committed, self._digest.hexdigest())
            self.committed = offset
            self._digest = hashlib.sha256()
        return {"bytes": offset, "tail_start": self.tail[0], "tail_sha256": self.tail[1]}

    def close(self) -> None:
        self.handle.close()


class JsonlWriter:
    """JSON Lines output."""

    def __init__(self, path: Path, state: dict[str, Any] | None) -> None:
        self.file = _AppendFile(path, state)

    def write(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.file.write(b"".join(json_line(row) for row in rows))

    def commit(self) -> dict[str, Any]:
        return self.file.commit()

    def finish(self) -> None:
        self.file.commit()
        self.file.close()

    def close(self) -> None:
        self.file.close()


class CsvWriter:
    """CSV/TSV output; the header is the first row's fields, and every later row must fit it."""

    def __init__(self, path: Path, state: dict[str, Any] | None, delimiter: str) -> None:
        self.file = _AppendFile(path, state)
        self.delimiter = delimiter
        self.fields: list[str] | None = state.get("fields") if state else None

    def write(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        lines = _LineBuffer()
        writer = csv.writer(lines, delimiter=self.delimiter, lineterminator="\n")
        if self.fields is None:
            self.fields = list(rows[0])
            writer.writerow(self.fields)
        for row in rows:
            extra = [name for name in row if name not in self.fields]
            if extra:
                raise InvalidRequestError(
                    f"a row has fields {extra} that the CSV header {self.fields} lacks (the first row sets "
                    "the header); write JSONL or Parquet for records with varying fields",
                    field="output",
                )
            writer.writerow([_csv_value(row.get(name)) for name in self.fields])
        self.file.write("".join(lines.parts).encode("utf-8", "backslashreplace"))

    def commit(self) -> dict[str, Any]:
        return {**self.file.commit(), "fields": self.fields}

    def finish(self) -> None:
        self.file.commit()
        self.file.close()

    def close(self) -> None:
        self.file.close()


class _LineBuffer:
    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, text: str) -> None:
        self.parts.append(text)


def _csv_value(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float)):
        return value
    return json.dumps(value, ensure_ascii=False, default=json_default)


class ParquetPartsWriter:
    """Parquet output. A Parquet file cannot be appended to after a crash (its footer comes last),
    so each commit writes one part file beside it; ``finish`` streams the parts into the file,
    one part in memory at a time, with their schemas unified (JSONL input infers types per chunk).
    """

    def __init__(self, path: Path, state: dict[str, Any] | None) -> None:
        self.pq = import_pyarrow()
        self.path = path
        self.parts_dir = path.with_name(path.name + ".parts")
        self.parts = int(state["parts"]) if state else 0
        self.rows: list[dict[str, Any]] = []
        if state is None:
            shutil.rmtree(self.parts_dir, ignore_errors=True)
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        for number in range(self.parts):
            if not self._part(number).is_file():
                raise ResumeMismatch(f"{self._part(number)} is missing")
        for stray in self.parts_dir.iterdir():
            if stray.name not in {self._part(n).name for n in range(self.parts)}:
                stray.unlink()

    def _part(self, number: int) -> Path:
        return self.parts_dir / f"part-{number:06d}.parquet"

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)

    def commit(self) -> dict[str, Any]:
        if self.rows:
            import pyarrow as pa

            try:
                table = pa.Table.from_pylist(self.rows)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise InvalidRequestError(
                    f"rows cannot be stored as Parquet ({exc}); write JSONL instead", field="output"
                ) from exc
            temporary = self._part(self.parts).with_suffix(".tmp")
            self.pq.write_table(table, temporary)
            os.replace(temporary, self._part(self.parts))
            self.parts += 1
            self.rows = []
        return {"parts": self.parts}

    def finish(self) -> None:
        import pyarrow as pa

        self.commit()
        files = [self._part(n) for n in range(self.parts)]
        schemas = [self.pq.read_schema(f) for f in files]
        schema = pa.unify_schemas(schemas, promote_options="permissive") if schemas else pa.schema([])
        with self.pq.ParquetWriter(self.path, schema) as writer:
            for part in files:
                writer.write_table(_conform(self.pq.read_table(part), schema))
        shutil.rmtree(self.parts_dir, ignore_errors=True)

    def close(self) -> None:
        self.rows = []


def _conform(table: Any, schema: Any) -> Any:
    """``table`` with ``schema``'s columns, in its order and types (absent columns as nulls)."""
    import pyarrow as pa

    present = set(table.column_names)
    columns = [table.column(f.name).cast(f.type) if f.name in present else pa.nulls(len(table), f.type) for f in schema]
    return pa.Table.from_arrays(columns, schema=schema)
