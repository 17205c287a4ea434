"""The streaming scorer behind ``dheera-local score``: a pair file in, the same rows with scores out.

read records -> chunks of ``chunk_size`` records (boundaries at fixed record indices) -> a worker
pool scores each chunk through ``Reranker.score_pairs`` -> results collected in input order ->
rows (or, with ``rerank``, each query's rows ranked) appended to ``<output>.partial`` -> commit.

Memory stays flat: at most ``2 x workers`` chunks are in flight (plus, with ``rerank``, the rows
of the query being gathered). After every chunk the written rows are fsynced and a manifest
(``<output>.progress.json``: a hash of the arguments, the records handled, each file's commit
state) is replaced atomically. A rerun with the same arguments checks the manifest and the tail of
the partial file, truncates what was written after the last commit, and carries on from there;
pairs scored but not committed are in the disk cache and cost nothing. The partial file is
renamed to the output only when complete, so a file at the output path is always a whole run.
Chunk boundaries do not move on resume, so a resumed run writes the same bytes as an
uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._cache import ModelIdentity
from .._errors import InvalidRequestError, LocalBackendError
from .._orchestrator import sigmoid
from .._request import check_text
from .io import Record, ResumeMismatch, Writer, count_records, file_format, input_columns, open_writer, read_records
from .workers import ChunkResult, Engine, Pool, open_pool

DEFAULT_CHUNK_SIZE = 2048
MANIFEST_VERSION = 1
SCORE_FIELDS = ("relevance_score", "logit")


@dataclass(frozen=True)
class ScoreJob:
    """One ``dheera-local score`` run.

    Args:
        model: As for :func:`dheera_local.rerank`.
        input: A ``.jsonl``/``.ndjson``, ``.csv``/``.tsv`` or ``.parquet`` file of pairs.
        output: Where the scored rows go; its extension picks the format.
        options: ``rerank()`` keyword options (backend, device, dtype, max_length, cache, ...).
        query_field, document_field: The fields holding the pair's texts.
        id_field: An optional field copied into error reports.
        rerank: Write each query's rows best first, with a 1-based ``rank``.
        errors: The bad-rows report (default ``<output>.errors.jsonl``).
        strict: Stop at the first bad row instead of reporting and skipping it.
        quiet: No progress bar or messages.
        chunk_size: Records per chunk (the unit of scoring, ordering and resuming).
        batch_tokens: Padded tokens per forward pass of the local backend (default: per device).
        workers: Local worker processes (default: one per GPU when there are several, else one),
            or concurrent chunks for remote backends.
    """

    model: str
    input: Path
    output: Path
    options: dict[str, Any] = field(default_factory=dict)
    query_field: str = "query"
    document_field: str = "document"
    id_field: str = "id"
    rerank: bool = False
    errors: Path | None = None
    strict: bool = False
    quiet: bool = False
    chunk_size: int = DEFAULT_CHUNK_SIZE
    batch_tokens: int | None = None
    workers: int | None = None

    @property
    def errors_path(self) -> Path:
        return self.errors or _beside(self.output, ".errors.jsonl")

    @property
    def partial(self) -> Path:
        return _beside(self.output, ".partial")

    @property
    def manifest(self) -> Path:
        return _beside(self.output, ".progress.json")


@dataclass
class ScoreReport:
    """What a run did. Counts include the rows written before a resume."""

    output: Path
    rows: int = 0
    bad_rows: int = 0
    cache_hits: int = 0
    resumed_from: int = 0
    seconds: float = 0.0
    errors: Path | None = None
    workers: str = ""


def _beside(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def score_file(job: ScoreJob, notify: Callable[[str], None] | None = None) -> ScoreReport:
    """Run ``job``: score every pair of its input into its output (resuming an interrupted run).

    Args:
        job: What to score, where to write, how.
        notify: Called with one-line messages worth showing a user (a resumed run says so).

    Returns:
        The counts of the whole run, rows written before a resume included.

    Raises:
        InvalidRequestError: Bad arguments, a missing column, or (``strict``) a bad row.
        ModelNotAvailableError, AllBackendsFailedError: As for :func:`dheera_local.rerank`.
    """
    started = time.perf_counter()
    in_format, out_format = _validate(job)
    engine = Engine(job.model, job.options, job.batch_tokens)
    key = _job_key(job, engine.plan().identity)
    resume = _load_manifest(job, key)
    files = _open_files(job, out_format, resume)
    if files.resumed_from and notify:
        notify(f"resuming {job.output}: {files.resumed_from} records already done")
    report = ScoreReport(job.output, resumed_from=files.resumed_from)
    pool: Pool | None = None
    try:
        pool = open_pool(engine, job.workers)
        report.workers = pool.description
        _run(job, in_format, pool, files, key, report)
        _finish(job, files, report)
    finally:
        if pool is not None:
            pool.close()
        files.close()
    report.seconds = time.perf_counter() - started
    return report


def _validate(job: ScoreJob) -> tuple[str, str]:
    in_format, out_format = file_format(job.input, "input"), file_format(job.output, "output")
    if not job.input.is_file():
        raise InvalidRequestError(f"--input {job.input} is not a file", field="input")
    if job.output.resolve() == job.input.resolve():
        raise InvalidRequestError("--output must differ from --input", field="output")
    for name, value in (("chunk-size", job.chunk_size), ("batch-tokens", job.batch_tokens or 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidRequestError(f"--{name} must be an integer >= 1, got {value!r}", field=name)
    if not job.query_field or not job.document_field or job.query_field == job.document_field:
        raise InvalidRequestError("--query-field and --document-field must be two different names", field="fields")
    columns = input_columns(job.input, in_format)
    for name, flag in ((job.query_field, "--query-field"), (job.document_field, "--document-field")):
        if columns is not None and name not in columns:
            raise InvalidRequestError(
                f"{job.input} has no column {name!r} (columns: {', '.join(columns)}); name the right one with {flag}",
                field="input",
            )
    return in_format, out_format


def _job_key(job: ScoreJob, identity: ModelIdentity) -> str:
    """What must not change between an interrupted run and its resumption."""
    stat = job.input.stat()
    options = job.options
    fields = {
        "version": MANIFEST_VERSION,
        "input": [str(job.input.resolve()), stat.st_size, stat.st_mtime_ns],
        "output": str(job.output.resolve()),
        "errors": str(job.errors_path.resolve()),
        "model": [identity.model_id, identity.revision, identity.max_length],
        "fields": [job.query_field, job.document_field, job.id_field],
        "rerank": job.rerank,
        "engine": [options.get("backend"), options.get("api_base"), options.get("dtype")],
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


# -- resume state -------------------------------------------------------------------------------


@dataclass
class _Files:
    """The partial output and errors files, and where the run (re)starts."""

    output: Writer
    errors: Writer
    resumed_from: int = 0
    written: int = 0
    bad_rows: int = 0
    cache_hits: int = 0

    def close(self) -> None:
        self.output.close()
        self.errors.close()


def _load_manifest(job: ScoreJob, key: str) -> dict[str, Any] | None:
    try:
        manifest = json.loads(job.manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("key") != key:
        return None
    return manifest


def _open_files(job: ScoreJob, out_format: str, resume: dict[str, Any] | None) -> _Files:
    """Reopen the partial files where the manifest says, or (no usable manifest) start afresh."""
    errors_partial = _beside(job.errors_path, ".partial")
    if resume is not None:
        output = errors = None
        try:
            output = open_writer(job.partial, out_format, resume["output"])
            errors = open_writer(errors_partial, "jsonl", resume["errors"])
            counts = resume["counts"]
            return _Files(output, errors, int(resume["position"]), int(counts["written"]),
                          int(counts["bad_rows"]), int(counts["cache_hits"]))  # fmt: skip
        except (ResumeMismatch, KeyError, ValueError, TypeError):
            for writer in (output, errors):  # the partial files are not what was recorded: start over
                if writer is not None:
                    writer.close()
    job.manifest.unlink(missing_ok=True)
    return _Files(open_writer(job.partial, out_format), open_writer(errors_partial, "jsonl"))


def _save_manifest(job: ScoreJob, key: str, position: int, files: _Files) -> None:
    manifest = {
        "key": key,
        "position": position,
        "output": files.output.commit(),
        "errors": files.errors.commit(),
        "counts": {"written": files.written, "bad_rows": files.bad_rows, "cache_hits": files.cache_hits},
    }
    temporary = _beside(job.manifest, ".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        json.dump(manifest, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, job.manifest)


# -- the scoring loop -----------------------------------------------------------------------------


@dataclass
class _Chunk:
    records: list[Record]
    pairs: list[tuple[str, str]]
    problems: dict[int, str]  # record index -> why it is bad
    result: Future[ChunkResult] = field(default_factory=Future)


def _run(job: ScoreJob, in_format: str, pool: Pool, files: _Files, key: str, report: ScoreReport) -> None:
    sink = _RankedSink(job, files) if job.rerank else _Sink(job, files)
    records = read_records(job.input, in_format)
    for record in _skip(records, files.resumed_from):
        sink.seen_before_resume(record)
    bar = _progress_bar(job, in_format, files.resumed_from)
    in_flight: deque[_Chunk] = deque()
    try:
        for chunk_records in _chunks(records, job.chunk_size):
            chunk = _prepare(job, chunk_records)
            if job.strict and chunk.problems:
                while in_flight:  # keep the work done before the bad row
                    _complete(job, in_flight.popleft(), sink, files, key, bar)
                raise _strict_error(job, chunk)
            chunk.result = pool.submit(chunk.pairs)
            in_flight.append(chunk)
            while len(in_flight) > pool.size * 2 or (in_flight and in_flight[0].result.done()):
                _complete(job, in_flight.popleft(), sink, files, key, bar)
        while in_flight:
            _complete(job, in_flight.popleft(), sink, files, key, bar)
        sink.finish()
    finally:
        for chunk in in_flight:
            chunk.result.cancel()
        if bar is not None:
            bar.close()
    report.rows, report.bad_rows, report.cache_hits = files.written, files.bad_rows, files.cache_hits


def _skip(records: Iterator[Record], count: int) -> Iterator[Record]:
    """The first ``count`` records (already handled by the interrupted run)."""
    for _ in range(count):
        record = next(records, None)
        if record is None:
            return
        yield record


def _chunks(records: Iterator[Record], size: int) -> Iterator[list[Record]]:
    """Chunks ending at record indices that are multiples of ``size``, wherever the run resumed."""
    chunk: list[Record] = []
    for record in records:
        chunk.append(record)
        if (record.index + 1) % size == 0:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _prepare(job: ScoreJob, records: list[Record]) -> _Chunk:
    """The chunk's pairs, and why each of its bad records is bad."""
    pairs, problems = [], {}
    for record in records:
        pair = pair_of(record, job.query_field, job.document_field)
        if isinstance(pair, str):
            problems[record.index] = pair
        else:
            pairs.append(pair)
    return _Chunk(records, pairs, problems)


