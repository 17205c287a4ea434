"""One benchmark system per function, each run in its own process (clean peak memory, no cross-talk).

    python benchmarks/systems.py SYSTEM spec.json result.json

A spec names the model folder, the requests (query + documents), how often to repeat them and
the device; a result holds per-request latencies, raw logits per request (for fidelity), the
precision and kernels used and the process's peak memory. Only public APIs are used:
sentence-transformers (torch, onnx and openvino backends), dheera_local's ``rerank``, the
``dheera-local serve`` command, and infinity's HTTP server. A peer's systems run under its own
virtualenv's python, so this file imports nothing outside the standard library at the top.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from queue import Empty, Queue
from typing import Any

# Seconds of real requests before a GPU run is timed (an idle card sits at a fraction of its clocks).
GPU_WARM_UP_S = 1.5

Request = dict[str, Any]


def peak_rss_mb(pid: int | str = "self") -> float:
    """Peak resident memory (VmHWM) of this process or of ``pid``, in MB.

    Not ``getrusage``: its maximum survives exec, so a child would report its parent's peak.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def warm_up(call: Callable[[Request], list[float]], spec: dict) -> None:
    """One untimed call; on a GPU real requests for a second or more, so kernel selection for their shapes
    and the clocks' ramp from idle are not timed."""
    if spec.get("device", "cpu").startswith("cuda") and spec["requests"]:
        started = time.perf_counter()
        for request in itertools.cycle(spec["requests"]):
            call(request)
            if time.perf_counter() - started > GPU_WARM_UP_S:
                break
    else:
        call({"query": "warm up", "documents": ["a short warm-up document"] * 4})


def versions(*packages: str) -> dict[str, str]:
    """Installed versions of ``packages`` (peers run other versions than ours)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in packages:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            pass
    return found


def timed_requests(requests: list[Request], repeats: int, call: Callable[[Request], list[float]]) -> dict[str, Any]:
    """Run every request ``repeats`` times in sequence; keep the last run's logits."""
    latencies, logits = [], []
    started = time.perf_counter()
    for repeat in range(repeats):
        for request in requests:
            t0 = time.perf_counter()
            scores = call(request)
            latencies.append(time.perf_counter() - t0)
            if repeat == repeats - 1:
                logits.append(scores)
    return {"latencies": latencies, "wall": time.perf_counter() - started, "logits": logits}


def concurrent_requests(
    requests: list[Request], repeats: int, clients: int, call: Callable[[Request], list[float]]
) -> dict[str, Any]:
    """``clients`` threads pull requests from one queue; throughput over the whole run."""
    work: Queue = Queue()
    for repeat in range(repeats):
        for number, request in enumerate(requests):
            work.put((repeat, number, request))
    latencies: list[float] = []
    logits: dict[int, list[float]] = {}
    errors: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        while True:
            try:
                repeat, number, request = work.get_nowait()
            except Empty:
                return
            t0 = time.perf_counter()
            try:
                scores = call(request)
            except Exception as exc:  # a benchmark reports failures instead of dying
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)
                if repeat == repeats - 1:
                    logits[number] = scores

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {
        "latencies": latencies,
        "wall": time.perf_counter() - started,
        "logits": [logits.get(i, []) for i in range(len(requests))],
        "errors": errors,
    }


# --- sentence-transformers ----------------------------------------------------------------------


ST_KERNELS = {"torch": "torch eager", "onnx": "onnxruntime", "openvino": "openvino"}


