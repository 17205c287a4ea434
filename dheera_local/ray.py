"""Scoring pairs on a Ray cluster with Ray Data (``pip install 'dheera_local[ray]'``).

We do not schedule anything ourselves: Ray Data streams the blocks, and an actor pool holds one
model per actor (one actor per GPU, or per CPU slot)::

    import ray
    from dheera_local.ray import PairScorer, score_dataset

    pairs = ray.data.read_parquet("s3://bucket/pairs/")              # columns: query, document, ...
    scored = score_dataset(pairs, "BAAI/bge-reranker-v2-m3")         # + relevance_score, logit
    scored.write_parquet("s3://bucket/scores/")

:func:`run_pipeline` does all three for a file or folder (``dheera-local score --engine ray``).
Scores come from ``Reranker.score_pairs``, as on one machine, so the same pairs get the same
scores. Ray is imported only when a function here needs it.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path, PurePosixPath
from typing import Any

from ._engine.orchestrator import Reranker, relevance_score
from ._errors import InvalidRequestError
from ._models.model_ref import parse_model
from ._options import OPTION_NAMES, RerankOptions, merge_options
from .score.rows import text_problem
from .score.workers import Engine, score_chunk

MISSING_RAY = "dheera_local.ray needs Ray Data: pip install 'dheera_local[ray]'"
DEFAULT_BATCH_SIZE = 1024
BAD_ROWS = ("raise", "mark")
ERROR_COLUMN = "score_error"


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or an ImportError naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401 (ray[data] is a separate extra of ray)
    except ImportError as exc:
        raise ImportError(MISSING_RAY) from exc
    return ray


class PairScorer:
    """A callable class for ``Dataset.map_batches``: loads the model once per actor, then scores
    the ``query``/``document`` columns of each batch (pyarrow Table, pandas DataFrame or dict of
    numpy arrays) and returns the batch with ``relevance_score`` and ``logit`` columns added.

    Args:
        model: As for :func:`dheera_local.rerank`.
        query_field, document_field: The columns holding the texts.
        batch_tokens: Padded tokens per forward pass of the local backend.
        bad_rows: ``"raise"`` (a missing, non-string or empty text fails the batch) or ``"mark"``
            (such rows get NaN scores and the reason in a ``score_error`` column).
        options: The engine options, made once (``score_dataset`` makes them on the driver).
        **values: The keyword options of :func:`dheera_local.rerank` (device, dtype, cache, ...).
    """

    def __init__(
        self, model: str, *, query_field: str = "query", document_field: str = "document",
        batch_tokens: int | None = None, bad_rows: str = "raise", options: RerankOptions | None = None,
        **values: Any,
    ) -> None:  # fmt: skip
        if bad_rows not in BAD_ROWS:
            raise InvalidRequestError(f"bad_rows must be 'raise' or 'mark', got {bad_rows!r}", field="bad_rows")
        self.query_field = query_field
        self.document_field = document_field
        self.bad_rows = bad_rows
        if batch_tokens is not None:
            values = {**values, "batch_tokens": batch_tokens}
        self.engine = Engine(model, merge_options(options, values))
        self.reranker = Reranker()
        local = self.engine.plan(self.reranker).local
        if local is not None:
            local.prepare()  # load now, once per actor, rather than inside the first batch

    def __call__(self, batch: Any) -> Any:
        """Score one batch; returns it with the score columns added (the input is not modified)."""
        queries = _column(batch, self.query_field)
        documents = _column(batch, self.document_field)
        pairs, problems = [], []
        for row, (query, document) in enumerate(zip(queries, documents, strict=True)):
            problem = text_problem(self.query_field, query) or text_problem(self.document_field, document)
            if problem is not None and self.bad_rows == "raise":
                raise InvalidRequestError(
                    f"row {row} of a batch: {problem} (pass bad_rows='mark' to score the other rows)", field="batch"
                )
            problems.append(problem)
            if problem is None:
                pairs.append((str(query), str(document)))  # str(): numpy batches hold numpy.str_
        logits = iter(score_chunk(self.reranker, self.engine, pairs).logits if pairs else [])
        raw = [math.nan if problem else next(logits) for problem in problems]
        columns: dict[str, list[Any]] = {
            "relevance_score": [relevance_score(x, self.engine.options) for x in raw],  # a bad row's NaN stays NaN
            "logit": raw,
        }
        if self.bad_rows == "mark":
            columns[ERROR_COLUMN] = problems
        return _with_columns(batch, columns)


def _column(batch: Any, name: str) -> list[Any]:
    if _is_arrow(batch):
        names = batch.column_names
        values = batch.column(name).to_pylist() if name in names else None
    elif _is_pandas(batch):
        names = list(batch.columns)
        values = batch[name].tolist() if name in names else None
    else:
        names = list(batch)
        values = list(batch[name]) if name in names else None
    if values is None:
        raise InvalidRequestError(
            f"the batch has no column {name!r} (columns: {', '.join(map(str, names))}); "
            "pass query_field= / document_field=",
            field="batch",
        )
    return values


def _is_arrow(batch: Any) -> bool:
    return hasattr(batch, "column_names") and hasattr(batch, "append_column")


def _is_pandas(batch: Any) -> bool:
    return hasattr(batch, "assign") and hasattr(batch, "iloc")


def _with_columns(batch: Any, columns: dict[str, list[Any]]) -> Any:
    if _is_arrow(batch):
        import pyarrow as pa

        for name, values in columns.items():
            array = pa.array(values, pa.string() if name == ERROR_COLUMN else pa.float64())
            if name in batch.column_names:
                batch = batch.set_column(batch.column_names.index(name), name, array)
            else:
                batch = batch.append_column(name, array)
        return batch
    if _is_pandas(batch):
        return batch.assign(**columns)
    import numpy as np

    return {**batch, **{name: np.asarray(values) for name, values in columns.items()}}


def check_engine_options(model: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """``arguments`` with their ``rerank()`` options (and any ``options`` object) made into one checked
    ``options``. A bad ``model`` or option is refused here, on the driver, before Ray starts: inside an actor
    the same typo surfaces only after the cluster started and read the data, wrapped in Ray's errors."""
    parse_model(model)
    values = {name: value for name, value in arguments.items() if name in OPTION_NAMES}
    rest = {name: value for name, value in arguments.items() if name not in OPTION_NAMES and name != "options"}
    return {**rest, "options": merge_options(arguments.get("options"), values)}