def _strict_error(job: ScoreJob, chunk: _Chunk) -> InvalidRequestError:
    record = next(record for record in chunk.records if record.index in chunk.problems)
    return InvalidRequestError(
        f"{job.input} {_line_word(job)} {record.line}: {chunk.problems[record.index]} (--strict stops at the "
        f"first bad row; without it bad rows are reported in {job.errors_path} and skipped)",
        field="input",
        index=record.index,
    )


def pair_of(record: Record, query_field: str, document_field: str) -> tuple[str, str] | str:
    """The record's (query, document), or why it has none."""
    if record.problem is not None or record.fields is None:
        return record.problem or "not a record"
    texts = []
    for name in (query_field, document_field):
        value = record.fields.get(name)
        problem = text_problem(name, value, present=name in record.fields)
        if problem is not None:
            return problem
        texts.append(value)
    for name, value in record.fields.items():  # the output copies every field: all must be writable
        if isinstance(value, str) and name not in (query_field, document_field):
            try:
                check_text(value, f"field {name!r}")
            except InvalidRequestError as exc:
                return str(exc)
    return texts[0], texts[1]


def text_problem(name: str, value: object, present: bool = True) -> str | None:
    """Why ``value`` cannot be the text of field ``name`` (missing, null, not a string, empty), or None."""
    if not present:
        return f"field {name!r} is missing"
    if value is None or (isinstance(value, float) and value != value):  # NaN: a missing value in pandas
        return f"field {name!r} is null"
    if not isinstance(value, str):
        return f"field {name!r} must be a string, got {type(value).__name__}"
    if not value.strip():
        return f"field {name!r} is empty"
    try:
        check_text(value, f"field {name!r}")
    except InvalidRequestError as exc:
        return str(exc)
    return None