def run_st(spec: dict) -> dict:
    """``CrossEncoder.predict`` with its defaults; ``backend`` onnx/openvino loads a folder exported by st-export."""
    import torch
    from sentence_transformers import CrossEncoder

    backend, device = spec.get("backend", "torch"), spec.get("device", "cpu")
    dtype = spec.get("dtype")  # float16: the GPU section's half-precision row; else its default (fp32)
    model_kwargs: dict[str, Any] = {"dtype": getattr(torch, dtype)} if dtype else {}
    if spec.get("ov_precision"):
        # OpenVINO infers in bf16 by default on CPUs that have it; "f32" asks for fp32.
        model_kwargs["ov_config"] = {"INFERENCE_PRECISION_HINT": spec["ov_precision"]}
    if spec.get("file_name"):  # an int8 file beside the fp32 export
        model_kwargs["file_name"] = spec["file_name"]
    encoder = CrossEncoder(
        spec["model"], device=device, backend=backend, local_files_only=True, model_kwargs=model_kwargs
    )
    autocast = spec.get("autocast", False)

    def call(request: Request) -> list[float]:
        pairs = [(request["query"], d) for d in request["documents"]]
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=autocast):
            return encoder.predict(pairs, activation_fn=torch.nn.Identity()).tolist()

    warm_up(call, spec)
    result = timed_requests(spec["requests"], spec["repeats"], call)
    kernels = ST_KERNELS[backend] + (" (autocast)" if autocast else "")
    precision = "bfloat16 (autocast)" if autocast else dtype or "float32"
    if backend == "openvino":
        hint = encoder.model.request.get_property("INFERENCE_PRECISION_HINT").to_string()  # what it really ran
        precision = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}.get(hint, hint)
    if "qint8" in spec.get("file_name", ""):  # int8 linears; the rest in the precision above
        precision = f"int8 + {precision}"
    return {
        **result,
        "precision": precision,
        "kernels": kernels,
        "versions": versions("sentence-transformers", "transformers", "torch", "onnxruntime", "openvino"),
    }


def run_st_export(spec: dict) -> dict:
    """Export the model folder to ``backend`` (onnx/openvino) locally and save it to ``target`` (no hub)."""
    from sentence_transformers import CrossEncoder

    backend = spec["backend"]
    # No exported file in the folder: sentence-transformers exports it from the local weights.
    encoder = CrossEncoder(spec["model"], device="cpu", backend=backend, local_files_only=True)
    encoder.save_pretrained(spec["target"])
    return {"precision": "float32", "kernels": ST_KERNELS[backend], "logits": []}


def run_st_quantize(spec: dict) -> dict:
    """Add an int8 file to an exported folder, the way each backend's users get one.

    onnx: sentence-transformers' ``export_dynamic_quantized_onnx_model`` (ONNX Runtime dynamic int8 with
    the named ``config``). openvino: NNCF's post-training static int8 (``nncf.quantize``, transformer
    preset) calibrated on ``calibration`` pairs; sentence-transformers' own static export would download
    its calibration set from the hub, which is out of reach here.
    """
    from sentence_transformers import CrossEncoder

    folder, target = Path(spec["model"]), Path(spec["model"]) / spec["file_name"]
    if spec["backend"] == "onnx":
        from sentence_transformers import export_dynamic_quantized_onnx_model

        encoder = CrossEncoder(str(folder), device="cpu", backend="onnx", local_files_only=True)
        export_dynamic_quantized_onnx_model(encoder, spec["config"], str(folder), file_suffix=spec["suffix"])
    else:
        import nncf
        import openvino
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder)
        network = openvino.Core().read_model(folder / "openvino" / "openvino_model.xml")
        names = {port.get_any_name() for port in network.inputs}
        samples = []
        for query, document in spec["calibration"]:
            encoded = tokenizer(query, document, truncation=True, max_length=512, return_tensors="np")
            samples.append({name: value for name, value in encoded.items() if name in names})
        quantized = nncf.quantize(
            network, nncf.Dataset(samples), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(samples)
        )
        openvino.save_model(quantized, target)
    if not target.is_file():
        raise FileNotFoundError(f"{target} was not written")
    return {"precision": "int8", "kernels": ST_KERNELS[spec["backend"]], "logits": []}


# --- dheera_local in-process --------------------------------------------------------------------


def run_ours(spec: dict) -> dict:
    import dheera_local

    options = {"cache": False, "raw_scores": True, "device": spec.get("device", "cpu"), **spec.get("options", {})}
    served: dict[str, Any] = {}

    def call(request: Request) -> list[float]:
        response = dheera_local.rerank(spec["model"], request["query"], request["documents"], **options)
        served.update(response.meta.dheera_local.model_dump())
        by_index = {r.index: r.relevance_score for r in response.results}
        return [by_index[i] for i in range(len(request["documents"]))]

    warm_up(call, spec)
    result = timed_requests(spec["requests"], spec["repeats"], call)
    return {**result, "precision": served.get("dtype"), "kernels": served.get("kernels")}


