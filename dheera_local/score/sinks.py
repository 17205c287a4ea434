"""Where scored records go, in input order: :class:`Sink` (row by row) and :class:`RankedSink`
(``--rerank``: each query's rows best first, with ranks); bad records go to the errors file."""

from __future__ import annotations

import hashlib
from typing import Any

from .._errors import InvalidRequestError
from .io import Record
from .job import ScoreJob, line_word
from .resume import Files
from .rows import pair_of, scored_row


class Sink:
    """Writes each record's output row (or its error report) in input order."""

    def __init__(self, job: ScoreJob, files: Files) -> None:
        self.job = job
        self.files = files

    def seen_before_resume(self, record: Record) -> None:
        """A record the interrupted run already handled."""

    def add(self, record: Record, problem: str | None, logit: float | None) -> None:
        if problem is not None:
            self._error(record, problem)
        else:
            assert record.fields is not None and logit is not None
            self.files.output.write([scored_row(record.fields, logit, self.job.options)])
            self.files.written += 1

    def position(self, end: int) -> int:
        """Records fully handled (written or reported) once the chunk ending at ``end`` is added."""
        return end

    def finish(self) -> None:
        """Write whatever is still held back."""

    def _error(self, record: Record, problem: str) -> None:
        report: dict[str, Any] = {line_word(self.job): record.line, "error": problem}
        if record.fields is not None and self.job.id_field in record.fields:
            report["id"] = record.fields[self.job.id_field]
        report["record"] = record.fields if record.fields is not None else record.raw
        self.files.errors.write([report])
        self.files.bad_rows += 1


class RankedSink(Sink):
    """``--rerank``: gathers each query's rows (they must be contiguous) and writes them best first.

    The committed position is the first record of the query still being gathered, so a resumed run
    re-reads that query's rows (their scores come from the cache) and never writes half a query.
    Bad rows are held back with it, so they are reported exactly once.
    """

    def __init__(self, job: ScoreJob, files: Files) -> None:
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
            rows.append({**scored_row(record.fields, logit, self.job.options), "rank": rank})
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


def _digest(query: str) -> bytes:
    return hashlib.blake2b(query.encode("utf-8"), digest_size=12).digest()