def score_dataset(
    dataset: Any, model: str, *, actors: int | None = None, gpus_per_actor: float | None = None,
    cpus_per_actor: float = 1, batch_size: int = DEFAULT_BATCH_SIZE, **scorer_options: Any,
) -> Any:  # fmt: skip
    """``dataset`` with ``relevance_score`` and ``logit`` columns, scored by a pool of PairScorer actors.

    Args:
        dataset: A ``ray.data.Dataset`` with query and document columns.
        model: As for :func:`dheera_local.rerank`.
        actors: Actor pool size (default: one per GPU in the cluster; without GPUs, one per CPU
            slot but one, which is left for reading and writing).
        gpus_per_actor: GPUs per actor (default 1 when the cluster has GPUs, else 0).
        cpus_per_actor: CPUs per actor (tokenization, and the model itself on CPU actors).
        batch_size: Rows per batch handed to an actor (its token-budget batching splits it further).
        **scorer_options: :class:`PairScorer` arguments and :func:`dheera_local.rerank` options.
    """
    scorer_options = check_engine_options(model, scorer_options)
    ray = import_ray()
    resources = ray.cluster_resources()
    if gpus_per_actor is None:
        gpus_per_actor = 1 if resources.get("GPU", 0) >= 1 else 0
    if actors is None:
        actors = _pool_size(resources, gpus_per_actor, cpus_per_actor)
    if gpus_per_actor == 0 and scorer_options["options"].device in (None, "auto"):
        scorer_options["options"] = scorer_options["options"].replace(device="cpu")
    remote_args: dict[str, Any] = {"num_cpus": cpus_per_actor}
    if gpus_per_actor:
        remote_args["num_gpus"] = gpus_per_actor
    return dataset.map_batches(
        PairScorer, fn_constructor_args=(model,), fn_constructor_kwargs=scorer_options, batch_size=batch_size,
        batch_format="pyarrow", **_pool_arguments(ray, dataset, actors), **remote_args,
    )  # fmt: skip