def run_ours_cache(spec: dict) -> dict:
    """Fully cached requests: the first pass fills the cache, the timed passes only read it."""
    import dheera_local

    folder = tempfile.mkdtemp(prefix="dheera-bench-cache-")
    options = {"cache_dir": folder, "raw_scores": True, "device": "cpu", **spec.get("options", {})}

    def call(request: Request) -> list[float]:
        response = dheera_local.rerank(spec["model"], request["query"], request["documents"], **options)
        by_index = {r.index: r.relevance_score for r in response.results}
        return [by_index[i] for i in range(len(request["documents"]))]

    t0 = time.perf_counter()
    for request in spec["requests"]:
        call(request)
    uncached = time.perf_counter() - t0
    result = timed_requests(spec["requests"], spec["repeats"], call)
    return {**result, "precision": "cache", "uncached_wall": uncached}


# --- servers over HTTP --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_up(url: str, process: subprocess.Popen, timeout: float = 600) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with status {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server at {url} did not come up in {timeout:.0f}s")


def serve_and_measure(
    command: list[str],
    env: dict,
    health: str,
    spec: dict,
    call_factory: Callable[[str], Callable[[Request], list[float]]],
) -> dict:
    port = free_port()
    command = [part.replace("{port}", str(port)) for part in command]
    log = open(Path(tempfile.mkdtemp()) / "server.log", "w")  # noqa: SIM115 (closed below)
    process = subprocess.Popen(command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(base + health, process)
        call = call_factory(base)
        warm_up(call, spec)
        clients = spec.get("clients", 1)
        if clients > 1:
            result = concurrent_requests(spec["requests"], spec["repeats"], clients, call)
        else:
            result = timed_requests(spec["requests"], spec["repeats"], call)
        result["server_peak_rss_mb"] = peak_rss_mb(process.pid)
        return result
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def tei_client(base: str, path: str = "/rerank", headers: dict | None = None) -> Callable[[Request], list[float]]:
    """Logits through a TEI-format route (raw_scores), the same on our server and infinity's shape."""
    import httpx

    client = httpx.Client(timeout=600, headers=headers or {}, limits=httpx.Limits(max_connections=64))

    def call(request: Request) -> list[float]:
        body = {"query": request["query"], "texts": request["documents"], "raw_scores": True, "truncate": True}
        answer = client.post(base + path, json=body)
        answer.raise_for_status()
        scores = {item["index"]: item["score"] for item in answer.json()}
        return [scores[i] for i in range(len(request["documents"]))]

    return call


def lean_tei_client(base: str, headers: dict[str, str]) -> Callable[[Request], list[float]]:
    """A keep-alive ``http.client`` connection: what the server adds, without an HTTP library's own cost."""
    import http.client
    from urllib.parse import urlsplit

    address = urlsplit(base)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=600)
    headers = {**headers, "Content-Type": "application/json"}

    def call(request: Request) -> list[float]:
        body = {"query": request["query"], "texts": request["documents"], "raw_scores": True, "truncate": True}
        connection.request("POST", "/rerank", body=json.dumps(body).encode(), headers=headers)  # bytes: one send
        answer = connection.getresponse()
        data = json.loads(answer.read())
        if answer.status != 200:
            raise RuntimeError(f"server answered {answer.status}: {data}")
        scores = {item["index"]: item["score"] for item in data}
        return [scores[i] for i in range(len(request["documents"]))]

    return call


