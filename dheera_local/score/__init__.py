"""Offline scoring of pair files: ``dheera-local score`` on one machine (``dheera_local.ray`` for a cluster).

>>> from pathlib import Path
>>> from dheera_local.score import ScoreJob, score_file
>>> report = score_file(ScoreJob(model="BAAI/bge-reranker-v2-m3", input=Path("pairs.jsonl"),
...                              output=Path("scores.jsonl")))  # doctest: +SKIP
"""

from typing import Any

from .job import ScoreJob, ScoreReport

__all__ = ["ScoreJob", "ScoreReport", "score_file"]


def __getattr__(name: str) -> Any:
    # The engine (and with it httpx, torch when local) loads only when a run is asked for.
    if name == "score_file":
        from .runner import score_file

        return score_file
    raise AttributeError(f"module 'dheera_local.score' has no attribute {name!r}")
