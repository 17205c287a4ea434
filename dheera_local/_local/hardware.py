"""Device and precision choice for the local backend.

``auto`` device: cuda, then mps, then cpu. ``auto`` precision: bf16 (else fp16) on CUDA, fp16 on
MPS; on CPU bf16 only where the CPU computes it natively (AVX512-BF16 or AMX), because emulated
bf16 is several times slower than fp32 there. torch is imported when a choice is made (a local
model is planned), not when this module is.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._errors import InvalidRequestError
from .._options import DTYPE_NAMES


@dataclass(frozen=True)
class CpuFeatures:
    """The CPU capabilities that decide precision."""

    avx512_bf16: bool = False
    amx_bf16: bool = False
    avx512_vnni: bool = False
    # The instruction set torch's own kernels use: lower than the CPU's when capped with
    # ATEN_CPU_CAPABILITY (as for a laptop stand-in), and then bf16 is no longer native.
    torch_isa: str = "AVX512"

    @property
    def native_bf16(self) -> bool:
        return (self.avx512_bf16 or self.amx_bf16) and self.torch_isa.startswith("AVX512")


@functools.cache
def cpu_features() -> CpuFeatures:
    """Detect this CPU's features (torch's own probes, else /proc/cpuinfo flags)."""
    import torch

    probes = torch.cpu
    isa = torch.backends.cpu.get_cpu_capability()
    try:
        return CpuFeatures(
            avx512_bf16=bool(probes._is_avx512_bf16_supported()),
            amx_bf16=bool(probes._is_amx_tile_supported()),
            avx512_vnni=bool(probes._is_vnni_supported()),
            torch_isa=isa,
        )
    except AttributeError:  # older torch: fall back to the kernel's flag list
        flags = _proc_cpuinfo_flags()
        return CpuFeatures("avx512_bf16" in flags, "amx_bf16" in flags, "avx512_vnni" in flags, isa)


def _proc_cpuinfo_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def resolve_device(requested: str | None) -> str:
    """The torch device to run on: ``auto``/None picks cuda, then mps, then cpu."""
    import torch

    if requested is None or requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if not isinstance(requested, str):
        raise InvalidRequestError(
            f"device must be a string such as 'cpu' or 'cuda:0', got {requested!r}", field="device"
        )
    try:
        device = torch.device(requested)
    except RuntimeError as exc:
        raise InvalidRequestError(f"device {requested!r} is not a torch device name", field="device") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidRequestError(f"device {requested!r} requested but CUDA is not available", field="device")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise InvalidRequestError(
            f"device {requested!r} requested but this machine has {count} CUDA device(s): use cuda:0..cuda:{count - 1}",
            field="device",
        )
    return str(device)


def resolve_dtype(requested: str | None, device: str, features: CpuFeatures | None = None) -> Any:
    """The ``torch.dtype`` to hold the weights in; ``auto``/None follows the module rule above."""
    import torch

    if requested is not None and requested != "auto":
        if not isinstance(requested, str) or requested.lower() not in DTYPE_NAMES:
            names = ", ".join(["auto", *sorted(DTYPE_NAMES)])
            raise InvalidRequestError(f"dtype {requested!r} is not one of: {names}", field="dtype")
        name = DTYPE_NAMES[requested.lower()]
        if name == "int8" and torch.device(device).type != "cpu":
            raise InvalidRequestError(
                f"dtype 'int8' runs on CPU only (device {device!r}): use float16 or bfloat16 on a GPU", field="dtype"
            )
        return getattr(torch, name)
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16 if _cuda_native_bf16(device) else torch.float16
    if kind == "mps":
        return torch.float16
    features = features if features is not None else cpu_features()
    return torch.bfloat16 if features.native_bf16 else torch.float32


def _cuda_native_bf16(device: str) -> bool:
    """Whether the GPU ``device`` names computes bf16 natively (NVIDIA Ampere, compute capability 8, or later).

    ``torch.cuda.is_bf16_supported()`` also says yes where bf16 is only emulated (T4, V100: slower and less
    precise than fp16), and asks about the current device rather than the one requested.
    """
    import torch

    if torch.version.hip:
        return torch.cuda.is_bf16_supported()  # AMD's GPUs compute bf16 (and older torch has no emulation flag)
    return torch.cuda.get_device_capability(torch.device(device)) >= (8, 0)


def dtype_name(dtype: Any) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")