def run_ours_server(spec: dict) -> dict:
    """Our proxy over HTTP (TEI-format route, raw logits); ``cached`` fills the cache first."""
    from dheera_local._local.hardware import dtype_name, resolve_dtype

    cached = spec.get("cached", False)
    config = Path(tempfile.mkdtemp()) / "config.yaml"
    cache_dir = tempfile.mkdtemp()
    dtype = spec.get("options", {}).get("dtype")
    params = f"      model: {spec['model']}\n      device: cpu\n" + (f"      dtype: {dtype}\n" if dtype else "")
    settings = f"  master_key: sk-bench\n  cache: {str(cached).lower()}\n  cache_dir: {cache_dir}\n"
    config.write_text(
        "model_list:\n  - model_name: bench\n    dheera_ai_params:\n" + params + "general_settings:\n" + settings
    )
    command = [sys.executable, "-m", "dheera_local", "serve", "--config", str(config), "--port", "{port}"]
    headers = {"Authorization": "Bearer sk-bench"}

    in_process: list[float] = []
    over_http: list[float] = []
    served: dict[str, Any] = {}

    def client(base: str) -> Callable[[Request], list[float]]:
        served.update(_served_by(base, headers))
        call = tei_client(base, headers=headers)
        if not cached:
            return call
        for request in spec["requests"]:
            call(request)
        lean = lean_tei_client(base, headers)
        return _interleaved_with_in_process(lean, spec["model"], cache_dir, in_process, over_http)

    result = serve_and_measure(command, {}, "/health/liveliness", spec, client)
    if cached:
        # Each timed call ran both; keep the two latencies apart.
        result["in_process_latencies"], result["latencies"] = in_process[1:], over_http[1:]
    # The server applies the library's own rule for "auto" on this machine.
    precision = "cache" if cached else served.get("dtype") or dtype_name(resolve_dtype(dtype, "cpu"))
    return {**result, "precision": precision, "kernels": served.get("kernels")}


def _served_by(base: str, headers: dict[str, str]) -> dict[str, Any]:
    """``meta.dheera_local`` of one Cohere-format call: the TEI format the clients use has no meta."""
    import httpx

    body = {"model": "bench", "query": "which kernels", "documents": ["a short document"], "return_documents": False}
    answer = httpx.post(base + "/v2/rerank", json=body, headers=headers, timeout=600)
    answer.raise_for_status()
    return answer.json().get("meta", {}).get("dheera_local") or {}


def _interleaved_with_in_process(
    call: Callable[[Request], list[float]], model: str, cache_dir: str, in_process: list[float], over_http: list[float]
) -> Callable[[Request], list[float]]:
    """Before each HTTP call, the same call in-process on the same cache: both see the same machine state."""
    import dheera_local

    def both(request: Request) -> list[float]:
        t0 = time.perf_counter()
        dheera_local.rerank(model, request["query"], request["documents"], cache_dir=cache_dir, raw_scores=True)
        t1 = time.perf_counter()
        scores = call(request)
        in_process.append(t1 - t0)
        over_http.append(time.perf_counter() - t1)
        return scores

    return both


def run_infinity(spec: dict) -> dict:
    venv = Path(spec["infinity_venv"])
    dtype = spec.get("infinity_dtype", "bfloat16")
    batch = str(spec.get("batch_size", 32))
    command = [
        str(venv / "bin" / "infinity_emb"),
        "v2",
        "--model-id",
        spec["model"],
        "--engine",
        "torch",
        "--device",
        "cpu",
        "--dtype",
        dtype,
        "--port",
        "{port}",
        "--batch-size",
        batch,
    ]
    env = {"HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}

    def client(base: str) -> Callable[[Request], list[float]]:
        import httpx

        http = httpx.Client(timeout=600, limits=httpx.Limits(max_connections=64))

        def call(request: Request) -> list[float]:
            body = {"query": request["query"], "documents": request["documents"], "raw_scores": True}
            answer = http.post(base + "/rerank", json=body)
            answer.raise_for_status()
            scores = {item["index"]: item["relevance_score"] for item in answer.json()["results"]}
            return [scores[i] for i in range(len(request["documents"]))]

        return call

    result = serve_and_measure(command, env, "/health", spec, client)
    return {**result, "precision": dtype, "kernels": "infinity torch"}


# --- our remote client against a slow TEI-format endpoint ---------------------------------------


class _SlowTEI(BaseHTTPRequestHandler):
    """A TEI-format endpoint that answers after a fixed latency, with at most 32 texts per request."""

    latency = 0.05
    limit = 32

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        self._send(200, {"max_client_batch_size": self.limit, "model_id": "slow-tei"})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(self.latency)
        if len(body["texts"]) > self.limit:
            self._send(422, {"error": f"batch size {len(body['texts'])} > maximum allowed batch size {self.limit}"})
            return
        ranked = [{"index": i, "score": float(len(text) % 97) / 10} for i, text in enumerate(body["texts"])]
        self._send(200, sorted(ranked, key=lambda r: -r["score"]))

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def run_ours_remote(spec: dict) -> dict:
    """1,000 documents through our TEI client (concurrent parts) vs the same batches one after another."""
    import httpx

    import dheera_local

    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowTEI)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    query, documents = spec["requests"][0]["query"], spec["requests"][0]["documents"]
    model = "huggingface/bench/slow-tei"
    dheera_local.rerank(model, query, documents[:4], api_base=base, cache=False)  # reads /info once
    t0 = time.perf_counter()
    dheera_local.rerank(model, query, documents, api_base=base, cache=False, backend="remote")
    ours = time.perf_counter() - t0
    with httpx.Client(timeout=60) as client:
        t0 = time.perf_counter()
        for start in range(0, len(documents), 32):
            body = {"query": query, "texts": documents[start : start + 32], "raw_scores": True, "truncate": True}
            client.post(base + "/rerank", json=body).raise_for_status()
        sequential = time.perf_counter() - t0
    server.shutdown()
    return {"latencies": [ours], "wall": ours, "logits": [], "sequential_wall": sequential, "precision": "n/a"}


