"""``dheera-local score`` on one machine: formats, scores, ranking, bad rows, several workers.

The 10,000-pair runs use the tiny BERT model in float32. The JSONL run scores every pair for real
and is compared with ``Reranker().score_pairs`` on the same pairs; the CSV and Parquet runs read a
score cache that this reference filled, so they check the formats and that each row gets its
own pair's score, in input order.
"""

from __future__ import annotations

import csv
import io
import json
import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import dheera_local
from dheera_local import Reranker
from dheera_local._engine.orchestrator import sigmoid
from dheera_local.cli import main
from dheera_local.testing.models import WORDS

N_PAIRS = 10_000
FLOAT32 = ["--dtype", "float32", "--device", "cpu"]


def make_rows(count: int, seed: int = 0, queries: int | None = None) -> list[dict]:
    """Distinct short pairs with ids; ``queries`` groups consecutive rows under that many queries."""
    rng = random.Random(seed)
    shared = [" ".join(rng.choices(WORDS, k=4)) for _ in range(queries or 0)]
    rows = []
    for i in range(count):
        query = shared[i * len(shared) // count] if shared else " ".join(rng.choices(WORDS, k=5))
        rows.append({"id": i, "query": query, "document": f"{i} " + " ".join(rng.choices(WORDS, k=10))})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def score(*args: str | Path) -> int:
    return main(["score", *map(str, args)])


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return make_rows(N_PAIRS)


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("warm-cache")


@pytest.fixture(scope="module")
def reference(tiny_bert: Path, rows: list[dict], warm_cache: Path) -> list[float]:
    """Logits from the orchestrator in one call (this also fills ``warm_cache``)."""
    pairs = [(row["query"], row["document"]) for row in rows]
    scores = Reranker().score_pairs(str(tiny_bert), pairs, dtype="float32", device="cpu", cache_dir=warm_cache)
    return scores.logits


def test_jsonl_10k_pairs_keep_their_fields_and_get_the_orchestrators_scores(
    tmp_path: Path, tiny_bert: Path, rows: list[dict], reference: list[float]
) -> None:
    source = write_jsonl(tmp_path / "pairs.jsonl", rows)
    output = tmp_path / "scores.jsonl"
    assert score("--model", tiny_bert, "--input", source, "--output", output, "--no-cache", "-q", *FLOAT32) == 0
    written = read_jsonl(output)
    assert len(written) == N_PAIRS
    for row, out, logit in zip(rows, written, reference, strict=True):
        assert list(out) == ["id", "query", "document", "relevance_score", "logit"]
        assert {k: out[k] for k in row} == row
        assert out["logit"] == pytest.approx(logit, abs=1e-6)
        assert out["relevance_score"] == sigmoid(out["logit"])
    assert not (tmp_path / "scores.jsonl.partial").exists()
    assert not (tmp_path / "scores.jsonl.progress.json").exists()
    assert not (tmp_path / "scores.jsonl.errors.jsonl").exists()


def test_csv_10k_pairs_with_renamed_fields(
    tmp_path: Path, tiny_bert: Path, rows: list[dict], reference: list[float], warm_cache: Path
) -> None:
    source = tmp_path / "pairs.csv"
    with source.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["qid", "question", "passage"])
        writer.writerows([row["id"], row["query"], row["document"]] for row in rows)
    output = tmp_path / "scores.csv"
    code = score(
        "--model", tiny_bert, "--input", source, "--output", output, "--query-field", "question",
        "--document-field", "passage", "--id-field", "qid", "--cache-dir", warm_cache, "-q", *FLOAT32,
    )  # fmt: skip
    assert code == 0
    with output.open(newline="", encoding="utf-8") as handle:
        written = list(csv.DictReader(handle))
    assert len(written) == N_PAIRS
    assert list(written[0]) == ["qid", "question", "passage", "relevance_score", "logit"]
    for row, out, logit in zip(rows, written, reference, strict=True):
        assert (out["qid"], out["question"], out["passage"]) == (str(row["id"]), row["query"], row["document"])
        assert float(out["logit"]) == logit  # the cache holds the reference's exact logits
        assert float(out["relevance_score"]) == sigmoid(logit)


