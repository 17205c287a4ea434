"""Fidelity as users feel it: does a system's precision change what a user sees, against fp32?

Per request (a query and its candidates), on the same pairs as the fp32 reference:

* nDCG@10 against NovelEval's graded judgments, with ``ir_measures`` (trec_eval's nDCG: linear
  gain, ties broken by document id), and its change against the reference's;
* Kendall tau of the scores against the reference's (``scipy.stats.kendalltau``): mean and min;
* top-10 overlap: the fewest documents that the two top-10s share over the requests (out of 10);
* max |Δ logit| over every pair.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.stats import kendalltau

if TYPE_CHECKING:
    from workloads import Workload


def ndcg_at_10(logits: list[list[float]], workload: Workload) -> float | None:
    """Mean nDCG@10 over the workload's judged requests; None without judgments or scores."""
    import ir_measures  # here, not at the top: the gpu section runs on machines that may lack it

    measure = ir_measures.nDCG @ 10
    qrels = [
        ir_measures.Qrel(request.query_id, doc_id, grade)
        for request in workload.requests
        for doc_id, grade in workload.qrels.get(request.query_id, {}).items()
    ]
    run = [
        ir_measures.ScoredDoc(request.query_id, doc_id, float(score))
        for request, scores in zip(workload.requests, logits, strict=False)
        for doc_id, score in zip(request.doc_ids, scores, strict=True)
    ]
    if not qrels or not run:
        return None
    return ir_measures.calc_aggregate([measure], qrels, run).get(measure)


def top(scores: list[float], k: int = 10) -> set[int]:
    # Set overlap of two top-k lists: no IR library measures one run against another run's top-k.
    return set(sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k])


def compare(logits: list[list[float]], reference: list[list[float]], workload: Workload) -> dict[str, Any]:
    """The fidelity fields of a row whose ``logits`` are judged against the fp32 ``reference``."""
    if len(logits) != len(reference) or any(len(a) != len(b) for a, b in zip(logits, reference, strict=True)):
        return {}
    pairs = list(zip(logits, reference, strict=True))
    taus = [float(kendalltau(mine, ref).statistic) for mine, ref in pairs]
    overlap = [len(top(mine) & top(ref)) for mine, ref in pairs]
    deltas = [float(np.abs(np.subtract(mine, ref)).max(initial=0.0)) for mine, ref in pairs]
    fields: dict[str, Any] = {
        "kendall_tau_mean": float(np.mean(taus)),  # numpy: a NaN tau (constant scores) shows, not hides
        "kendall_tau_min": float(np.min(taus)),
        "top10_overlap_min": min(overlap),
        "top10_size": min(10, min(len(ref) for ref in reference)),
        "max_abs_logit_diff": max(deltas),
    }
    mine, theirs = ndcg_at_10(logits, workload), ndcg_at_10(reference, workload)
    if mine is not None and theirs is not None:
        fields.update({"ndcg@10": mine, "ndcg@10_fp32": theirs, "ndcg@10_change": mine - theirs})
    return fields
