"""oneDNN prepacked linear layers for CPU inference (the largest share of a cross-encoder's time).

In eager mode every ``nn.Linear`` call re-lays its weight out for oneDNN's kernels (AMX/AVX-512 bf16,
or AVX2/AVX-512 fp32 on CPUs without bf16); packing each weight once at load time removes that cost,
and the feed-forward GELU runs fused into its matmul (fp32: 1.1-1.15x on an AVX2 laptop stand-in,
1.8x with AVX-512; logits within 1e-5 of eager). This is what ``torch.compile`` with freezing does on
CPU, without the minute of compilation. It uses torch's ``mkldnn`` operators, so it is
feature-detected, checked on a probe batch at load time, and undone if it fails the check. The check
is relative to what the precision itself costs: the packed model may differ from the fp32 model by
little more than the eager model in the same precision does (zero for fp32, so there only the floor
applies; a real reranker's logits span about -10..+10, and bf16 moves them by ~1% of that whichever
kernels run, so a fixed tolerance would reject packing exactly where it is needed). Set
``DHEERA_CPU_KERNELS=eager`` to turn it off.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger("dheera_local")

PACKED = "onednn-packed"
EAGER = "eager"
# Packed may differ from fp32 by this many times eager's error in the same dtype (fused GELU rounds once, not
# twice, so it is not bit-identical to eager)...
PROBE_RATIO = 1.5
# ...plus this fraction of the logits' scale (max(1, largest |fp32 logit|)), for near-exact cases.
PROBE_FLOOR = 0.01
Swapped = list[tuple[nn.Module, str, nn.Module]]  # (parent, attribute, original module)
_probe_passes = 0  # the check's forward passes in this process: probe_passes()
_probe_passes_lock = threading.Lock()


PACKABLE_DTYPES = (torch.bfloat16, torch.float32)


def packing_available(device: str, dtype: torch.dtype, cpu_kernels: str = "auto") -> bool:
    """True when this torch build and CPU can run prepacked oneDNN linears for ``dtype`` (bf16 or fp32).

    ``cpu_kernels="eager"`` (``DHEERA_CPU_KERNELS``, read by the settings) turns packing off.
    """
    if cpu_kernels == EAGER:
        return False
    if torch.device(device).type != "cpu" or dtype not in PACKABLE_DTYPES:
        return False
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
        and _onednn_packs(dtype)
    )


@functools.cache
def _onednn_packs(dtype: torch.dtype) -> bool:
    # oneDNN has no bf16 weight reorder without AVX-512BW or AVX-NE-CONVERT (e.g. on AVX2-only CPUs).
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=dtype), None)
    except RuntimeError:
        return False
    return True


class PackedLinear(nn.Module):
    """An ``nn.Linear`` whose weight is laid out once for oneDNN; ``post_op`` may fuse GELU."""

    def __init__(self, linear: nn.Linear, post_op: str = "none") -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.bias = linear.bias.detach() if linear.bias is not None else None
        self.post_op = post_op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        algorithm = "none" if self.post_op == "gelu" else ""  # "none": exact (erf) GELU, as in the model
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, self.post_op, [], algorithm)


@dataclass(frozen=True)
class ProbeCheck:
    """The load-time check's numbers: max |logit - fp32 logit| for eager (in the model's dtype) and packed."""

    eager_error: float
    packed_error: float
    allowed: float

    @property
    def passed(self) -> bool:
        return self.packed_error <= self.allowed

    def __str__(self) -> str:
        return (
            f"packed differs from fp32 by {self.packed_error:.4f} logits, eager by {self.eager_error:.4f}; "
            f"allowed {self.allowed:.4f}"
        )


@dataclass(frozen=True)
class Verdict:
    """What the load-time check decided. ``final``: it ran to the end (a verdict worth remembering)."""

    kernels: str
    reason: str
    final: bool = True


def pack_linears(network: nn.Module, probe: dict[str, torch.Tensor], reference: torch.Tensor) -> str:
    """Swap every Linear for a PackedLinear (fusing exact GELU where it follows); returns the kernels used.

    ``reference`` is the fp32 model's logits on ``probe``. The swap is kept only if the packed model
    is about as close to them as the eager model in its own precision is (see the module docstring).
    """
    return checked_pack(network, probe, reference).kernels


def checked_pack(network: nn.Module, probe: dict[str, torch.Tensor], reference: torch.Tensor) -> Verdict:
    """:func:`pack_linears`, returning the verdict and its reason (to remember it)."""
    return checked_pack_scored(network, lambda: probe_logits(network, probe), reference)


def checked_pack_scored(
    network: nn.Module, score: Callable[[], torch.Tensor], reference: torch.Tensor | None = None
) -> Verdict:
    """:func:`checked_pack` for a model scored by ``score`` (a probe batch's logits, run once before packing
    and once after); ``reference`` is the fp32 model's logits on that batch, or None for the eager logits
    themselves (LLM rerankers, loaded in one precision only: packed may then differ by the floor alone)."""
    eager = score()
    reference = eager if reference is None else reference
    swapped: Swapped = []
    try:
        # Packing itself raises where oneDNN lacks a bf16 path for this CPU (no AVX-512BW/AVX-NE-CONVERT).
        _swap(network, swapped)
        check = probe_check(reference, eager, score())
    except Exception as exc:  # whatever breaks the optional fast path leaves the eager model
        # Not remembered (final=False): it may not happen again (out of memory), and it is found quickly.
        verdict = Verdict(EAGER, str(exc), final=False)
    else:
        if check.passed:
            logger.debug("oneDNN packed linears kept: %s", check)
            return Verdict(PACKED, str(check))  # the originals in `swapped` are dropped: no second copy
        verdict = Verdict(EAGER, str(check))
    _restore(network, swapped)
    logger.warning("oneDNN packed linears are not usable on this machine (%s); using eager kernels", verdict.reason)
    return verdict


def pack_linears_unchecked(network: nn.Module) -> str:
    """Pack as :func:`pack_linears` does, without the probe: for a verdict this machine already made on
    these weights. Packing that raises still leaves the eager model."""
    swapped: Swapped = []
    try:
        _swap(network, swapped)
    except Exception as exc:  # as in checked_pack: the fast path is optional
        _restore(network, swapped)
        logger.warning("oneDNN packed linears could not be applied (%s); using eager kernels", exc)
        return EAGER
    return PACKED


def probe_check(reference: torch.Tensor, eager: torch.Tensor, packed: torch.Tensor) -> ProbeCheck:
    """Compare eager and packed logits with the fp32 ones, by the rule of the module docstring."""
    eager_error = float((eager - reference).abs().max())
    packed_error = float((packed - reference).abs().max())
    scale = max(1.0, float(reference.abs().max()))
    return ProbeCheck(eager_error, packed_error, PROBE_RATIO * eager_error + PROBE_FLOOR * scale)


def probe_logits(network: nn.Module, features: dict[str, torch.Tensor]) -> torch.Tensor:
    """One forward pass of the check (counted: :func:`probe_passes`), as fp32 logits."""
    global _probe_passes
    with _probe_passes_lock:
        _probe_passes += 1
    with torch.inference_mode():
        return network(**features).logits.float()


def probe_passes() -> int:
    """The check's forward passes so far in this process (a remembered verdict adds none)."""
    return _probe_passes


