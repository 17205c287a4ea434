"""oneDNN prepacked linear layers for CPU inference (the largest share of a cross-encoder's time).

In eager mode every ``nn.Linear`` call re-lays its weight out for oneDNN's AMX/AVX-512 kernels;
packing each weight once at load time removes that cost, and the feed-forward GELU runs fused
into its matmul. This is what ``torch.compile`` with freezing does on CPU, without the minute of
compilation. It uses torch's ``mkldnn`` operators, so it is feature-detected, checked against
the eager model on a probe batch at load time, and undone if anything differs. Set
``DHEERA_CPU_KERNELS=eager`` to turn it off.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import nn

logger = logging.getLogger("dheera_local")

PACKED = "onednn-packed"
EAGER = "eager"
_PROBE_TOLERANCE = 0.05  # logits; bf16 fused GELU rounds once instead of twice
Swapped = list[tuple[nn.Module, str, nn.Module]]  # (parent, attribute, original module)


def packing_available(device: str, dtype: torch.dtype, cpu_kernels: str = "auto") -> bool:
    """True when this torch build and CPU can run prepacked oneDNN linears for ``dtype``.

    ``cpu_kernels="eager"`` (``DHEERA_CPU_KERNELS``, read by the settings) turns packing off.
    """
    if cpu_kernels == EAGER:
        return False
    if torch.device(device).type != "cpu" or dtype != torch.bfloat16:
        return False
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
        and _onednn_packs_bf16()
    )


@functools.cache
def _onednn_packs_bf16() -> bool:
    # oneDNN has no bf16 weight reorder without AVX-512BW or AVX-NE-CONVERT (e.g. on AVX2-only CPUs).
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=torch.bfloat16), None)
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


def pack_linears(network: nn.Module, probe: dict[str, torch.Tensor]) -> str:
    """Swap every Linear for a PackedLinear (fusing exact GELU where it follows); returns the kernels used.

    The swap is kept only if the packed model's logits match the eager ones on ``probe``.
    """
    with torch.inference_mode():
        expected = network(**probe).logits.float()
    swapped: Swapped = []
    try:
        # Packing itself raises where oneDNN lacks a bf16 path for this CPU (no AVX-512BW/AVX-NE-CONVERT).
        _swap(network, swapped)
        with torch.inference_mode():
            actual = network(**probe).logits.float()
        difference = float((actual - expected).abs().max())
    except RuntimeError as exc:
        difference, reason = float("inf"), str(exc)
    else:
        reason = f"max logit difference {difference:.4f}"
    if difference <= _PROBE_TOLERANCE:
        return PACKED  # the originals in `swapped` are dropped here: no second copy of the weights
    _restore(network, swapped)
    logger.warning("oneDNN packed linears are not usable on this machine (%s); using eager kernels", reason)
    return EAGER


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
        isinstance(getattr(module, "dense", None), nn.Linear)
        and act is not None
        and type(act).__name__ == "GELUActivation"
        and getattr(act, "act", None) is nn.functional.gelu
    )


def _restore(network: nn.Module, swapped: Swapped) -> None:
    for parent, name, original in reversed(swapped):
        setattr(parent, name, original)
