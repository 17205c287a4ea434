"""Two replicas on one shared score-cache tier: what the second pays for a request the first scored.

Starts a real ``redis-server`` (unix socket, persistence off) and two Rerankers, each with its own
store on that tier, as two proxy replicas have. Each round sends a fresh request (a query and D
documents) to replica A (uncached: scored, then written to the tier), then the same request to replica
B (answered from the tier), then to a third Reranker on a warm disk cache (the one-machine baseline),
interleaved round by round so machine noise hits all three alike. Reported: p50/p99 in ms.

    python benchmarks/replicas.py --model /path/to/cross-encoder --docs 100 --rounds 30
    python benchmarks/replicas.py --tiny   # a random 2-layer model: the cache paths, not the model, matter

Not collected by pytest; no assertions. In-process calls (``Reranker.rerank``): HTTP adds the same to each.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from dheera_local import RedisCacheStore, Reranker, Settings, testing
from dheera_local._cache.store import CacheStore

WORDS = "capital city river museum paris tokyo washington france history science music river bank".split()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="a cross-encoder folder")
    source.add_argument("--tiny", action="store_true", help="build a random 2-layer cross-encoder")
    parser.add_argument("--docs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--words", type=int, default=60, help="words per document")
    return parser.parse_args()


def request(rng: random.Random, docs: int, words: int) -> tuple[str, list[str]]:
    query = " ".join(rng.choices(WORDS, k=6)) + f" {rng.random()}"
    return query, [" ".join(rng.choices(WORDS, k=words)) + f" {i}" for i in range(docs)]


def percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(ordered) * 1000:8.2f} ms   p99 {p99 * 1000:8.2f} ms"


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="dheera-replicas-"))
    model = args.model or str(testing.build_cross_encoder(work / "tiny", arch="bert", seed=1))
    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    sock = work / "redis.sock"
    server = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        url = f"unix://{sock}?db=0"
        settings = Settings.from_env({"DHEERA_CACHE_DIR": str(work / "disk")})
        a = Reranker(settings=settings, cache=RedisCacheStore(url, local_store=CacheStore()))
        b = Reranker(settings=settings, cache=RedisCacheStore(url, local_store=CacheStore()))
        disk = Reranker(settings=settings, cache=CacheStore())
        rng = random.Random(0)
        times: dict[str, list[float]] = {"A uncached": [], "B via tier": [], "disk cache": []}
        for round_ in range(args.rounds + 2):  # two warm-up rounds
            query, docs = request(rng, args.docs, args.words)
            for name, reranker in (("A uncached", a), ("B via tier", b), ("disk cache", disk), ("disk cache", disk)):
                started = time.perf_counter()
                response = reranker.rerank(model, query, docs, dtype="float32")
                elapsed = time.perf_counter() - started
                if name == "disk cache" and response.cache_hits != args.docs:
                    continue  # the disk's first call fills it; the second is the measured hit
                if name == "B via tier":
                    assert response.cache_hits == args.docs, response.cache_hits
                if round_ >= 2:
                    times[name].append(elapsed)
        print(f"{args.docs} documents, {args.rounds} rounds, model {model}")
        for name, values in times.items():
            print(f"{name:12s} {percentiles(values)}")
    finally:
        server.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