def _pool_size(resources: dict[str, float], gpus_per_actor: float, cpus_per_actor: float) -> int:
    if gpus_per_actor:
        gpus = int(resources.get("GPU", 0) // gpus_per_actor)
        if gpus < 1:
            raise InvalidRequestError(
                f"the Ray cluster has {resources.get('GPU', 0)} GPUs, fewer than gpus_per_actor={gpus_per_actor}",
                field="gpus_per_actor",
            )
        return gpus
    return max(1, int((resources.get("CPU", 1) - 1) // cpus_per_actor))


def _pool_arguments(ray: Any, dataset: Any, size: int) -> dict[str, Any]:
    """A fixed pool of ``size`` actors, in the spelling this Ray accepts without a deprecation.

    Ray 2.9 added ``concurrency=`` and deprecated ``compute=ActorPoolStrategy``; later releases
    deprecated ``concurrency=`` again in favour of ``compute``. The docstring says which is current.
    """
    method = dataset.map_batches
    parameters = inspect.signature(method).parameters
    doc = " ".join((method.__doc__ or "").split())
    concurrency_deprecated = "concurrency: This argument is deprecated" in doc
    if "concurrency" in parameters and not concurrency_deprecated:
        return {"concurrency": size}
    return {"compute": ray.data.ActorPoolStrategy(size=size)}


def read_pairs(source: str | Path, *, query_field: str = "query", document_field: str = "document") -> Any:
    """A ``ray.data.Dataset`` of a JSONL, CSV/TSV or Parquet file (or folder of Parquet files).

    CSV text columns are read as strings, as on one machine (pyarrow would otherwise infer numbers).
    """
    ray = import_ray()
    text = str(source)
    suffix = PurePosixPath(text.rstrip("/")).suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        if "lines" in inspect.signature(ray.data.read_json).parameters:
            return ray.data.read_json(text, lines=True)
        return ray.data.read_json(text)
    if suffix in (".csv", ".tsv"):
        import pyarrow as pa
        import pyarrow.csv as pacsv

        types = {query_field: pa.string(), document_field: pa.string()}
        parse = pacsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
        return ray.data.read_csv(text, parse_options=parse, convert_options=pacsv.ConvertOptions(column_types=types))
    if suffix in (".parquet", ".pq", ""):  # no extension: a folder of Parquet files (local or s3://...)
        return ray.data.read_parquet(text)
    raise InvalidRequestError(
        f"{text}: the Ray engine reads .jsonl, .csv, .tsv, .parquet or a folder of Parquet files", field="input"
    )


def _split_blocks(dataset: Any, rows: int) -> Any:
    """Blocks of at most ``rows`` rows, streamed, so one big file still feeds every actor.

    Ray reads a file as one block until it is very large, and an actor pool hands out blocks; the
    streaming repartition (Ray >= 2.44) splits without a shuffle. Older Rays keep the file's blocks.
    """
    if "target_num_rows_per_block" in inspect.signature(dataset.repartition).parameters:
        return dataset.repartition(target_num_rows_per_block=rows)
    return dataset


def run_pipeline(
    source: str | Path, output: str | Path, model: str, *, ray_address: str | None = None, **score_options: Any
) -> int | None:
    """Read pairs, score them on the Ray cluster, write Parquet files into the folder ``output``.

    Args:
        source: A JSONL, CSV/TSV or Parquet file, or a folder of Parquet files (local or ``s3://``...).
        output: A folder for the scored Parquet files; it must not hold files already.
        model: As for :func:`dheera_local.rerank`.
        ray_address: The cluster (default: ``$RAY_ADDRESS``, else a new local Ray instance).
        **score_options: :func:`score_dataset` and :class:`PairScorer` arguments, ``rerank()`` options.

    Returns:
        Rows written, when ``output`` is a local folder (else None).
    """
    score_options = check_engine_options(model, score_options)
    ray = import_ray()
    local = Path(output) if "://" not in str(output) else None
    if local is not None and local.exists() and any(local.iterdir()):
        raise InvalidRequestError(f"{local} already holds files; choose an empty or new folder", field="output")
    if not ray.is_initialized():
        ray.init(address=ray_address)  # None: $RAY_ADDRESS, else a local instance
    fields = {key: score_options[key] for key in ("query_field", "document_field") if key in score_options}
    dataset = _split_blocks(read_pairs(source, **fields), score_options.get("batch_size", DEFAULT_BATCH_SIZE))
    scored = score_dataset(dataset, model, **score_options)
    scored.write_parquet(str(output))
    if local is None:
        return None
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(part).metadata.num_rows for part in sorted(local.glob("*.parquet")))
