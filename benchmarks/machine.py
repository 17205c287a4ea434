"""What this machine can do: matmul peaks per precision, and FLOPs per (query, document) pair."""

from __future__ import annotations

import time

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def matmul_peak(dtype: str, size: int | None = None, seconds: float = 2.0, device: str = "cpu") -> float:
    """Sustained GFLOP/s (GOP/s for int8) of a square matmul with torch's own kernels on ``device``.

    A GPU needs larger matrices than a CPU to be busy (8192 against 2048), and its calls return
    before the work is done, so the clock is read after a synchronize.
    """
    on_gpu = device.startswith("cuda")
    size = size or (8192 if on_gpu else 2048)
    if dtype == "int8":
        a = torch.randint(-64, 64, (size, size), dtype=torch.int8, device=device)
        b = torch.randint(-64, 64, (size, size), dtype=torch.int8, device=device)

        def run() -> object:
            return torch._int_mm(a, b)
    else:
        a = torch.randn(size, size, dtype=DTYPES[dtype], device=device)
        b = torch.randn(size, size, dtype=DTYPES[dtype], device=device)

        def run() -> object:
            return a @ b

    try:
        run()
        _synchronize(device)
    except RuntimeError:
        return float("nan")  # this torch/device has no kernel for it
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        run()
        count += 1
        if on_gpu and count % 10 == 0:
            _synchronize(device)  # keep the queue short, so the loop's clock follows the work
    _synchronize(device)
    return 2 * size**3 * count / (time.perf_counter() - started) / 1e9


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def device_name(device: str) -> str:
    """The card's name for a CUDA device; the CPU's model name otherwise."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def cuda_available() -> bool:
    return torch.cuda.is_available()


def flops_per_pair(tokens: int, layers: int, hidden: int, intermediate: int) -> float:
    """Encoder FLOPs for one sequence of ``tokens``: QKV/O and FFN matmuls plus attention."""
    linear = tokens * 2 * layers * (4 * hidden * hidden + 2 * hidden * intermediate)
    attention = 4 * layers * hidden * tokens * tokens
    return float(linear + attention)


def shape_of(config: dict) -> tuple[int, int, int]:
    """(layers, hidden, intermediate) from a transformers config.json."""
    return config["num_hidden_layers"], config["hidden_size"], config["intermediate_size"]
