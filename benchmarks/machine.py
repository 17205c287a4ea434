"""What this machine can do: matmul peaks per precision, and FLOPs per (query, document) pair."""

from __future__ import annotations

import time

import torch


def matmul_peak(dtype: str, size: int = 2048, seconds: float = 2.0) -> float:
    """Sustained GFLOP/s (GOP/s for int8) of a square matmul with torch's own kernels."""
    if dtype == "int8":
        a = torch.randint(-64, 64, (size, size), dtype=torch.int8)
        b = torch.randint(-64, 64, (size, size), dtype=torch.int8)

        def run() -> object:
            return torch._int_mm(a, b)
    else:
        kind = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        a, b = torch.randn(size, size, dtype=kind), torch.randn(size, size, dtype=kind)

        def run() -> object:
            return a @ b

    try:
        run()
    except RuntimeError:
        return float("nan")  # this torch/CPU has no kernel for it
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run()
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - started) / 1e9


def flops_per_pair(tokens: int, layers: int, hidden: int, intermediate: int) -> float:
    """Encoder FLOPs for one sequence of ``tokens``: QKV/O and FFN matmuls plus attention."""
    linear = tokens * 2 * layers * (4 * hidden * hidden + 2 * hidden * intermediate)
    attention = 4 * layers * hidden * tokens * tokens
    return float(linear + attention)


def shape_of(config: dict) -> tuple[int, int, int]:
    """(layers, hidden, intermediate) from a transformers config.json."""
    return config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]
