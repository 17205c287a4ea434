"""Opt-in int8 inference on CPU (``dtype="int8"``): the encoder's linear layers in int8, the rest in fp32.

Weights are quantized once at load, per output channel (symmetric int8, one scale per row: a trained
checkpoint's rows differ in range, and one scale per tensor would waste bits on the narrow ones);
activations are quantized per batch, dynamically (per tensor, from the batch's own range), by torch's
``quantize_dynamic`` — fbgemm kernels on x86 (AVX2, AVX-512, VNNI), qnnpack on ARM. Those kernels quantize
activations to 7 bits (``reduce_range``): AVX2 has no int8 dot product and sums u8 x s8 pairs in int16,
which 8-bit activations could saturate (logits then move by more than a whole logit). Embeddings,
attention's softmax, layer norms, the pooler and the head stay fp32: they are a small share of the time and
where the ranking is most sensitive.

int8 is never chosen by ``dtype="auto"``: it changes scores (its own entry in the score cache) and
meets the fidelity bar only narrowly on the real MiniLM-L12 reranker (NovelEval: Kendall τ 0.954, 9/10 of every
query's top 10, nDCG@10 -0.0009) and misses it far on a trained body whose weights are not int8-rounded (τ 0.771,
7/10) (README, Benchmarks).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

INT8_KERNELS = "int8-dynamic"


def int8_available() -> bool:
    """True when this torch build has a quantized engine for dynamic int8 linears on this CPU."""
    engines = set(torch.backends.quantized.supported_engines)
    return bool(engines & {"x86", "fbgemm", "qnnpack", "onednn"})


def quantize_encoder(network: nn.Module) -> str:
    """Swap the encoder's ``nn.Linear`` layers for dynamic int8 ones, in place; returns the kernels' name.

    Only the transformer blocks: the embeddings are lookups, and the pooler and classification head are a
    few hundred thousand multiply-adds per pair that decide the logit directly.
    """
    try:  # torch marks its eager quantization API deprecated (in favour of torchao) but still ships it
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError as exc:
        raise ValueError(f"torch {torch.__version__} has no dynamic int8 quantization: {exc}") from exc
    if not int8_available():
        raise ValueError(f"torch {torch.__version__} has no quantized engine for int8 on this CPU")
    encoder = getattr(network.base_model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ValueError(f"{type(network).__name__} has no encoder blocks to quantize")
    with warnings.catch_warnings():  # its deprecation notices, once per load: nothing a caller can act on
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        quantized = quantize_dynamic(encoder, {nn.Linear: per_channel_dynamic_qconfig}, inplace=False)
    network.base_model.encoder = quantized
    return INT8_KERNELS