def test_parquet_10k_pairs_keep_their_column_types(
    tmp_path: Path, tiny_bert: Path, rows: list[dict], reference: list[float], warm_cache: Path
) -> None:
    pa = pytest.importorskip("pyarrow", reason="Parquet needs pyarrow (the batch extra)")
    import pyarrow.parquet as pq

    source = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source, row_group_size=3000)
    output = tmp_path / "scores.parquet"
    assert score("--model", tiny_bert, "--input", source, "--output", output, "--cache-dir", warm_cache, "-q",
                 "--chunk-size", "1500", *FLOAT32) == 0  # fmt: skip
    table = pq.read_table(output)
    assert table.schema.names == ["id", "query", "document", "relevance_score", "logit"]
    assert str(table.schema.field("id").type) == "int64"
    assert str(table.schema.field("logit").type) == "double"
    assert table.column("id").to_pylist() == list(range(N_PAIRS))
    assert table.column("document").to_pylist() == [row["document"] for row in rows]
    assert table.column("logit").to_pylist() == reference
    assert not (tmp_path / "scores.parquet.partial.parts").exists()


@pytest.mark.parametrize(("source_name", "output_name"), [("p.jsonl", "s.parquet"), ("p.parquet", "s.tsv")])
def test_formats_convert_between_input_and_output(
    tmp_path: Path, tiny_bert: Path, source_name: str, output_name: str
) -> None:
    pytest.importorskip("pyarrow", reason="Parquet needs pyarrow (the batch extra)")
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = make_rows(300, seed=3)
    source = tmp_path / source_name
    if source.suffix == ".jsonl":
        write_jsonl(source, rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), source)
    output = tmp_path / output_name
    assert score("--model", tiny_bert, "--input", source, "--output", output, "-q", *FLOAT32) == 0
    if output.suffix == ".parquet":
        written = pq.read_table(output).to_pylist()
    else:
        with output.open(newline="", encoding="utf-8") as handle:
            written = list(csv.DictReader(handle, delimiter="\t"))
    expected = dheera_local.Reranker().score_pairs(
        str(tiny_bert), [(r["query"], r["document"]) for r in rows], dtype="float32", device="cpu"
    )
    assert [str(out["id"]) for out in written] == [str(row["id"]) for row in rows]
    assert [float(out["logit"]) for out in written] == pytest.approx(expected.logits, abs=1e-6)


def test_rerank_writes_each_querys_documents_best_first_with_ranks(tmp_path: Path, tiny_bert: Path) -> None:
    rows = make_rows(600, seed=5, queries=30)
    source = write_jsonl(tmp_path / "run.jsonl", rows)
    output = tmp_path / "ranked.jsonl"
    assert score("--model", tiny_bert, "--input", source, "--output", output, "--rerank", "-q",
                 "--chunk-size", "64", *FLOAT32) == 0  # fmt: skip
    written = read_jsonl(output)
    assert len(written) == len(rows)
    by_query: dict[str, list[dict]] = {}
    for row in rows:
        by_query.setdefault(row["query"], []).append(row)
    position = 0
    for query, group in by_query.items():  # queries stay in input order, each one's rows together
        out = written[position : position + len(group)]
        position += len(group)
        response = dheera_local.rerank(
            str(tiny_bert), query, [r["document"] for r in group], dtype="float32", device="cpu", cache=False
        )
        assert [o["query"] for o in out] == [query] * len(group)
        assert [o["id"] for o in out] == [group[r.index]["id"] for r in response.results]
        assert [o["rank"] for o in out] == list(range(1, len(group) + 1))
        assert [o["relevance_score"] for o in out] == pytest.approx([r.relevance_score for r in response.results])
        scores = [o["relevance_score"] for o in out]
        assert scores == sorted(scores, reverse=True)


