"""Benchmark workloads from NovelEval-2306 (read from --dataset; never copied into the repo).

* ``single``: one query against 100 passages of mixed length (20 to 400 words).
* ``batch``: every query against its 20 candidate passages (21 requests, 420 pairs).
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_DATASET = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "noveleval"


@dataclass
class Request:
    """One rerank call: a query and its documents (with NovelEval ids for nDCG)."""

    query_id: str
    query: str
    doc_ids: list[str]
    documents: list[str]


@dataclass
class Workload:
    name: str
    description: str
    requests: list[Request]
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [(r.query, d) for r in self.requests for d in r.documents]


@dataclass
class NovelEval:
    queries: dict[str, str]
    corpus: dict[str, str]
    qrels: dict[str, dict[str, int]]


def load_noveleval(folder: Path) -> NovelEval:
    """Read queries.tsv, corpus.tsv and qrels.txt (TREC format)."""
    if not (folder / "corpus.tsv").is_file():
        raise SystemExit(f"NovelEval not found at {folder}: pass --dataset PATH (the folder with corpus.tsv)")
    csv.field_size_limit(10**7)
    queries = {row[0]: "\t".join(row[1:]) for row in _tsv(folder / "queries.tsv")}
    # A passage may hold tabs itself (14-17: a table of footballers' wages): the text is every field after the id.
    corpus = {row[0]: "\t".join(row[1:]) for row in _tsv(folder / "corpus.tsv")}
    qrels: dict[str, dict[str, int]] = {}
    for line in (folder / "qrels.txt").read_text().splitlines():
        parts = line.split()
        if len(parts) == 4:
            qrels.setdefault(parts[0], {})[parts[2]] = int(parts[3])
    return NovelEval(queries, corpus, qrels)


def _tsv(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return [row for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE) if len(row) >= 2]


def single_query(data: NovelEval, documents: int = 100, seed: int = 0) -> Workload:
    """One query against ``documents`` passages of 20 to 400 words, shuffled (mixed lengths)."""
    pool = [(i, text) for i, text in data.corpus.items() if 20 <= len(text.split()) <= 400]
    random.Random(seed).shuffle(pool)
    chosen = pool[:documents]
    query_id = next(iter(data.queries))
    request = Request(query_id, data.queries[query_id], [i for i, _ in chosen], [t for _, t in chosen])
    return Workload("single", f"1 query x {len(chosen)} mixed-length passages (20-400 words)", [request])


def batch_of_queries(data: NovelEval, queries: int | None = None) -> Workload:
    """Each query against its own candidates (NovelEval's 20 Google results per query)."""
    requests = []
    for query_id, query in list(data.queries.items())[:queries]:
        doc_ids = sorted(data.qrels.get(query_id, {}), key=lambda d: int(d.split("-")[-1]))
        requests.append(Request(query_id, query, doc_ids, [data.corpus[d] for d in doc_ids]))
    pairs = sum(len(r.documents) for r in requests)
    return Workload("batch", f"{len(requests)} queries x their candidates ({pairs} pairs)", requests, data.qrels)
