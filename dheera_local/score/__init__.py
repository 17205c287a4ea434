"""Offline scoring of pair files: ``dheera-local score`` on one machine (``dheera_local.ray`` for a cluster).

>>> from pathlib import Path
>>> from dheera_local.score import ScoreJob, score_file
>>> report = score_file(ScoreJob(model="BAAI/bge-reranker-v2-m3", input=Path("pairs.jsonl"),
...                              output=Path("scores.jsonl")))  # doctest: +SKIP
"""

from .runner import ScoreJob, ScoreReport, score_file

__all__ = ["ScoreJob", "ScoreReport", "score_file"]
