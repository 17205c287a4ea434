"""Would W8A8 int8 linears keep ranking quality, and would they be faster than packed fp32? (issue 11)

    python benchmarks/int8_study.py [--models-dir DIR]    # ~5 min on 2 cores; needs the trained body built

On the MiniLM-L6 trained body (fitted head, logit std 3) it swaps the encoder's linears of our loaded
fp32 model for int8 ones: per-output-channel int8 weights, per-token dynamic int8 activations
(``torch._int_mm``), and optionally the few input channels whose calibrated magnitude is above a
multiple of the median kept in fp32 (LLM.int8()-style outlier decomposition; calibrated on 4
random NovelEval passages with the first query). Fidelity is judged as the suite does
(21 NovelEval queries x 20 candidates, against our fp32 logits); speed on the suite's single-query workload.

It also runs fbgemm's fused dynamic int8 linear (``torch.ops.quantized.linear_dynamic``, what
``quantize_dynamic`` and so infinity's int8 use, here with per-channel weights): one activation scale per
tensor, found and applied inside the kernel, alone and with the same fp32 outlier channels.
And per-token int8 with ``torch.compile`` fusing the quantize and dequantize passes around ``torch._int_mm``,
alone and with the outlier channels split into copies inside the int8 matmul instead of kept in fp32
(needs a C++ compiler; the first call compiles for about 20 s).
A study, not a product path. Capped to AVX2, set ``FBGEMM_ENABLE_INSTRUCTIONS=AVX2`` beside the other caps.

``--quick`` runs only packed fp32 and the compiled split variant, and prints where one pass of each spends its
time (matmuls, attention, the rest; torch profiler) with the ceiling that implies: pairs/s if nothing but the
matmuls and attention cost anything. ``--whole-network`` adds the split variant with the whole network under one
``torch.compile`` (plain linears, so inductor can also fuse LayerNorm, GELU and the residual adds into the
quantize passes; compiling takes minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from fidelity import compare
from models import TRAINED_BODY
from torch import nn
from workloads import DEFAULT_DATASET, batch_of_queries, load_noveleval, single_query

from dheera_local._local.cpu_kernels import PackedLinear
from dheera_local._local.torch_model import LocalModel
from dheera_local._models.discovery import LocalWeights


def outlier_channels(largest: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """Input channels whose calibrated magnitude is above ``threshold`` x the median (none without one)."""
    if threshold is None:
        return torch.zeros(0, dtype=torch.long)
    return (largest > threshold * largest.median()).nonzero().squeeze(1)


def split_outliers(linear: nn.Linear, outliers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fp32 weight with the ``outliers`` input channels zeroed, and those channels' weight (in x out), if any."""
    weight = linear.weight.detach().float().clone()
    outlier_weight = weight[:, outliers].t().contiguous() if len(outliers) else None
    weight[:, outliers] = 0
    return weight, outlier_weight


