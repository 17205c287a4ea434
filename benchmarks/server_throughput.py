"""Server throughput: pairs/s with N concurrent HTTP clients vs the in-process Reranker (cache off).

Starts ``dheera-local serve`` in a subprocess with a config serving one model folder, sends the
same requests (a query and D documents each) from N concurrent clients, and compares with the
in-process :class:`dheera_local.Reranker` scoring those requests one after another (what an app
does without a server) and in one bulk ``score_pairs`` call (the ceiling: one caller, perfect
batching). The issue's bar: server / in-process >= 0.90.

    python benchmarks/server_throughput.py --model /path/to/cross-encoder --clients 32
    python benchmarks/server_throughput.py --twin ms-marco-MiniLM-L-6-v2   # random weights, real shape

Not collected by pytest; no assertions. The client load runs on the same machine as the server,
so on a small CPU box the server's number is a lower bound.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from dheera_local import Reranker, testing
from dheera_local.testing.models import TWINS, WORDS

KEY = "sk-benchmark"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a cross-encoder folder")
    source.add_argument("--twin", choices=sorted(TWINS), help="build a random-weight twin of this model")
    parser.add_argument("--clients", type=int, default=32, help="concurrent HTTP clients")
    parser.add_argument("--requests", type=int, default=128, help="requests in total")
    parser.add_argument("--docs", type=int, default=16, help="documents per request")
    parser.add_argument("--words", type=int, default=40, help="words per document")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default=None)
    parser.add_argument("--port", type=int, default=4077)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurements of each setting")
    return parser.parse_args()


def workload(count: int, docs: int, words: int) -> list[tuple[str, list[str]]]:
    rng = random.Random(0)
    vocabulary = list(WORDS)
    return [
        (
            " ".join(rng.choice(vocabulary) for _ in range(6)),
            [" ".join(rng.choice(vocabulary) for _ in range(words)) for _ in range(docs)],
        )
        for _ in range(count)
    ]


class InProcess:
    """The in-process Reranker on the same requests, loaded once."""

    def __init__(self, model: str, requests: list[tuple[str, list[str]]], options: dict[str, str | None]) -> None:
        self.model, self.requests, self.options = model, requests, options
        self.pairs = sum(len(docs) for _, docs in requests)
        self.reranker = Reranker()
        self.reranker.rerank(model, requests[0][0], requests[0][1], cache=False, **options)  # load and warm up

    def request_by_request(self) -> float:
        started = time.perf_counter()
        for query, docs in self.requests:
            self.reranker.rerank(self.model, query, docs, cache=False, **self.options)
        return self.pairs / (time.perf_counter() - started)

    def bulk(self) -> float:
        every_pair = [(query, doc) for query, docs in self.requests for doc in docs]
        started = time.perf_counter()
        self.reranker.score_pairs(self.model, every_pair, cache=False, **self.options)
        return self.pairs / (time.perf_counter() - started)


def write_config(folder: Path, model: str, options: dict[str, str | None]) -> Path:
    params = "".join(f"      {name}: {value}\n" for name, value in options.items() if value is not None)
    config = folder / "config.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: bench\n"
        "    dheera_ai_params:\n"
        f"      model: {model}\n"
        f"{params}"
        "general_settings:\n"
        f"  master_key: {KEY}\n"
        "  cache: false\n"
        "  max_queue_pairs: 65536\n"
    )
    return config


def start_server(config: Path, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "dheera_local", "serve", "--config", str(config)]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/readiness", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not become ready")


async def through_server(port: int, requests: list[tuple[str, list[str]]], clients: int, warm_up: bool) -> float:
    """Pairs/s with ``clients`` concurrent connections, each sending requests one after another."""
    queue: asyncio.Queue[tuple[str, list[str]]] = asyncio.Queue()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {KEY}"}
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=600) as client:

        async def worker() -> None:
            while not queue.empty():
                query, docs = queue.get_nowait()
                response = await client.post("/rerank", json={"model": "bench", "query": query, "documents": docs})
                response.raise_for_status()

        if warm_up:  # open the connections and warm the model
            for item in requests[: clients * 2]:
                queue.put_nowait(item)
            await asyncio.gather(*(worker() for _ in range(clients)))
        for item in requests:
            queue.put_nowait(item)
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - started
    return sum(len(docs) for _, docs in requests) / elapsed


def main() -> None:
    args = parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="dheera-bench-"))
    model = args.model or str(testing.build_twin(args.twin, scratch / args.twin))
    options = {"dtype": args.dtype, "device": args.device}
    requests = workload(args.requests, args.docs, args.words)
    print(f"model {args.model or args.twin}: {args.requests} requests x {args.docs} docs = "
          f"{args.requests * args.docs} pairs, {args.words} words/doc, dtype {args.dtype}, "
          f"{os.cpu_count()} CPUs, {args.rounds} interleaved rounds")  # fmt: skip
    local = InProcess(model, requests, options)
    server = start_server(write_config(scratch, model, options), args.port)
    rows: dict[str, list[float]] = {"in-process, request by request": [], "in-process, one bulk call": []}
    served_label = f"server, {args.clients} concurrent clients"
    rows[served_label] = []
    try:
        for round_ in range(args.rounds):  # interleaved, so a busy neighbour skews every row alike
            rows["in-process, request by request"].append(local.request_by_request())
            rows["in-process, one bulk call"].append(local.bulk())
            rows[served_label].append(asyncio.run(through_server(args.port, requests, args.clients, round_ == 0)))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    for label, values in rows.items():
        print(f"{label:<34} median {statistics.median(values):9.1f}  best {max(values):9.1f} pairs/s")
    served = statistics.median(rows[served_label])
    for label in ("in-process, request by request", "in-process, one bulk call"):
        print(f"ratio server / {label}: {served / statistics.median(rows[label]):.2f} (medians)")


if __name__ == "__main__":
    main()