def _swap(network: nn.Module, swapped: Swapped) -> None:
    """Replace linears in place, recording each (parent, attribute, original) in ``swapped`` as it
    goes, so that a swap failing halfway can still be undone."""
    for parent in list(network.modules()):
        fuse_gelu = _applies_exact_gelu(parent)
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear:
                continue
            post_op = "gelu" if fuse_gelu and name == "dense" else "none"
            setattr(parent, name, PackedLinear(child, post_op))
            swapped.append((parent, name, child))
        if fuse_gelu:
            swapped.append((parent, "intermediate_act_fn", parent.intermediate_act_fn))
            parent.intermediate_act_fn = nn.Identity()


def _applies_exact_gelu(module: nn.Module) -> bool:
    # BERT/RoBERTa-family "Intermediate" blocks: dense -> intermediate_act_fn, with exact GELU.
    act = getattr(module, "intermediate_act_fn", None)
    return (
        # The same test as _swap's: fusing GELU into a dense layer that is not packed would drop it.
        type(getattr(module, "dense", None)) is nn.Linear
        and act is not None
        and type(act).__name__ == "GELUActivation"
        and getattr(act, "act", None) is nn.functional.gelu
    )


def _restore(network: nn.Module, swapped: Swapped) -> None:
    for parent, name, original in reversed(swapped):
        setattr(parent, name, original)