def channel_scales(weight: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 scale per output channel."""
    return weight.abs().amax(1).clamp_min(1e-8) / 127


class Int8Linear(nn.Module):
    """``x @ w.T + b`` with int8 weights (per output channel) and int8 activations (per token)."""

    def __init__(self, linear: nn.Linear, largest: torch.Tensor, threshold: float | None, gelu: bool) -> None:
        super().__init__()
        outliers = outlier_channels(largest, threshold)
        weight, self.outlier_weight = split_outliers(linear, outliers)
        self.outliers = outliers
        self.weight_scale = channel_scales(weight)
        self.weight_q = torch.round(weight / self.weight_scale[:, None]).to(torch.int8).t()
        self.bias = linear.bias.detach().float()
        self.gelu = gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        magnitude = rows.abs()
        if self.outlier_weight is not None:
            magnitude.index_fill_(1, self.outliers, 0)
        scale = magnitude.amax(1).clamp_(min=1e-8).div_(127)
        quantized = torch.round(rows / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        accumulated = torch._int_mm(quantized, self.weight_q)
        if self.outlier_weight is not None:
            out = torch.addmm(self.bias, rows[:, self.outliers], self.outlier_weight)
        else:
            out = self.bias.expand(accumulated.shape).clone()
        out.addcmul_(accumulated.float().mul_(self.weight_scale), scale[:, None])
        if self.gelu:
            out = nn.functional.gelu(out)
        return out.reshape(*x.shape[:-1], -1)


class FusedInt8Linear(nn.Module):
    """fbgemm's dynamic int8 linear (per-tensor activations, per-channel weights); ``outliers`` stay fp32."""

    def __init__(self, linear: nn.Linear, largest: torch.Tensor, threshold: float | None, gelu: bool) -> None:
        super().__init__()
        outliers = outlier_channels(largest, threshold)
        weight, self.outlier_weight = split_outliers(linear, outliers)
        self.outliers = outliers if len(outliers) else None
        scale = channel_scales(weight)
        zero_points = torch.zeros(len(scale), dtype=torch.long)
        quantized = torch.quantize_per_channel(weight, scale.double(), zero_points, 0, torch.qint8)
        self.packed = torch.ops.quantized.linear_prepack(quantized, linear.bias.detach().float())
        self.out_features = linear.out_features
        self.gelu = gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outliers is None:
            out = torch.ops.quantized.linear_dynamic(x, self.packed, False)
        else:
            kept = x[..., self.outliers].reshape(-1, len(self.outliers))
            out = torch.ops.quantized.linear_dynamic(x.index_fill(-1, self.outliers, 0), self.packed, False)
            out = out.view(-1, self.out_features).addmm_(kept, self.outlier_weight).view(out.shape)
        return nn.functional.gelu(out) if self.gelu else out


def _split_int8_linear(
    rows: torch.Tensor,
    share: torch.Tensor,
    copies_of: torch.Tensor,
    weight_q: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor,
    gelu: bool,
) -> torch.Tensor:
    shared = rows * share
    widened = torch.cat([shared, shared[:, copies_of]], 1)
    scale = widened.abs().amax(1, keepdim=True).clamp_min(1e-8) / 127
    quantized = torch.round(widened / scale).clamp(-127, 127).to(torch.int8)
    out = torch._int_mm(quantized, weight_q).float() * (scale * weight_scale) + bias
    return nn.functional.gelu(out) if gelu else out


# One graph for every layer: shapes are symbolic, weights are arguments.
_compiled_split_int8_linear = torch.compile(_split_int8_linear, dynamic=True)


class SplitInt8Linear(nn.Module):
    """Per-token int8 where each outlier input channel is split into copies that share its value (outlier
    channel splitting, Zhao et al. 2019) instead of running in fp32: the matmul stays one ``torch._int_mm``,
    ``torch.compile`` fuses the quantize and dequantize passes around it.

    AVX2 has no VNNI: its int8 dot product adds pairs of u8 x s8 products in int16 and saturates, so there
    weights get 7 bits (|w| <= 63, what oneDNN itself does for AVX2 convolutions).
    """

    def __init__(self, linear: nn.Linear, largest: torch.Tensor, threshold: float | None, gelu: bool) -> None:
        super().__init__()
        copies = torch.ones_like(largest, dtype=torch.long)
        if threshold is not None:
            copies = torch.ceil(largest / (threshold * largest.median())).clamp_min(1).long()
        self.share = 1.0 / copies.float()
        self.copies_of = torch.repeat_interleave(torch.arange(len(copies)), copies - 1)
        self.extra_channels = len(self.copies_of)
        weight = linear.weight.detach().float()
        weight = torch.cat([weight, weight[:, self.copies_of]], 1)
        levels = 127 if torch.backends.cpu.get_cpu_capability() != "AVX2" else 63
        self.weight_scale = weight.abs().amax(1).clamp_min(1e-8) / levels
        self.weight_q = torch.round(weight / self.weight_scale[:, None]).to(torch.int8).t()
        self.bias = linear.bias.detach().float()
        self.gelu = gelu

    # True once a whole network is compiled around these: dynamo then traces the plain function inline.
    inline = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        arguments = (self.share, self.copies_of, self.weight_q, self.weight_scale, self.bias, self.gelu)
        linear = _split_int8_linear if self.inline else _compiled_split_int8_linear
        return linear(rows, *arguments).reshape(*x.shape[:-1], -1)


def input_magnitudes(model: LocalModel, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Largest |input| per channel of every encoder linear, over ``pairs``."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.network.named_modules():
        if isinstance(module, PackedLinear) and "encoder.layer" in name:

            def record(_module, inputs, _output, name=name):  # noqa: ANN001, ANN202
                largest = inputs[0].reshape(-1, inputs[0].shape[-1]).abs().amax(0)
                seen[name] = torch.maximum(seen.get(name, torch.zeros_like(largest)), largest)

            hooks.append(module.register_forward_hook(record))
    model.logits(pairs, 512, 2048)
    for hook in hooks:
        hook.remove()
    return seen


def load(folder: Path, cpu_kernels: str = "auto") -> LocalModel:
    return LocalModel(LocalWeights(folder, str(folder), "study"), "cpu", torch.float32, cpu_kernels)


def whole_network_split_int8(folder: Path, magnitudes: dict[str, torch.Tensor], threshold: float) -> LocalModel:
    """The split variant on plain (eager) linears, with the whole network compiled as one graph."""
    model = load(folder, cpu_kernels="eager")
    for name, largest in magnitudes.items():
        parent_name, attribute = name.rsplit(".", 1)
        parent = model.network.get_submodule(parent_name)
        # GELU stays the network's own module here, so inductor fuses it with the next quantize pass.
        split = SplitInt8Linear(getattr(parent, attribute), largest, threshold, gelu=False)
        split.inline = True
        setattr(parent, attribute, split)
    model.network = torch.compile(model.network, dynamic=True)
    return model


def to_int8(
    model: LocalModel,
    folder: Path,
    magnitudes: dict[str, torch.Tensor],
    threshold: float | None,
    kind: type[nn.Module] = Int8Linear,
) -> float:
    """Swap the packed encoder linears for ``kind``; returns the mean number of outlier channels (fp32 or split
    copies) per linear."""
    from transformers import AutoModelForSequenceClassification

    originals = dict(AutoModelForSequenceClassification.from_pretrained(folder).named_modules())
    kept = []
    for name, largest in magnitudes.items():
        parent_name, attribute = name.rsplit(".", 1)
        parent = model.network.get_submodule(parent_name)
        packed = getattr(parent, attribute)
        swapped = kind(originals[name], largest, threshold, packed.post_op == "gelu")
        kept.append(getattr(swapped, "extra_channels", len(outlier_channels(largest, threshold))))
        setattr(parent, attribute, swapped)
    return sum(kept) / len(kept)


def interleaved_pairs_per_second(
    models: dict[str, LocalModel], pairs: list[tuple[str, str]], rounds: int = 5
) -> dict[str, float]:
    """Median pairs/s of each model, timed in turn round after round (a shared machine's drift hits all alike)."""
    for model in models.values():
        model.logits(pairs[:8], 512, 2048)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.logits(pairs, 512, 2048)
            times[name].append(time.perf_counter() - start)
    return {name: len(pairs) / statistics.median(spent) for name, spent in times.items()}


MATMUL_OPS = {"aten::_int_mm", "mkldnn::_linear_pointwise", "aten::addmm", "aten::mm", "quantized::linear_dynamic"}


def time_breakdown(model: LocalModel, pairs: list[tuple[str, str]]) -> dict[str, float]:
    """Seconds one pass over ``pairs`` spends in matmuls, in attention and in everything else (wall time
    minus the two; the ops' own time as the torch profiler records it on the calling thread)."""
    from torch.profiler import ProfilerActivity, profile

    model.logits(pairs, 512, 2048)
    with profile(activities=[ProfilerActivity.CPU]) as profiled:
        start = time.perf_counter()
        model.logits(pairs, 512, 2048)
        wall = time.perf_counter() - start
    spent = {"matmul": 0.0, "attention": 0.0}
    for event in profiled.key_averages():
        if event.key in MATMUL_OPS:
            spent["matmul"] += event.self_cpu_time_total / 1e6
        elif "scaled_dot_product" in event.key:
            spent["attention"] += event.self_cpu_time_total / 1e6
    spent["rest"] = wall - spent["matmul"] - spent["attention"]
    return spent


def gemm_gflops(tokens: int = 4096, width: int = 384, hidden: int = 1536, repeats: int = 20) -> dict[str, float]:
    """GFLOP/s of the feed-forward matmul's shape: fp32 (torch, and oneDNN packed) and int8 (``_int_mm``)."""
    x, w = torch.randn(tokens, width), torch.randn(hidden, width)
    xq = torch.randint(-127, 127, (tokens, width), dtype=torch.int8)
    wq = torch.randint(-127, 127, (hidden, width), dtype=torch.int8).t()
    packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
    calls = {
        "fp32": lambda: x @ w.t(),
        "fp32 packed": lambda: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], ""),
        "int8": lambda: torch._int_mm(xq, wq),
    }
    rates = {}
    for name, call in calls.items():
        call()
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        rates[name] = 2 * tokens * width * hidden * repeats / (time.perf_counter() - start) / 1e9
    return rates