def test_rerank_refuses_a_query_whose_rows_are_not_together(
    tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [
        {"query": "paris", "document": "france"},
        {"query": "rome", "document": "italy"},
        {"query": "paris", "document": "museum"},
    ]
    source = write_jsonl(tmp_path / "run.jsonl", rows)
    output = tmp_path / "ranked.jsonl"
    assert score("--model", tiny_bert, "--input", source, "--output", output, "--rerank", "-q") == 1
    message = capsys.readouterr().err
    assert "line 3" in message and "Sort the input by query" in message
    assert not output.exists()


BAD_JSONL = [
    '{"id": "a", "query": "paris", "document": "the city of paris"}',
    '{"id": "b", "query": "paris"}',
    '{"id": "c", "query": 7, "document": "seven"}',
    "",
    '{"id": "d", "query": "rome", "document": "   "}',
    "{not json",
    '["query", "document"]',
    '{"id": "e", "query": null, "document": "berlin"}',
    '{"id": "f", "query": "rome", "document": "rome is in italy"}',
]


def test_bad_rows_are_reported_with_their_line_numbers_and_skipped(
    tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "pairs.jsonl"
    source.write_text("\n".join(BAD_JSONL) + "\n", encoding="utf-8")
    output = tmp_path / "scores.jsonl"
    assert score("--model", tiny_bert, "--input", source, "--output", output, "--chunk-size", "3") == 0
    assert [row["id"] for row in read_jsonl(output)] == ["a", "f"]
    errors = read_jsonl(tmp_path / "scores.jsonl.errors.jsonl")
    assert [(e["line"], e.get("id")) for e in errors] == [(2, "b"), (3, "c"), (5, "d"), (6, None), (7, None), (8, "e")]
    assert errors[0]["error"] == "field 'document' is missing"
    assert errors[1]["error"] == "field 'query' must be a string, got int"
    assert errors[2]["error"] == "field 'document' is empty"
    assert errors[3]["error"].startswith("not valid JSON") and errors[3]["record"] == "{not json"
    assert errors[4]["error"] == "a JSON list, not an object"
    assert errors[5]["error"] == "field 'query' is null"
    assert errors[0]["record"] == {"id": "b", "query": "paris"}
    assert "skipped 6 bad rows" in capsys.readouterr().err


def test_bad_csv_and_parquet_rows_cite_lines_and_rows(tmp_path: Path, tiny_bert: Path) -> None:
    pa = pytest.importorskip("pyarrow", reason="Parquet needs pyarrow (the batch extra)")
    import pyarrow.parquet as pq

    source = tmp_path / "pairs.csv"
    source.write_text('query,document\nparis,"a multi\nline document"\nrome,\n\nberlin,germany,extra\n', "utf-8")
    errors = tmp_path / "csv-errors.jsonl"
    assert score("--model", tiny_bert, "--input", source, "--output", tmp_path / "s.csv", "--errors", errors, "-q") == 0
    assert [(e["line"], e["error"]) for e in read_jsonl(errors)] == [
        (4, "field 'document' is empty"),
        (6, "has 3 columns, the header has 2"),
    ]
    table = pa.table({"query": ["paris", None, "rome"], "document": ["france", "x", ""]})
    pq.write_table(table, tmp_path / "pairs.parquet")
    assert score("--model", tiny_bert, "--input", tmp_path / "pairs.parquet", "--output", tmp_path / "s.jsonl",
                 "-q") == 0  # fmt: skip
    reported = read_jsonl(tmp_path / "s.jsonl.errors.jsonl")
    expected = [(2, "field 'query' is null"), (3, "field 'document' is empty")]
    assert [(e["row"], e["error"]) for e in reported] == expected
    assert len(read_jsonl(tmp_path / "s.jsonl")) == 1


def test_strict_stops_at_the_first_bad_row_and_leaves_no_output(
    tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "pairs.jsonl"
    source.write_text("\n".join(BAD_JSONL) + "\n", encoding="utf-8")
    output = tmp_path / "scores.jsonl"
    assert score("--model", tiny_bert, "--input", source, "--output", output, "--strict", "-q") == 1
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: ") and "line 2: field 'document' is missing" in message
    assert len(message.splitlines()) == 1
    assert not output.exists()


def test_a_missing_column_is_named_before_any_scoring(
    tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "pairs.csv"
    source.write_text("question,passage\nparis,france\n", encoding="utf-8")
    assert score("--model", tiny_bert, "--input", source, "--output", tmp_path / "s.csv", "-q") == 1
    message = capsys.readouterr().err
    assert "no column 'query' (columns: question, passage)" in message and "--query-field" in message


def test_unknown_extension_is_refused(tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_jsonl(tmp_path / "pairs.jsonl", make_rows(3))
    assert score("--model", tiny_bert, "--input", source, "--output", tmp_path / "scores.xlsx") == 1
    assert "'.xlsx'" in capsys.readouterr().err


def test_two_cpu_worker_processes_give_identical_scores(tmp_path: Path, tiny_bert: Path) -> None:
    source = write_jsonl(tmp_path / "pairs.jsonl", make_rows(1200, seed=9))
    common = ["--model", tiny_bert, "--input", source, "--no-cache", "-q", "--chunk-size", "150", *FLOAT32]
    assert score(*common, "--output", tmp_path / "one.jsonl", "--workers", "1") == 0
    assert score(*common, "--output", tmp_path / "two.jsonl", "--workers", "2") == 0
    one, two = (tmp_path / "one.jsonl").read_bytes(), (tmp_path / "two.jsonl").read_bytes()
    assert len(read_jsonl(tmp_path / "two.jsonl")) == 1200
    assert one == two


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_shows_rate_and_eta_on_a_terminal_only(
    tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_jsonl(tmp_path / "pairs.jsonl", make_rows(400, seed=4))
    captured = sys.stderr
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert score("--model", tiny_bert, "--input", source, "--output", tmp_path / "a.jsonl", "--chunk-size", "50") == 0
    shown = terminal.getvalue()
    assert "400/400" in shown and "pairs/s" in shown and "<00:00" in shown  # done, rate, ETA
    assert "400.0" not in shown and "s/pair" not in shown  # counts as integers, the rate never inverted
    assert "scored 400 pairs into" in shown

    quiet = _Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    assert score("--model", tiny_bert, "--input", source, "--output", tmp_path / "b.jsonl", "-q") == 0
    assert quiet.getvalue() == ""

    # Not monkeypatch.undo(): that would also undo the autouse isolation (caches, HF_HOME) for the run below.
    monkeypatch.setattr(sys, "stderr", captured)
    assert score("--model", tiny_bert, "--input", source, "--output", tmp_path / "c.jsonl") == 0
    not_a_terminal = capsys.readouterr().err
    assert "pair/s" not in not_a_terminal and "scored 400 pairs into" in not_a_terminal


class _TeiLike(BaseHTTPRequestHandler):
    """A TEI-style /rerank endpoint scoring by text lengths; it records how many requests overlap."""

    lock = threading.Lock()
    active = 0
    most_active = 0
    texts_seen = 0

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._answer({"max_client_batch_size": 64})  # one request per query of a chunk

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        with cls.lock:
            cls.active += 1
            cls.most_active = max(cls.most_active, cls.active)
            cls.texts_seen += len(body["texts"])
        time.sleep(0.005)
        with cls.lock:
            cls.active -= 1
        self._answer([{"index": i, "score": tei_like_logit(body["query"], t)} for i, t in enumerate(body["texts"])])

    def _answer(self, payload: object) -> None:
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def tei_like_logit(query: str, text: str) -> float:
    return (len(query) * 7 - len(text)) / 16


def test_remote_backend_scores_with_bounded_concurrency(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TeiLike)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        rows = make_rows(400, seed=6, queries=40)
        source = write_jsonl(tmp_path / "pairs.jsonl", rows)
        output = tmp_path / "scores.jsonl"
        code = score(
            "--model", "huggingface/tiny-org/tiny-bert-reranker", "--backend", "remote", "--api-base",
            f"http://127.0.0.1:{server.server_port}", "--input", source, "--output", output, "--workers", "3",
            "--chunk-size", "20", "-q",
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    assert code == 0
    written = read_jsonl(output)
    assert [row["id"] for row in written] == [row["id"] for row in rows]
    assert [row["logit"] for row in written] == [tei_like_logit(r["query"], r["document"]) for r in rows]
    assert _TeiLike.texts_seen == len(rows)
    assert 1 <= _TeiLike.most_active <= 3  # --workers 3: at most 3 chunks, so 3 requests, in flight
