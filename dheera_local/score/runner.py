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

import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from .._engine.orchestrator import Reranker
from .._errors import InvalidRequestError, LocalBackendError
from .io import Record, count_records, file_format, input_columns, read_records
from .job import ScoreJob, ScoreReport, beside, line_word
from .resume import Files, job_key, load_manifest, open_files, save_manifest
from .rows import pair_of
from .sinks import RankedSink, Sink
from .workers import ChunkResult, Engine, Pool, open_pool


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
    engine = Engine(job.model, job.options)
    with Reranker() as reranker:
        key = job_key(job, engine.plan(reranker).identity)
        resume = load_manifest(job, key)
        files = open_files(job, out_format, resume)
        if files.resumed_from and notify:
            notify(f"resuming {job.output}: {files.resumed_from} records already done")
        report = ScoreReport(job.output, resumed_from=files.resumed_from)
        pool: Pool | None = None
        try:
            pool = open_pool(engine, reranker, job.workers)
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
    for name, value in (("chunk-size", job.chunk_size),):
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


@dataclass
class _Chunk:
    records: list[Record]
    pairs: list[tuple[str, str]]
    problems: dict[int, str]  # record index -> why it is bad
    result: Future[ChunkResult] = field(default_factory=Future)


def _run(job: ScoreJob, in_format: str, pool: Pool, files: Files, key: str, report: ScoreReport) -> None:
    sink = RankedSink(job, files) if job.rerank else Sink(job, files)
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
        f"{job.input} {line_word(job)} {record.line}: {chunk.problems[record.index]} (--strict stops at the "
        f"first bad row; without it bad rows are reported in {job.errors_path} and skipped)",
        field="input",
        index=record.index,
    )


def _complete(job: ScoreJob, chunk: _Chunk, sink: Sink, files: Files, key: str, bar: Any) -> None:
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
    save_manifest(job, key, sink.position(chunk.records[-1].index + 1), files)
    if bar is not None:
        bar.update(len(chunk.records))


def _progress_bar(job: ScoreJob, in_format: str, start: int) -> Any:
    if job.quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    total = count_records(job.input, in_format)
    # Whole counts (unit_scale would print 10.0/40.0) and always pairs per second (tqdm inverts a rate
    # under 1 into s/pair, which reads as a different unit).
    bar_format = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_noinv_fmt}]"
    return tqdm(total=total, initial=start, unit=" pairs", file=sys.stderr, smoothing=0.1, desc="scoring",
                dynamic_ncols=True, bar_format=bar_format)  # fmt: skip


def _finish(job: ScoreJob, files: Files, report: ScoreReport) -> None:
    """Complete the files, then rename: the errors file first, the output last (the output's
    presence means the run is whole), and drop the manifest."""
    files.output.finish()
    files.errors.finish()
    errors_partial = beside(job.errors_path, ".partial")
    if files.bad_rows:
        os.replace(errors_partial, job.errors_path)
        report.errors = job.errors_path
    else:
        errors_partial.unlink(missing_ok=True)
        job.errors_path.unlink(missing_ok=True)  # a stale report from an earlier run would mislead
    os.replace(job.partial, job.output)
    job.manifest.unlink(missing_ok=True)
