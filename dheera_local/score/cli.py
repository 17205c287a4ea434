"""``dheera-local score``: the arguments and the command (the engine options come from :mod:`.._options`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .._errors import InvalidRequestError
from .._options import RerankOptions, add_engine_options, engine_options
from .job import DEFAULT_CHUNK_SIZE, ScoreJob, ScoreReport


def add_score_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``score`` command's options: its own, then the engine's (backend, device, dtype, ...)."""
    parser.add_argument("--model", required=True, help="huggingface/ORG/NAME, ORG/NAME or a model folder")
    # Strings, not Paths: with --engine ray they may be URLs (Path("s3://b/k") drops a slash).
    parser.add_argument("--input", required=True, help="pairs: .jsonl, .csv, .tsv or .parquet")
    parser.add_argument(
        "--output", required=True,
        help="scored rows, format by extension (with --engine ray: a folder of Parquet files)",
    )  # fmt: skip
    parser.add_argument("--query-field", default="query", help="field holding the query (default: query)")
    parser.add_argument("--document-field", default="document", help="field holding the document")
    parser.add_argument("--id-field", default="id", help="optional id field, copied into error reports")
    parser.add_argument("--rerank", action="store_true", help="write each query's rows best first, with rank")
    parser.add_argument("--errors", type=Path, help="bad-row report (default: OUTPUT.errors.jsonl)")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad row instead of skipping it")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    parser.add_argument(
        "--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE,
        help=f"records per chunk: the unit of scoring and of resuming (default {DEFAULT_CHUNK_SIZE})",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int,
        help="local worker processes (default: one per GPU), or concurrent chunks for a remote backend; "
        "with --engine ray, the actor pool size",
    )  # fmt: skip
    parser.add_argument("--engine", choices=("local", "ray"), default="local", help="this machine, or a Ray cluster")
    add_engine_options(parser, exclude=("raw_scores",))  # the output has both the score and the logit


def run_score(args: argparse.Namespace) -> int:
    """Run ``dheera-local score``; returns the exit status."""
    options = engine_options(args)
    if args.engine == "ray":
        return _run_on_ray(args, options)
    job = ScoreJob(
        model=args.model, input=Path(args.input), output=Path(args.output), options=options,
        query_field=args.query_field, document_field=args.document_field, id_field=args.id_field,
        rerank=args.rerank, errors=args.errors, strict=args.strict, quiet=args.quiet,
        chunk_size=args.chunk_size, workers=args.workers,
    )  # fmt: skip
    from .runner import score_file  # the engine only when scoring, not to build the parser

    report = score_file(job, notify=None if args.quiet else _say)
    if not args.quiet:
        _say(_summary(report))
    return 0


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _summary(report: ScoreReport) -> str:
    fresh = report.rows + report.bad_rows - report.resumed_from
    rate = fresh / report.seconds if report.seconds > 0 else 0.0
    text = (
        f"scored {report.rows} pairs into {report.output} in {report.seconds:.1f}s "
        f"({rate:.0f} pairs/s; {report.cache_hits} from the cache; {report.workers})"
    )
    if report.bad_rows:
        text += f"; skipped {report.bad_rows} bad rows, listed in {report.errors}"
    return text


def _run_on_ray(args: argparse.Namespace, options: RerankOptions) -> int:
    if args.rerank:
        raise InvalidRequestError("--rerank is not available with --engine ray; rank the scored rows afterwards")
    from ..ray import run_pipeline

    try:
        written = run_pipeline(
            args.input, args.output, args.model, query_field=args.query_field, document_field=args.document_field,
            actors=args.workers, batch_size=args.chunk_size, bad_rows="raise" if args.strict else "mark",
            options=options,
        )  # fmt: skip
    except ImportError as exc:
        raise InvalidRequestError(str(exc), field="engine") from exc
    if not args.quiet:
        _say(f"scored {written} pairs into {args.output} (a folder of Parquet files) on Ray")
    return 0
