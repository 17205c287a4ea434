"""Moved to :mod:`dheera_local.score` (the folder is named after the ``dheera-local score`` command);
this re-export keeps ``from dheera_local.batch import ScoreJob, score_file`` working."""

from ..score import ScoreJob, ScoreReport, score_file

__all__ = ["ScoreJob", "ScoreReport", "score_file"]
