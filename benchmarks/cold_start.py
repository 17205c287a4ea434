"""Time to first result, in fresh processes: ``dheera-local rerank`` against a plain sentence-transformers script.

Each process starts from nothing (a new interpreter, imports, weights read, one request of four documents,
printed) and is timed from launch to exit, as a user running one command sees it. Three variants, run
interleaved round by round so that a busy machine slows them alike:

* ``dheera-local rerank`` first run: an empty cache folder, so the load-time kernel check runs and its
  verdict is written;
* ``dheera-local rerank`` again: the same cache folder, so the verdict is read and the check skipped
  (``--no-cache`` on both: no score comes from the score cache);
* ``CrossEncoder(model).predict(pairs)``, sentence-transformers' defaults, on the same model.

Usage::

    python benchmarks/cold_start.py /path/to/model-folder [--rounds 5]

The folder is a HuggingFace cross-encoder folder (config, weights, tokenizer). Prints the machine (CPU
model and flags, torch version, load average before and after) and, for wall time and for CPU time
(user + system), one line per variant: median, min and every run, in seconds.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUERY = "which city has a famous museum"
DOCUMENTS = [
    "the city of paris has a famous museum by the river",
    "berlin is the capital of germany",
    "tea and coffee in the morning",
    "the louvre in paris is the most visited museum in the world",
]
ST_SCRIPT = """
import sys
from sentence_transformers import CrossEncoder
model = CrossEncoder(sys.argv[1], device="cpu")
query, documents = sys.argv[2], sys.argv[3:]
print(model.predict([(query, document) for document in documents]).tolist())
"""


def dheera_command(model: str) -> list[str]:
    rerank = ["rerank", "--model", model, "--query", QUERY, "--no-cache", *DOCUMENTS]
    return [sys.executable, "-m", "dheera_local", *rerank]


def st_command(model: str) -> list[str]:
    return [sys.executable, "-c", ST_SCRIPT, model, QUERY, *DOCUMENTS]


def timed(command: list[str], cache_dir: Path) -> tuple[float, float]:
    """Seconds from launch to exit of ``command`` (which must succeed), and the CPU seconds it used (user +
    system, its threads and children included: less moved than wall time by other work on the machine)."""
    env = {**os.environ, "DHEERA_CACHE_DIR": str(cache_dir), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{command[:4]}... failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cpu_description() -> tuple[str, str]:
    name, flags = platform.processor() or platform.machine(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            field, _, value = line.partition(":")
            if field.strip() == "model name" and name in ("", platform.processor(), platform.machine()):
                name = value.strip()
            elif field.strip() in ("flags", "Features") and not flags:
                flags = value.strip()
    except OSError:
        pass
    return name, flags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("model", help="a cross-encoder folder (HuggingFace layout)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    model = str(Path(args.model).resolve())

    import torch

    name, flags = cpu_description()
    print(f"cpu: {name}; {os.cpu_count()} logical cores; torch {torch.__version__}")
    print(f"flags: {flags}")
    print(f"load average before: {os.getloadavg()}")
    variants: dict[str, list[tuple[float, float]]] = {
        "dheera-local rerank (first run)": [], "dheera-local rerank (verdict remembered)": [],
        "sentence-transformers CrossEncoder.predict": [],
    }  # fmt: skip
    first, second, st = variants.values()
    with tempfile.TemporaryDirectory() as scratch:
        # Untimed: bring the weights and the packages into the page cache for every variant alike.
        timed(st_command(model), Path(scratch) / "warm")
        timed(dheera_command(model), Path(scratch) / "warm")
        for round_ in range(args.rounds):
            cache_dir = Path(scratch) / f"round-{round_}"  # empty: the first run makes the kernel verdict
            first.append(timed(dheera_command(model), cache_dir))
            st.append(timed(st_command(model), cache_dir))
            second.append(timed(dheera_command(model), cache_dir))
            wall_cpu = [f"{wall:.1f}/{cpu:.1f}" for wall, cpu in (first[-1], second[-1], st[-1])]
            print(f"round {round_ + 1} (wall/cpu s): first {wall_cpu[0]}, remembered {wall_cpu[1]}, "
                  f"sentence-transformers {wall_cpu[2]}", flush=True)  # fmt: skip
    print(f"load average after: {os.getloadavg()}")
    for index, measure in enumerate(("wall", "cpu")):
        baseline = statistics.median(run[index] for run in st)
        for label, runs in variants.items():
            values = [run[index] for run in runs]
            median = statistics.median(values)
            every = ", ".join(f"{value:.1f}" for value in values)
            print(f"{measure} {label}: median {median:.1f} s ({baseline / median:.2f}x ST's speed), "
                  f"min {min(values):.1f} s; runs: {every}")  # fmt: skip


if __name__ == "__main__":
    main()