LABELS = {
    Int8Linear: "per-token int8",
    FusedInt8Linear: "fbgemm fused per-tensor int8",
    SplitInt8Linear: "per-token int8, compiled",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", type=Path, default=Path("/tmp/dheera-bench-models"))
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--quick", action="store_true", help="packed fp32 and the compiled split variant only")
    parser.add_argument("--whole-network", action="store_true", help="also the split variant compiled as one graph")
    args = parser.parse_args()
    # inductor's compiled-code cache does not key on the ISA cap: kernels compiled under the AVX2 cap and
    # reused without it corrupted the heap here. One cache per ISA.
    isa = torch.backends.cpu.get_cpu_capability()
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(tempfile.gettempdir()) / f"dheera-inductor-{isa}"))
    folder = args.models_dir / TRAINED_BODY
    if not (folder / "model.safetensors").is_file():
        raise SystemExit(f"{folder} not built: run benchmarks/suite.py --only fidelity first")
    data = load_noveleval(args.dataset)
    judged = batch_of_queries(data)
    speed = single_query(data).requests[0]
    speed_pairs = [(speed.query, d) for d in speed.documents]
    calibration = single_query(data, documents=4, seed=7).requests[0]
    calibration_pairs = [(calibration.query, d) for d in calibration.documents]

    def judged_logits(model: LocalModel) -> list[list[float]]:
        return [model.logits([(r.query, d) for d in r.documents], 512, 2048) for r in judged.requests]

    fp32 = load(folder)
    reference = judged_logits(fp32)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, ISA {isa}")
    print("GFLOP/s at 4096x384 @ 384x1536:", {k: round(v, 1) for k, v in gemm_gflops().items()})
    tokens = sum(len(ids) for ids in fp32._tokenize(speed_pairs, 512)["input_ids"])
    print(f"speed workload: {len(speed_pairs)} pairs, {tokens} tokens unpadded")
    magnitudes = input_magnitudes(fp32, calibration_pairs)
    models = {f"packed fp32 ({fp32.kernels})": fp32}
    variants = [(SplitInt8Linear, 3.0)]
    if not args.quick:
        variants = [(Int8Linear, threshold) for threshold in (None, 4.0, 3.0, 2.5, 2.0)]
        variants += [(FusedInt8Linear, threshold) for threshold in (None, 3.0, 2.0)]
        variants += [(SplitInt8Linear, threshold) for threshold in (None, 3.0)]
    for kind, threshold in variants:
        model = load(folder)
        kept = to_int8(model, folder, magnitudes, threshold, kind)
        label = LABELS[kind]
        if threshold is not None:
            label += f", outliers > {threshold}x median " + ("split" if kind is SplitInt8Linear else "in fp32")
        models[label] = model
        report_fidelity(label, kept, compare(judged_logits(model), reference, judged))
    if args.whole_network:
        model = whole_network_split_int8(folder, magnitudes, 3.0)
        label = "per-token int8, outliers > 3.0x median split, whole network compiled"
        models[label] = model
        report_fidelity(label, 0.0, compare(judged_logits(model), reference, judged))
    for label, rate in interleaved_pairs_per_second(models, speed_pairs).items():
        print(f"{label}: {rate:.1f} pairs/s (median of 5, interleaved)")
    if args.quick:
        for label in models:
            spent = time_breakdown(models[label], speed_pairs)
            ceiling = len(speed_pairs) / (spent["matmul"] + spent["attention"])
            shares = ", ".join(f"{part} {seconds:.2f} s" for part, seconds in spent.items())
            print(f"{label}, one pass: {shares}; ceiling with the rest free {ceiling:.1f} pairs/s")


def report_fidelity(label: str, kept: float, fields: dict) -> None:
    print(
        f"{label}: {kept:.1f} outlier channels per linear, d nDCG@10 {fields['ndcg@10_change']:+.4f}, "
        f"tau {fields['kendall_tau_mean']:.3f} (min {fields['kendall_tau_min']:.3f}), "
        f"top-10 {fields['top10_overlap_min']}/10, max |d logit| {fields['max_abs_logit_diff']:.3f}"
    )


if __name__ == "__main__":
    main()
