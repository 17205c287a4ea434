"""Resuming an interrupted run: the manifest beside the output, and the partial files it commits.

After every chunk the written rows are fsynced and ``<output>.progress.json`` (a hash of the
arguments, the records handled, each file's commit state) is replaced atomically. A rerun with the
same arguments reopens the partial files at the last commit and carries on from there.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from .._models.identity import ModelIdentity
from .._options import numerics_fields
from .io import ResumeMismatch, Writer, open_writer
from .job import ScoreJob, beside

MANIFEST_VERSION = 1
LEGACY_ENGINE_KEYS = ("backend", "api_base", "dtype")


def job_key(job: ScoreJob, identity: ModelIdentity) -> str:
    """What must not change between an interrupted run and its resumption: the files, the model, and every
    option that changes the scores (:func:`numerics_fields`; ``device``, ``cache``, ... may change)."""
    stat = job.input.stat()
    numerics = numerics_fields(job.options)
    fields = {
        "version": MANIFEST_VERSION,
        "input": [str(job.input.resolve()), stat.st_size, stat.st_mtime_ns],
        "output": str(job.output.resolve()),
        "errors": str(job.errors_path.resolve()),
        "model": [identity.model_id, identity.revision, identity.max_length],
        "fields": [job.query_field, job.document_field, job.id_field],
        "rerank": job.rerank,
        # The three options keyed before all were, spelled as then (a run interrupted under an older version
        # still resumes); every other one is keyed when it differs from its default.
        "engine": [numerics.pop(name) for name in LEGACY_ENGINE_KEYS],
    }
    defaults = numerics_fields(type(job.options)())
    changed = {name: value for name, value in numerics.items() if value != defaults[name]}
    if changed:
        fields["options"] = changed
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Files:
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


def load_manifest(job: ScoreJob, key: str) -> dict[str, Any] | None:
    try:
        manifest = json.loads(job.manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("key") != key:
        return None
    return manifest


def open_files(job: ScoreJob, out_format: str, resume: dict[str, Any] | None) -> Files:
    """Reopen the partial files where the manifest says, or (no usable manifest) start afresh."""
    errors_partial = beside(job.errors_path, ".partial")
    if resume is not None:
        output = errors = None
        try:
            output = open_writer(job.partial, out_format, resume["output"])
            errors = open_writer(errors_partial, "jsonl", resume["errors"])
            counts = resume["counts"]
            return Files(output, errors, int(resume["position"]), int(counts["written"]),
                          int(counts["bad_rows"]), int(counts["cache_hits"]))  # fmt: skip
        except (ResumeMismatch, KeyError, ValueError, TypeError):
            for writer in (output, errors):  # the partial files are not what was recorded: start over
                if writer is not None:
                    writer.close()
    job.manifest.unlink(missing_ok=True)
    return Files(open_writer(job.partial, out_format), open_writer(errors_partial, "jsonl"))


def save_manifest(job: ScoreJob, key: str, position: int, files: Files) -> None:
    manifest = {
        "key": key,
        "position": position,
        "output": files.output.commit(),
        "errors": files.errors.commit(),
        "counts": {"written": files.written, "bad_rows": files.bad_rows, "cache_hits": files.cache_hits},
    }
    temporary = beside(job.manifest, ".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        json.dump(manifest, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, job.manifest)
