"""The benchmark's outputs: a JSON file with every number, markdown tables of the ratios, PNG charts.

    python benchmarks/report.py benchmarks/published/NAME/results.json   # re-render the tables and charts

A run writes ``results.json``, ``results.md`` and the charts into one folder per run; the tables and
charts are drawn from the JSON alone, so a committed (``--publish``) run can be re-rendered and its
figures checked.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PUBLISHED = HERE / "published"
# Fidelity rows keep their logits (the scatter and every fidelity figure can be recomputed from
# the JSON); twins' logits say nothing, and the speed rows would make the file large.
KEEP_LOGITS = {"fidelity", "quality"}


def machine_description(suite: Any) -> dict[str, Any]:
    import os

    import torch

    import dheera_local
    from dheera_local._local.hardware import cpu_features

    return {
        "cpu": suite.cpu_name,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "dheera_local": dheera_local.__version__,
        "cpu_features": cpu_features().__dict__,
        "matmul_peak_gflops": {k: round(v, 1) for k, v in suite.peaks.items()},
        "isa": suite.args.isa,
        "isa_env": suite.isa_env,
        "gpu": suite.gpu or None,
    }


# --- table cells ----------------------------------------------------------------------------------

Cell = Callable[[dict[str, Any], dict[str, Any] | None], str]


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _times(field: str) -> Cell:
    def cell(row: dict[str, Any], _baseline: dict[str, Any] | None) -> str:
        return f"{row[field]:.2f}x" if row.get(field) else ""

    return cell


def _ratio(field: str) -> Cell:
    def cell(row: dict[str, Any], baseline: dict[str, Any] | None) -> str:
        if not baseline or not row.get(field) or not baseline.get(field):
            return "—"
        return f"{row[field] / baseline[field]:.2f}x"

    return cell


def _value(field: str, digits: int = 1) -> Cell:
    return lambda row, _: _fmt(row.get(field), digits)


def _signed(field: str, digits: int = 4) -> Cell:
    return lambda row, _: "—" if row.get(field) is None else f"{row[field]:+.{digits}f}"


def _percent(row: dict[str, Any], _: dict[str, Any] | None) -> str:
    return f"{100 * row['peak_fraction']:.0f}%" if row.get("peak_fraction") else "—"


def _overlap(row: dict[str, Any], _: dict[str, Any] | None) -> str:
    return "—" if row.get("top10_overlap_min") is None else f"{row['top10_overlap_min']}/{row.get('top10_size', 10)}"


SYSTEM: list[tuple[str, Cell]] = [
    ("system", _value("label")),
    ("model", _value("model")),
    ("precision", _value("precision")),
    ("kernels", _value("kernels")),
]
FIDELITY: list[tuple[str, Cell]] = [
    ("nDCG@10", _value("ndcg@10", 4)),
    ("Δ nDCG@10 vs fp32", _signed("ndcg@10_change")),
    ("Kendall τ mean", _value("kendall_tau_mean", 4)),
    ("τ min", _value("kendall_tau_min", 4)),
    ("top-10 overlap (min)", _overlap),
    ("max abs Δ logit", _value("max_abs_logit_diff", 4)),
]


def _speed(ratio: str) -> list[tuple[str, Cell]]:
    return [
        ("pairs/s", _value("pairs_per_s")),
        (ratio, _ratio("pairs_per_s")),
        ("p50 ms", _value("p50_ms")),
        ("p95 ms", _value("p95_ms")),
        ("peak RSS MB", _value("rss_mb", 0)),
    ]


# section: (title, the baseline row's key, columns)
SECTIONS: dict[str, tuple[str, str, list[tuple[str, Cell]]]] = {
    "speed": (
        "Local speed, one query x 100 mixed-length documents",
        "st-fp32",
        [*SYSTEM, *_speed("vs ST"), ("RSS vs ST", _ratio("rss_mb")), ("% of matmul peak", _percent)],
    ),
    "fidelity": (
        "Fidelity against fp32 (sentence-transformers), NovelEval queries x their candidates",
        "",
        [*SYSTEM, *FIDELITY],
    ),
    "server": (
        "Servers under concurrent clients (same pairs)",
        "ours-auto",
        [*SYSTEM, *_speed("vs in-process"), ("% of matmul peak", _percent)],
    ),
    "quality": ("Ranking quality on NovelEval (real model)", "st-fp32", [*SYSTEM, ("nDCG@10", _value("ndcg@10", 4))]),
    "batch": (
        "File scoring, every pair of a JSONL file, end to end",
        "st-pairs",
        [
            *SYSTEM[:3],
            ("pairs/s", _value("pairs_per_s")),
            ("vs ST", _ratio("pairs_per_s")),
            ("peak RSS MB", _value("rss_mb", 0)),
            ("RSS vs ST", _ratio("rss_mb")),
        ],
    ),  # fmt: skip
    "gpu": (
        "GPU, one query x 100 mixed-length documents",
        "st-fp32",
        [
            *SYSTEM,
            *_speed("vs ST fp32")[:4],
            ("vs ST, same precision", _times("vs_st_same_precision")),
            ("% of the card's matmul peak", _percent),
        ],
    ),
}


# --- markdown -------------------------------------------------------------------------------------


def title_suffix(machine: dict[str, Any]) -> str:
    if not machine.get("isa"):
        return ""
    env = " ".join(f"{k}={v}" for k, v in machine.get("isa_env", {}).items())
    return f" — laptop stand-in: {machine['isa'].upper()} only ({env})"


def machine_line(machine: dict[str, Any]) -> str:
    line = (
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} "
        f"({machine['torch_threads']} threads); matmul peak GFLOP/s: {machine['matmul_peak_gflops']}"
    )
    if machine.get("gpu"):
        gpu = machine["gpu"]
        line += f"; GPU: {gpu['name']} ({gpu['device']}), matmul peak GFLOP/s: {gpu['matmul_peak_gflops']}"
        if gpu.get("tokenize_ms_per_pass") is not None:
            line += f"; tokenizing one pass on the CPU: {gpu['tokenize_ms_per_pass']} ms"
    return line


def table(section: str, rows: list[dict[str, Any]]) -> list[str]:
    title, baseline_key, columns = SECTIONS[section]
    members = [r for r in rows if r.get("section") == section]
    if not members:
        return []
    lines = [f"### {title}", "", "| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in members:
        if "error" in row:
            failed = f"| {row['label']} | {row.get('model', '')} | failed: {row['error'][:100]} |"
            lines.append(failed + " |" * (len(columns) - 3))
            continue
        baseline = next(
            (
                r
                for r in members
                if r.get("model") == row.get("model") and r.get("key") == baseline_key and "error" not in r
            ),
            None,
        )
        lines.append("| " + " | ".join(cell(row, baseline) for _, cell in columns) + " |")
    return [*lines, ""]


def one_liners(rows: list[dict[str, Any]]) -> list[str]:
    """The cache and remote sections, one sentence each."""
    lines = []
    for row in rows:
        if row.get("section") == "cache" and "uncached_wall" in row and "p50_ms" in row:
            lines.append(
                f"Cache: 100 fully cached documents, p50 {row['p50_ms']:.2f} ms, p95 {row['p95_ms']:.2f} ms; "
                f"{row.get('speedup_vs_uncached', 0):,.0f}x faster than the same call uncached "
                f"({row['uncached_wall'] * 1000:,.0f} ms)."
            )
        if row.get("section") == "cache" and "added_ms_vs_in_process" in row:
            lines.append(
                f"Cache over HTTP: the same fully cached request through the server (keep-alive http.client), p50 "
                f"{row['p50_ms']:.2f} ms vs {row['in_process_p50_ms']:.2f} ms in-process, interleaved "
                f"({row['added_ms_vs_in_process']:+.2f} ms)."
            )
        if row.get("section") == "remote" and "sequential_wall" in row:
            lines.append(
                f"Remote: 1,000 documents against a TEI-format endpoint (32 per request, 50 ms each): "
                f"{row['wall']:.2f} s with dheera_local vs {row['sequential_wall']:.2f} s one batch after another "
                f"({row['speedup_vs_sequential']:.1f}x)."
            )
    return lines


def llm_table(results: list[dict[str, Any]]) -> list[str]:
    """The llm section: ours against each LLM reranker's reference code, on full-shape twins."""
    if not results:
        return []
    lines = [
        "### LLM rerankers (full-shape twins: their speed is real, their scores are not)", "",
        "| twin | pairs | device, precision | reference s | ours s | x reference | peak RSS ours / reference "
        "| max abs score difference |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in results:
        probe = f" ({r['speedup_without_probe']:.2f}x without its probe pass)" if "speedup_without_probe" in r else ""
        lines.append(
            f"| {r['twin']} | {r['pairs']} | {r['device']}, {r['dtype']} | {r['reference_s']:.1f} | {r['ours_s']:.1f} "
            f"| {r['speedup']:.2f}x{probe} | {r['ours_peak_rss'] / 2**30:.2f} / {r['reference_peak_rss'] / 2**30:.2f}"
            f" GiB ({r['rss_ratio']:.2f}x) | {r['max_abs_score_diff']:.1e} |"
        )
    return [*lines, ""]


def markdown(data: dict[str, Any], charts: list[Path]) -> str:
    machine, rows = data["machine"], data["rows"]
    lines = [f"## Benchmarks, {data.get('date', '')}{title_suffix(machine)}", "", machine_line(machine), ""]
    if data.get("quick"):
        lines += ["Quick run (`--quick`): one repeat, fewer peers.", ""]
    for section in SECTIONS:
        lines += table(section, rows)
    lines += one_liners(rows)
    lines += llm_table(data.get("llm", []))
    lines += [f"Note: {note}" for note in data.get("notes", [])]
    lines += ["", *(f"![{chart.stem}]({chart.name})" for chart in charts)]
    return "\n".join(lines) + "\n"


# --- files ----------------------------------------------------------------------------------------


def render(data: dict[str, Any], folder: Path) -> str:
    """Write ``results.md`` and the charts into ``folder`` from the run's data; returns the markdown."""
    from charts import draw_all

    charts = draw_all(data, folder)
    text = markdown(data, charts)
    (folder / "results.md").write_text(text)
    return text


def write_report(suite: Any, out: Path, publish: str | None = None) -> Path:
    """Write this run's folder under ``out`` (and its copy under published/NAME); returns the folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = out / (stamp + (f"-{suite.args.isa}" if suite.args.isa else ""))
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{k: v for k, v in row.items() if k != "logits" or row.get("section") in KEEP_LOGITS} for row in suite.rows]
    data = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_description(suite),
        "quick": suite.quick,
        "rows": rows,
        "notes": suite.notes,
        "llm": suite.llm,
    }
    (folder / "results.json").write_text(json.dumps(data, indent=1))
    print(render(data, folder))
    print(f"wrote {folder}/ (results.json, results.md, charts)")
    if publish:
        target = PUBLISHED / publish
        shutil.copytree(folder, target, dirs_exist_ok=True)
        print(f"published to {target}/ (commit it)")
    return folder


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: python benchmarks/report.py RESULTS.json  (re-renders results.md and the charts)")
    source = Path(sys.argv[1])
    print(render(json.loads(source.read_text()), source.parent))


if __name__ == "__main__":
    main()