# --- file scoring: every pair of a file, end to end ----------------------------------------------


def all_pairs(spec: dict) -> list[tuple[str, str]]:
    return [(r["query"], d) for r in spec["requests"] for d in r["documents"]]


def run_st_pairs(spec: dict) -> dict:
    """CrossEncoder.predict over every pair in one call (its own batching): import + load + predict, timed."""
    pairs = all_pairs(spec)
    started = time.perf_counter()  # imports included, as they are in the CLI's process start
    import torch
    from sentence_transformers import CrossEncoder

    encoder = CrossEncoder(spec["model"], device="cpu")
    logits = encoder.predict(pairs, activation_fn=torch.nn.Identity(), show_progress_bar=False).tolist()
    wall = time.perf_counter() - started
    return {"wall": wall, "pairs": len(pairs), "logits": [logits], "precision": "float32"}


def run_ours_score(spec: dict) -> dict:
    """``dheera-local score`` on a JSONL of every pair, as a user runs it: process start to file written."""
    pairs = all_pairs(spec)
    with tempfile.TemporaryDirectory() as scratch:
        source, target = Path(scratch) / "pairs.jsonl", Path(scratch) / "scored.jsonl"
        source.write_text("".join(json.dumps({"query": q, "document": d}) + "\n" for q, d in pairs))
        command = [sys.executable, "-m", "dheera_local.cli", "score", "--model", spec["model"], "--input", str(source),
                   "--output", str(target), "--no-cache", "-q", *spec.get("args", [])]  # fmt: skip
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        peak = 0.0
        while process.poll() is None:  # the child's own peak, read while it runs
            try:
                peak = max(peak, peak_rss_mb(process.pid))
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(0.05)
        stderr = process.communicate()[1]
        wall = time.perf_counter() - started
        if process.returncode != 0:
            raise SystemExit(f"dheera-local score failed: {stderr.strip().splitlines()[-1:]}")
        logits = [json.loads(line)["logit"] for line in target.read_text().splitlines()]
    return {"wall": wall, "pairs": len(pairs), "logits": [logits], "precision": spec.get("precision", "auto"),
            "server_peak_rss_mb": peak}  # fmt: skip


# --- this machine's matmul peaks (in a child, so --isa's environment applies to them too) ---------


def run_peaks(spec: dict) -> dict:
    """Sustained matmul GFLOP/s per precision on ``device``, and the device's name."""
    from machine import device_name, matmul_peak

    device = spec.get("device", "cpu")
    peaks = {dtype: matmul_peak(dtype, size=spec.get("size"), device=device) for dtype in spec["dtypes"]}
    return {"peaks": peaks, "device_name": device_name(device), "logits": []}


SYSTEMS = {
    "st": run_st,
    "st-export": run_st_export,
    "st-quantize": run_st_quantize,
    "peaks": run_peaks,
    "ours": run_ours,
    "ours-cache": run_ours_cache,
    "ours-server": run_ours_server,
    "infinity": run_infinity,
    "ours-remote": run_ours_remote,
    "st-pairs": run_st_pairs,
    "ours-score": run_ours_score,
}


def main() -> None:
    system, spec_path, out_path = sys.argv[1:4]
    spec = json.loads(Path(spec_path).read_text())
    result = SYSTEMS[system](spec)
    result["peak_rss_mb"] = peak_rss_mb()
    Path(out_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