def _complete(job: ScoreJob, chunk: _Chunk, sink: _Sink, files: _Files, key: str, bar: Any) -> None:
    try:
        result = chunk.result.result()
    except BrokenProcessPool as exc:
        raise LocalBackendError(
            f"a scoring worker process died ({exc}); it may have run out of memory. Rerun the same command "
            "to resume, with fewer --workers or a smaller --batch-tokens"
        ) from exc
    files.cache_hits += result.cache_hits
    logits = iter(result.logits)
    for record in chunk.records:
        problem = chunk.problems.get(record.index)
        sink.add(record, problem, None if problem else next(logits))
    _save_manifest(job, key, sink.position(chunk.records[-1].index + 1), files)
    if bar is not None:
        bar.update(len(chunk.records))


def _progress_bar(job: ScoreJob, in_format: str, start: int) -> Any:
    if job.quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    total = count_records(job.input, in_format)
    return tqdm(total=total, initial=start, unit="pair", unit_scale=True, file=sys.stderr, smoothing=0.1,
                desc="scoring", dynamic_ncols=True)  # fmt: skip


# -- output -------------------------------------------------------------------------------------


class _Sink:
    """Writes each record's output row (or its error report) in input order."""

    def __init__(self, job: ScoreJob, files: _Files) -> None:
        self.job = job
        self.files = files

    def seen_before_resume(self, record: Record) -> None:
        """A record the interrupted run already handled."""

    def add(self, record: Record, problem: str | None, logit: float | None) -> None:
        if problem is not None:
            self._error(record, problem)
        else:
            assert record.fields is not None and logit is not None
            self.files.output.write([scored_row(record.fields, logit)])
            self.files.written += 1

    def position(self, end: int) -> int:
        """Records fully handled (written or reported) once the chunk ending at ``end`` is added."""
        return end

    def finish(self) -> None:
        """Write whatever is still held back."""

    def _error(self, record: Record, problem: str) -> None:
        report: dict[str, Any] = {_line_word(self.job): record.line, "error": problem}
        if record.fields is not None and self.job.id_field in record.fields:
            report["id"] = record.fields[self.job.id_field]
        report["record"] = record.fields if record.fields is not None else record.raw
        self.files.errors.write([report])
        self.files.bad_rows += 1


