"""What one ``dheera-local score`` run is (:class:`ScoreJob`) and what it did (:class:`ScoreReport`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .._options import DEFAULT_OPTIONS, RerankOptions, build_options
from .io import FORMATS

DEFAULT_CHUNK_SIZE = 2048


@dataclass(frozen=True)
class ScoreJob:
    """One ``dheera-local score`` run.

    Args:
        model: As for :func:`dheera_local.rerank`.
        input: A ``.jsonl``/``.ndjson``, ``.csv``/``.tsv`` or ``.parquet`` file of pairs.
        output: Where the scored rows go; its extension picks the format.
        options: The engine options (backend, device, dtype, max_length, batch_tokens, cache, ...): a
            ``RerankOptions``, or a dict of ``rerank()`` keyword options (checked here, when the job is made).
        query_field, document_field: The fields holding the pair's texts.
        id_field: An optional field copied into error reports.
        rerank: Write each query's rows best first, with a 1-based ``rank``.
        errors: The bad-rows report (default ``<output>.errors.jsonl``).
        strict: Stop at the first bad row instead of reporting and skipping it.
        quiet: No progress bar or messages.
        chunk_size: Records per chunk (the unit of scoring, ordering and resuming).
        workers: Local worker processes (default: one per GPU when there are several, else one),
            or concurrent chunks for remote backends.
    """

    model: str
    input: Path
    output: Path
    options: RerankOptions = DEFAULT_OPTIONS
    query_field: str = "query"
    document_field: str = "document"
    id_field: str = "id"
    rerank: bool = False
    errors: Path | None = None
    strict: bool = False
    quiet: bool = False
    chunk_size: int = DEFAULT_CHUNK_SIZE
    workers: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.options, RerankOptions):  # a dict of keyword options: this is the edge
            object.__setattr__(self, "options", build_options(**self.options))

    @property
    def errors_path(self) -> Path:
        return self.errors or beside(self.output, ".errors.jsonl")

    @property
    def partial(self) -> Path:
        return beside(self.output, ".partial")

    @property
    def manifest(self) -> Path:
        return beside(self.output, ".progress.json")


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


def beside(path: Path, suffix: str) -> Path:
    """``path`` with ``suffix`` appended to its name (``out.jsonl`` -> ``out.jsonl.partial``)."""
    return path.with_name(path.name + suffix)


def line_word(job: ScoreJob) -> str:
    """What a record's number counts: lines of a text file, rows of a Parquet file."""
    return "row" if FORMATS.get(job.input.suffix.lower()) == "parquet" else "line"
