"""``dheera_local.ray``: the map_batches scorer, and the Ray Data pipeline on a local 2-actor Ray.

The scorer class is tested on plain batches without a Ray cluster; the pipeline tests start a
local Ray instance and are skipped (with the reason) only when the ray extra is not installed.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_score_file import FLOAT32, make_rows, read_jsonl, write_jsonl

from dheera_local import InvalidRequestError, Reranker
from dheera_local.cli import main

OPTIONS = {"dtype": "float32", "device": "cpu", "cache": False}


def _reference(model: Path, rows: list[dict]) -> list[float]:
    pairs = [(row["query"], row["document"]) for row in rows]
    return Reranker().score_pairs(str(model), pairs, **OPTIONS).logits


def test_without_ray_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from dheera_local import ray as dheera_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without ray looks like
    with pytest.raises(ImportError) as caught:
        dheera_ray.import_ray()
    assert str(caught.value) == "dheera_local.ray needs Ray Data: pip install 'dheera_local[ray]'"


@pytest.mark.parametrize("batch_format", ["pyarrow", "pandas", "numpy"])
def test_scorer_adds_score_columns_to_each_batch_format(tiny_bert: Path, batch_format: str) -> None:
    pa = pytest.importorskip("pyarrow", reason="needs the ray extra (pyarrow)")
    pytest.importorskip("pandas", reason="needs the ray extra (pandas)")
    import numpy as np

    from dheera_local.ray import PairScorer

    rows = make_rows(40, seed=21)
    table = pa.Table.from_pylist(rows)
    batch = {"pyarrow": table, "pandas": table.to_pandas(), "numpy": {k: np.asarray(v) for k, v in
             table.to_pydict().items()}}[batch_format]  # fmt: skip
    scored = PairScorer(str(tiny_bert), **OPTIONS)(batch)
    columns = scored.to_pydict() if batch_format == "pyarrow" else {k: list(scored[k]) for k in scored}
    assert list(columns) == ["id", "query", "document", "relevance_score", "logit"]
    assert [int(i) for i in columns["id"]] == [row["id"] for row in rows]
    assert [float(x) for x in columns["logit"]] == pytest.approx(_reference(tiny_bert, rows), abs=1e-6)
    assert "relevance_score" not in (batch.column_names if batch_format == "pyarrow" else list(batch))


def test_scorer_marks_or_refuses_bad_rows(tiny_bert: Path) -> None:
    pa = pytest.importorskip("pyarrow", reason="needs the ray extra (pyarrow)")
    from dheera_local.ray import PairScorer

    batch = pa.table({"q": ["paris", None, "rome"], "d": ["france", "x", " "]})
    marked = PairScorer(str(tiny_bert), query_field="q", document_field="d", bad_rows="mark", **OPTIONS)(batch)
    assert marked.column("score_error").to_pylist() == [None, "field 'q' is null", "field 'd' is empty"]
    logits = marked.column("logit").to_pylist()
    assert logits[0] == pytest.approx(_reference(tiny_bert, [{"query": "paris", "document": "france"}])[0], abs=1e-6)
    assert math.isnan(logits[1]) and math.isnan(logits[2])
    with pytest.raises(InvalidRequestError, match="row 1 of a batch: field 'q' is null"):
        PairScorer(str(tiny_bert), query_field="q", document_field="d", **OPTIONS)(batch)
    with pytest.raises(InvalidRequestError, match=r"no column 'query' \(columns: q, d\)"):
        PairScorer(str(tiny_bert), **OPTIONS)(batch)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[object]:
    """A fresh local Ray instance with 4 CPU slots: 2 for the actors, the rest for reading and writing."""
    ray = pytest.importorskip("ray", reason="needs the ray extra: pip install 'dheera_local[ray]'")
    pytest.importorskip("ray.data", reason="needs the ray extra: pip install 'dheera_local[ray]'")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("RAY_ADDRESS", raising=False)
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        try:
            ray.data.DataContext.get_current().enable_progress_bars = False
            yield ray
        finally:
            ray.shutdown()


@pytest.mark.ray
@pytest.mark.slow
def test_ray_pipeline_with_two_actors_matches_the_one_machine_path(
    local_ray: object, tiny_bert: Path, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq

    from dheera_local.ray import run_pipeline

    rows = make_rows(2000, seed=22)
    source = write_jsonl(tmp_path / "pairs.jsonl", rows)
    one_machine = tmp_path / "one-machine.jsonl"
    assert main(["score", "--model", str(tiny_bert), "--input", str(source), "--output", str(one_machine),
                 "--no-cache", "-q", *FLOAT32]) == 0  # fmt: skip
    expected = {row["id"]: row for row in read_jsonl(one_machine)}

    output = tmp_path / "scored"
    written = run_pipeline(source, output, str(tiny_bert), actors=2, batch_size=250, **OPTIONS)
    assert written == len(rows)
    scored = pq.read_table(output).to_pylist()
    assert sorted(row["id"] for row in scored) == sorted(expected)
    for row in scored:
        assert {k: row[k] for k in ("query", "document")} == {k: expected[row["id"]][k] for k in ("query", "document")}
        assert row["logit"] == pytest.approx(expected[row["id"]]["logit"], abs=1e-6)
        assert row["relevance_score"] == pytest.approx(expected[row["id"]]["relevance_score"], abs=1e-6)


@pytest.mark.ray
@pytest.mark.slow
def test_score_command_runs_on_ray(local_ray: object, tiny_bert: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = make_rows(300, seed=23)
    rows[5]["document"] = ""
    source = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source)
    output = tmp_path / "scored.parquet"
    code = main(["score", "--engine", "ray", "--model", str(tiny_bert), "--input", str(source), "--output",
                 str(output), "--workers", "2", "--chunk-size", "100", "--no-cache", "-q", *FLOAT32])  # fmt: skip
    assert code == 0
    scored = {row["id"]: row for row in pq.read_table(output).to_pylist()}
    assert scored[5]["score_error"] == "field 'document' is empty" and math.isnan(scored[5]["logit"])
    good = [row for row in rows if row["id"] != 5]
    reference = dict(zip((row["id"] for row in good), _reference(tiny_bert, good), strict=True))
    assert {i: scored[i]["logit"] for i in reference} == pytest.approx(reference, abs=1e-6)
    assert json.dumps(sorted(scored)) == json.dumps([row["id"] for row in rows])
