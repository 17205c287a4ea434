"""The laptop path on the real reranker: speed against CrossEncoder.predict, and where the time goes.

    python benchmarks/laptop.py [--isa avx2] [--rounds 5] [--systems st,ours-auto,ours-fp32,ours-int8]

cross-encoder/ms-marco-MiniLM-L-12-v2 (built by ../shared/tools/real_reranker.py, cached in --models-dir),
one NovelEval query x 100 mixed-length passages (the suite's speed workload). Each round runs every system
once, each in a fresh process (one warm-up call, then ``--repeats`` timed passes, the fastest kept), in
turn: ratios are taken within a round, so a machine shared with other work moves both sides of each
ratio alike. Then, once per system, a profile of one pass (torch.profiler, self time per operator)
grouped into linears, attention, GELU, layer norm, other torch ops, and what is not torch at all
(tokenizing, padding, Python), plus the padding each batching adds. Writes a markdown report to stdout
and ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from machine import flops_per_pair, shape_of  # noqa: E402
from models import real_minilm  # noqa: E402
from suite import ISA_ENV, requests_of, run_system  # noqa: E402
from workloads import DEFAULT_DATASET, load_noveleval, single_query  # noqa: E402

SYSTEMS = {
    "st": ("st", "sentence-transformers CrossEncoder.predict (fp32)", {}),
    "ours-auto": ("ours", "dheera_local (auto)", {}),
    "ours-fp32": ("ours", "dheera_local (float32)", {"options": {"dtype": "float32"}}),
    "ours-int8": ("ours", "dheera_local (int8, opt-in)", {"options": {"dtype": "int8"}}),
}
# Operator names (torch.profiler keys) per category; anything else torch runs is "other torch ops".
CATEGORIES = {
    "linears": ("addmm", "aten::mm", "aten::bmm", "_linear_pointwise", "linear_dynamic", "aten::linear", "matmul"),
    "attention": ("scaled_dot_product", "flash_attention", "softmax", "aten::baddbmm"),
    "GELU": ("gelu",),
    "layer norm": ("layer_norm",),
    "embeddings": ("embedding",),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--isa", choices=sorted(ISA_ENV), help="run every system limited to this ISA (laptop)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per process (the fastest is kept)")
    parser.add_argument("--systems", default="st,ours-auto,ours-int8")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--models-dir", type=Path, default=Path(tempfile.gettempdir()) / "dheera-bench-models")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "laptop.md")
    parser.add_argument("--profile-one", help=argparse.SUPPRESS)  # child mode: profile one system
    parser.add_argument("--peak", action="store_true", help=argparse.SUPPRESS)  # child mode: linear peaks
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.profile_one:
        profile_one(args.profile_one, json.loads(args.spec.read_text()))
        return
    if args.peak:
        print(json.dumps(linear_peaks(json.loads(args.spec.read_text()))))
        return
    args.models_dir.mkdir(parents=True, exist_ok=True)
    model, why = real_minilm(args.models_dir)
    if model is None:
        raise SystemExit(why)
    workload = single_query(load_noveleval(args.dataset))
    env = ISA_ENV.get(args.isa or "", {})
    names = [n for n in args.systems.split(",") if n]
    spec = {"model": str(model), "requests": requests_of(workload), "repeats": args.repeats}
    rates: dict[str, list[float]] = defaultdict(list)
    rows: dict[str, dict] = {}
    pairs = len(workload.pairs)
    for round_ in range(args.rounds):
        for name in names if round_ % 2 == 0 else reversed(names):  # alternate the order: no system always first
            system, label, extra = SYSTEMS[name]
            result = run_system(system, {**spec, **extra}, f"round {round_ + 1}: {label}", env=env)
            if "error" in result:
                raise SystemExit(f"{label} failed: {result['error']}")
            rates[name].append(pairs / min(result["latencies"]))
            rows[name] = result
    lines = speed_table(names, rates, rows, args) if args.rounds else []
    if not args.no_profile:
        lines += profile_table(names, spec, env, model, workload)
    report = "\n".join(lines) + "\n"
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)


def speed_table(names: list[str], rates: dict[str, list[float]], rows: dict[str, dict], args) -> list[str]:  # noqa: ANN001
    from machine import device_name

    isa = f"capped to {args.isa.upper()} ({' '.join(f'{k}={v}' for k, v in ISA_ENV[args.isa].items())})"
    lines = [
        f"CPU: {device_name('cpu')}, {'' if args.isa else 'uncapped: its own ISA'}{isa if args.isa else ''}; "
        f"torch threads: all cores; {args.rounds} rounds x each system in its own process, fastest of "
        f"{args.repeats} passes per process; ratios within each round.",
        "",
        "| system | precision | kernels | pairs/s (median of rounds) | x ST per round (median, min–max) "
        "| peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        ratios = [mine / st for mine, st in zip(rates[name], rates.get("st", rates[name]), strict=True)]
        row = rows[name]
        lines.append(
            f"| {SYSTEMS[name][1]} | {row.get('precision')} | {row.get('kernels') or 'torch eager'} "
            f"| {statistics.median(rates[name]):.1f} | {statistics.median(ratios):.2f}x "
            f"({min(ratios):.2f}–{max(ratios):.2f}) | {row.get('peak_rss_mb', 0):.0f} |"
        )
    return lines


def profile_table(names: list[str], spec: dict, env: dict[str, str], model: Path, workload) -> list[str]:  # noqa: ANN001
    import os
    import subprocess

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model))
    request = workload.requests[0]
    encoded = tokenizer([request.query] * len(request.documents), request.documents, truncation=True, max_length=512)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    layers, hidden, intermediate = shape_of(json.loads((model / "config.json").read_text()))
    linear_gflop = sum(flops_per_pair(n, layers, hidden, intermediate) for n in lengths) / 1e9
    lines = [
        "",
        f"Where one pass goes ({sum(lengths):,} tokens; linear layers {linear_gflop:.0f} GFLOP at the real lengths)."
        " Self time per operator from torch.profiler, one profiled pass after a warm-up, each system in its own"
        " process; 'not torch' is the call's wall time minus every torch operator's: tokenizing, padding, Python.",
        "",
        "| system | wall s | pairs/s | x ST | linears s | attention s | GELU s | layer norm s | embeddings s "
        "| other torch s | not torch s | padded tokens | linear GFLOP/s | % of peak |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    st_wall = None
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "shape.json"
        path.write_text(json.dumps({"hidden": hidden, "intermediate": intermediate}))
        peaks = json.loads(
            subprocess.run(
                [sys.executable, __file__, "--peak", "--spec", str(path)], capture_output=True, text=True, check=True,
                env={**os.environ, **env},
            ).stdout.strip().splitlines()[-1]
        )  # fmt: skip
        lines[1] += (
            f" Linear peak measured in the same environment (best of torch's and oneDNN's packed fp32 linear, and"
            f" fbgemm's dynamic int8 linear, at this model's three linear shapes, 2,048 tokens): fp32"
            f" {peaks['float32']:.0f} GFLOP/s, int8 {peaks['int8']:.0f} GFLOP/s; '% of peak' is the row's linear"
            f" GFLOP/s (at the real lengths, so padding counts against it) over its precision's peak."
        )
        for name in names:
            system, label, extra = SYSTEMS[name]
            path = Path(scratch) / "spec.json"
            path.write_text(json.dumps({**spec, **extra, "system": system}))
            done = subprocess.run(
                [sys.executable, __file__, "--profile-one", name, "--spec", str(path)],
                capture_output=True,
                text=True,
                env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", **env},
            )
            if done.returncode != 0:
                lines.append(f"| {label} | failed: {done.stderr.strip().splitlines()[-1:]} |")
                continue
            p = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"  profiled {label}: {p}", file=sys.stderr, flush=True)
            cats = p["categories"]
            st_wall = p["wall"] if name == "st" else st_wall
            versus = f"{st_wall / p['wall']:.2f}x" if st_wall else "—"
            lines.append(
                f"| {label} | {p['wall']:.2f} | {len(lengths) / p['wall']:.1f} | {versus} "
                f"| {cats.get('linears', 0):.2f} | {cats.get('attention', 0):.2f} "
                f"| {cats.get('GELU', 0):.2f} | {cats.get('layer norm', 0):.2f} | {cats.get('embeddings', 0):.2f} "
                f"| {cats.get('other torch ops', 0):.2f} | {p['not_torch']:.2f} | {p['padded_tokens']:,} "
                f"| {linear_gflop / max(cats.get('linears', 0), 1e-9):.0f} "
                f"| {100 * linear_gflop / max(cats.get('linears', 0), 1e-9) / peaks[precision_of(name)]:.0f}% |"
            )
    return lines


def precision_of(name: str) -> str:
    return "int8" if name.endswith("int8") else "float32"


def linear_peaks(shape: dict[str, int], tokens: int = 2048, repeats: int = 10) -> dict[str, float]:
    """Child process: GFLOP/s of the best fp32 linear (torch's, oneDNN's packed) and of fbgemm's dynamic
    int8 linear (what ``dtype="int8"`` runs), over the model's three linear shapes, weighted by their FLOPs."""
    import time
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    hidden, intermediate = shape["hidden"], shape["intermediate"]
    # (inputs, outputs, how many per layer): Q, K, V and the attention output; the feed-forward's two.
    shapes = [(hidden, hidden, 4), (hidden, intermediate, 1), (intermediate, hidden, 1)]

    def rate(make) -> float:  # noqa: ANN001
        flops, seconds = 0.0, 0.0
        for inputs, outputs, count in shapes:
            call = make(inputs, outputs)
            call()
            best = float("inf")
            for _ in range(3):
                start = time.perf_counter()
                for _ in range(repeats):
                    call()
                best = min(best, (time.perf_counter() - start) / repeats)
            flops += 2 * tokens * inputs * outputs * count
            seconds += best * count
        return flops / seconds / 1e9

    def plain(inputs: int, outputs: int):  # noqa: ANN202
        x, linear = torch.randn(tokens, inputs), torch.nn.Linear(inputs, outputs)
        return lambda: linear(x)

    def packed(inputs: int, outputs: int):  # noqa: ANN202
        x, linear = torch.randn(tokens, inputs), torch.nn.Linear(inputs, outputs)
        weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        bias = linear.bias.detach()
        return lambda: torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    def int8(inputs: int, outputs: int):  # noqa: ANN202
        x = torch.randn(tokens, inputs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            linear = quantize_dynamic(
                torch.nn.Sequential(torch.nn.Linear(inputs, outputs)), {torch.nn.Linear: per_channel_dynamic_qconfig}
            )
        return lambda: linear(x)

    with torch.no_grad():
        fp32 = max(rate(plain), rate(packed) if torch.backends.mkldnn.is_available() else 0.0)
        return {"float32": fp32, "int8": rate(int8)}


def profile_one(name: str, spec: dict) -> None:
    """Child process: profile one pass of ``name`` and print its breakdown as one JSON line."""
    import time

    import torch
    from torch.profiler import ProfilerActivity, profile

    request = spec["requests"][0]
    pairs = [(request["query"], d) for d in request["documents"]]
    if spec["system"] == "st":
        from sentence_transformers import CrossEncoder

        encoder = CrossEncoder(spec["model"], device="cpu", local_files_only=True)

        padded_per_batch = count_st_padding(encoder)

        def call() -> None:
            padded_per_batch.clear()
            encoder.predict(pairs, activation_fn=torch.nn.Identity())

    else:
        import dheera_local

        options = {"cache": False, "raw_scores": True, "device": "cpu", **spec.get("options", {})}

        def call() -> None:
            dheera_local.rerank(spec["model"], request["query"], request["documents"], **options)

        padded_per_batch = None
    call()  # load and warm up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        call()
        wall = time.perf_counter() - started
    # sentence-transformers' as it ran; ours as its planner cuts them (the same planner the backend calls).
    padded = sum(padded_per_batch) if padded_per_batch else ours_padded_tokens(spec["model"], pairs)
    categories: dict[str, float] = defaultdict(float)
    total = 0.0
    for event in prof.key_averages():
        seconds = event.self_cpu_time_total / 1e6
        total += seconds
        category = next((c for c, keys in CATEGORIES.items() if any(k in event.key for k in keys)), None)
        categories[category or "other torch ops"] += seconds
    print(json.dumps({"wall": wall, "categories": categories, "not_torch": max(0.0, wall - total),
                      "padded_tokens": padded}))  # fmt: skip


def pair_lengths(tokenizer, pairs: list[tuple[str, str]]) -> list[int]:  # noqa: ANN001
    encoded = tokenizer([q for q, _ in pairs], [d for _, d in pairs], truncation=True, max_length=512)
    return [len(ids) for ids in encoded["input_ids"]]


def count_st_padding(encoder) -> list[int]:  # noqa: ANN001
    """The padded tokens of each batch CrossEncoder.predict runs, read from its own features (how it sorts and
    pads changes between versions: 6.x sorts pairs by character length before cutting batches of 32)."""
    seen: list[int] = []
    preprocess = encoder.preprocess

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        features = preprocess(*args, **kwargs)
        seen.append(int(features["input_ids"].numel()))
        return features

    encoder.preprocess = counted
    return seen


def ours_padded_tokens(model: str, pairs: list[tuple[str, str]]) -> int:
    """dheera_local sorts pairs by length and groups them under a 2,048 padded-token budget (CPU), each batch
    padded to its longest pair rounded up to 16 tokens."""
    from transformers import AutoTokenizer

    from dheera_local._local.backend import default_batch_tokens
    from dheera_local._local.token_budget import plan_batches
    from dheera_local._local.torch_model import CPU_WIDTH_STEP

    lengths = pair_lengths(AutoTokenizer.from_pretrained(model), pairs)
    batches = plan_batches(lengths, default_batch_tokens("cpu"))
    # Widths are rounded up to CPU_WIDTH_STEP tokens, never past the window (oneDNN keeps memory per shape).
    widths = [min(-(-max(lengths[i] for i in batch) // CPU_WIDTH_STEP) * CPU_WIDTH_STEP, 512) for batch in batches]
    return sum(width * len(batch) for width, batch in zip(widths, batches, strict=True))


if __name__ == "__main__":
    main()