def _line_word(job: ScoreJob) -> str:
    """What a record's number counts: lines of a text file, rows of a Parquet file."""
    return "row" if file_format(job.input, "input") == "parquet" else "line"


def scored_row(fields: dict[str, Any], logit: float) -> dict[str, Any]:
    """The input fields plus ``relevance_score`` (sigmoid of the logit) and ``logit``."""
    return {**fields, "relevance_score": sigmoid(logit), "logit": logit}


class _RankedSink(_Sink):
    """``--rerank``: gathers each query's rows (they must be contiguous) and writes them best first.

    The committed position is the first record of the query still being gathered, so a resumed run
    re-reads that query's rows (their scores come from the cache) and never writes half a query.
    Bad rows are held back with it, so they are reported exactly once.
    """

    def __init__(self, job: ScoreJob, files: _Files) -> None:
        super().__init__(job, files)
        self.query: str | None = None
        self.group: list[tuple[Record, float]] = []
        self.group_start = files.resumed_from
        self.held_errors: list[tuple[Record, str]] = []
        self.closed: set[bytes] = set()

    def seen_before_resume(self, record: Record) -> None:
        pair = pair_of(record, self.job.query_field, self.job.document_field)
        if not isinstance(pair, str):
            self.closed.add(_digest(pair[0]))

    def add(self, record: Record, problem: str | None, logit: float | None) -> None:
        if problem is not None:
            self.held_errors.append((record, problem))
            return
        assert record.fields is not None and logit is not None
        query = record.fields[self.job.query_field]
        if query != self.query:
            self._close_group()
            if _digest(query) in self.closed:
                raise InvalidRequestError(
                    f"--rerank needs each query's rows together, but the query on line {record.line} of "
                    f"{self.job.input} ({query[:60]!r}) also appears earlier, before other queries. Sort the "
                    "input by query, or score without --rerank and rank afterwards",
                    field="input",
                )
            self.query, self.group_start = query, record.index
        self.group.append((record, logit))

    def position(self, end: int) -> int:
        position = self.group_start if self.group else end
        self._release_errors(position)
        return position

    def finish(self) -> None:
        self._close_group()
        self._release_errors(None)

    def _close_group(self) -> None:
        if not self.group:
            return
        ranked = sorted(self.group, key=lambda item: (-item[1], item[0].index))
        rows = []
        for rank, (record, logit) in enumerate(ranked, start=1):
            assert record.fields is not None
            rows.append({**scored_row(record.fields, logit), "rank": rank})
        self.files.output.write(rows)
        self.files.written += len(rows)
        assert self.query is not None
        self.closed.add(_digest(self.query))
        self.query, self.group = None, []

    def _release_errors(self, before: int | None) -> None:
        keep = []
        for record, problem in self.held_errors:
            if before is None or record.index < before:
                self._error(record, problem)
            else:
                keep.append((record, problem))
        self.held_errors = keep


def _digest(query: str) -> bytes:
    return hashlib.blake2b(query.encode("utf-8"), digest_size=12).digest()


def _finish(job: ScoreJob, files: _Files, report: ScoreReport) -> None:
    """Complete the files, then rename: the errors file first, the output last (the output's
    presence means the run is whole), and drop the manifest."""
    files.output.finish()
    files.errors.finish()
    errors_partial = _beside(job.errors_path, ".partial")
    if files.bad_rows:
        os.replace(errors_partial, job.errors_path)
        report.errors = job.errors_path
    else:
        errors_partial.unlink(missing_ok=True)
        job.errors_path.unlink(missing_ok=True)  # a stale report from an earlier run would mislead
    os.replace(job.partial, job.output)
    job.manifest.unlink(missing_ok=True)
