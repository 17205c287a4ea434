"""Offline scoring of pair files: ``dheera-local score`` on one machine (``dheera_local.ray`` for a cluster).

>>> from pathlib import Path
>>> from dheera_local.score import ScoreJob, score_file
>>> report = score_file(ScoreJob(model="BAAI/bge-reranker-v2-m3", input=Path("pairs.jsonl"),
...                              output=Path("scores.jsonl")))  # doctest: +SKIP
"""

import typing as _typing

from .job import ScoreJob, ScoreReport

if _typing.TYPE_CHECKING:  # what score_file is, for type checkers (it loads on first use)
    from .runner import score_file

__all__ = ["ScoreJob", "ScoreReport", "score_file"]


def __getattr__(name: str) -> object:
    # The engine (and with it httpx, torch when local) loads only when a run is asked for.
    if name == "score_file":
        from .runner import score_file

        return score_file
    raise AttributeError(f"module 'dheera_local.score' has no attribute {name!r}")


def __dir__() -> list[str]:
    # Its API only: not the submodules (job, io, ...) that importing it binds here.
    return sorted(__all__)
