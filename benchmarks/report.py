"""The benchmark's outputs: a JSON file with every number, and a markdown table of the ratios."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any


def machine_description(peaks: dict[str, float]) -> dict[str, Any]:
    import os

    import torch

    import dheera_local

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from dheera_local._hardware import cpu_features

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "dheera_local": dheera_local.__version__,
        "cpu_features": cpu_features().__dict__,
        "matmul_peak_gflops": {k: round(v, 1) for k, v in peaks.items()},
    }


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _ratio(row: dict[str, Any], baseline: dict[str, Any] | None) -> str:
    if not baseline or not row.get("pairs_per_s") or not baseline.get("pairs_per_s"):
        return "—"
    return f"{row['pairs_per_s'] / baseline['pairs_per_s']:.2f}x"


def markdown(rows: list[dict[str, Any]], machine: dict[str, Any], notes: list[str]) -> str:
    lines = [
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} "
        f"({machine['torch_threads']} threads); matmul peak GFLOP/s: {machine['matmul_peak_gflops']}",
        "",
    ]
    sections = {
        "speed": ("Local speed, one query x 100 mixed-length documents", "vs ST"),
        "fidelity": ("Fidelity against fp32 on the same pairs (trained body)", "vs ST"),
        "server": ("Servers under concurrent clients (same pairs)", "vs in-process"),
        "quality": ("Ranking quality on NovelEval (real model)", "vs ST"),
        "batch": ("File scoring, every pair of a JSONL file, end to end", "vs ST"),
    }
    header = (
        "| system | model | precision | pairs/s | {ratio} | p50 ms | p95 ms | peak MB | % of peak "
        "| top-10 same | Kendall τ | max abs Δ |"
    )
    for section, (title, ratio_name) in sections.items():
        members = [r for r in rows if r.get("section") == section]
        if not members:
            continue
        lines += [f"### {title}", "", header.format(ratio=ratio_name), "|" + "---|" * 12]
        for row in members:
            baseline = next((r for r in members if r.get("model") == row.get("model") and "error" not in r), None)
            if "error" in row:
                lines.append(f"| {row['label']} | {row.get('model', '')} | failed: {row['error'][:80]} |" + " |" * 9)
                continue
            memory = row.get("server_peak_rss_mb", row.get("peak_rss_mb"))
            fraction = f"{100 * row['peak_fraction']:.0f}%" if row.get("peak_fraction") else "—"
            extra = f" (nDCG@10 {row['ndcg@10']:.3f})" if row.get("ndcg@10") is not None else ""
            lines.append(
                f"| {row['label']}{extra} | {row['model']} | {row.get('precision', '')} | "
                f"{_fmt(row.get('pairs_per_s'))} | {_ratio(row, baseline)} | {_fmt(row.get('p50_ms'))} | "
                f"{_fmt(row.get('p95_ms'))} | {_fmt(memory, 0)} | "
                f"{fraction} | {_fmt(row.get('top10_same'))} | {_fmt(row.get('kendall_tau'), 3)} | "
                f"{_fmt(row.get('max_abs_diff'), 4)} |"
            )
        lines.append("")
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
    lines += [f"Note: {note}" for note in notes]
    return "\n".join(lines) + "\n"


def write_report(suite: Any, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    machine = machine_description(suite.peaks)
    rows = [{k: v for k, v in row.items() if k != "logits"} for row in suite.rows]
    data = {"machine": machine, "quick": suite.quick, "rows": rows, "notes": suite.notes}
    (out / f"{stamp}.json").write_text(json.dumps(data, indent=2))
    table = markdown(suite.rows, machine, suite.notes)
    (out / f"{stamp}.md").write_text(table)
    print(table)
    print(f"wrote {out / f'{stamp}.json'} and {out / f'{stamp}.md'}")
