"""PNG charts of a run, drawn from its JSON rows alone (matplotlib, non-interactive Agg backend).

* ``speed.png``: pairs/s per system for each model, each bar annotated with its kernels and, on
  the model fidelity was judged on, its nDCG@10 change and top-10 overlap against fp32;
* ``server-latency.png``: the per-request latency CDF of the servers under concurrent clients;
* ``bf16-vs-fp32.png``: dheera_local's scores (auto precision) against the fp32 reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: a benchmark machine or CI has none

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

Row = dict[str, Any]


def draw_all(data: dict[str, Any], folder: Path) -> list[Path]:
    """Every chart that this run has data for; returns the files written."""
    rows = [row for row in data["rows"] if "error" not in row]
    drawn = [
        speed_chart(rows, folder / "speed.png"),
        latency_cdf(rows, folder / "server-latency.png"),
        score_scatter(rows, folder / "bf16-vs-fp32.png"),
    ]
    return [path for path in drawn if path is not None]


def _in_order(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _fidelity_note(row: Row | None, judged: bool) -> str:
    if not judged:
        return "fidelity: n/a (random weights)"
    if row is None:
        return "fidelity: not measured"
    if row.get("ndcg@10_change") is None:
        return ""
    overlap = f"top-10 overlap ≥ {row['top10_overlap_min']}/{row.get('top10_size', 10)} per query"
    return f"ΔnDCG@10 {row['ndcg@10_change']:+.4f}, {overlap}"


def speed_chart(rows: list[Row], path: Path) -> Path | None:
    speed = [r for r in rows if r.get("section") == "speed" and r.get("pairs_per_s")]
    if not speed:
        return None
    fidelity = {(r["model"], r.get("key")): r for r in rows if r.get("section") == "fidelity"}
    judged = {model for model, _ in fidelity}
    models = _in_order([r["model"] for r in speed])
    heights = [sum(r["model"] == m for r in speed) for m in models]
    figure, axes = plt.subplots(
        len(models),
        1,
        figsize=(11, 1.2 + 0.62 * sum(heights) + 0.5 * len(models)),
        height_ratios=heights,
        squeeze=False,
    )
    for ax, model in zip(axes[:, 0], models, strict=True):
        members = [r for r in speed if r["model"] == model]
        baseline = next((r for r in members if r.get("key") == "st-fp32"), None)
        values = [r["pairs_per_s"] for r in members]
        positions = np.arange(len(members))[::-1]
        colors = ["tab:orange" if str(r.get("key", "")).startswith("ours") else "tab:gray" for r in members]
        ax.barh(positions, values, color=colors)
        ax.set_yticks(positions, [r["label"] for r in members], fontsize=8)
        ax.set_xlim(0, max(values) * 2.3)
        ax.set_title(model, fontsize=10, loc="left")
        for y, row in zip(positions, members, strict=True):
            ratio = f" ({row['pairs_per_s'] / baseline['pairs_per_s']:.2f}x ST)" if baseline else ""
            note = _fidelity_note(fidelity.get((model, row.get("key"))), model in judged)
            text = f"{row['pairs_per_s']:,.1f} pairs/s{ratio}\n{row.get('precision')}, {row.get('kernels')}; {note}"
            ax.text(row["pairs_per_s"], y, "  " + text, va="center", fontsize=7)
    axes[-1, 0].set_xlabel("pairs/s (higher is better)")
    figure.suptitle("Local speed, one query x 100 documents: same pairs, one run", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def latency_cdf(rows: list[Row], path: Path) -> Path | None:
    servers = [r for r in rows if r.get("section") == "server" and r.get("clients", 1) > 1 and r.get("latencies")]
    if not servers:
        return None
    figure, ax = plt.subplots(figsize=(8, 4.5))
    for row in servers:
        latencies = np.sort(np.asarray(row["latencies"]) * 1000)
        fraction = np.arange(len(latencies) + 1) / len(latencies)  # from 0, at the fastest request
        label = f"{row['label']}: p50 {np.median(latencies):,.0f} ms, {row.get('pairs_per_s', 0):.1f} pairs/s"
        ax.step(np.concatenate([latencies[:1], latencies]), fraction, where="post", label=label)
    ax.set_xlabel("request latency, ms (20 documents per request)")
    ax.set_ylabel("fraction of requests")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(
        f"Server latency under {servers[0]['clients']} concurrent clients ({servers[0]['model']})", fontsize=10
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def score_scatter(rows: list[Row], path: Path) -> Path | None:
    fidelity = [r for r in rows if r.get("section") == "fidelity" and r.get("logits")]
    model = next((r["model"] for r in fidelity), None)  # the first: the trained body with its fitted head
    reference = next((r for r in fidelity if r["model"] == model and r.get("key") == "st-fp32"), None)
    ours = next((r for r in fidelity if r["model"] == model and r.get("key") == "ours-auto"), None)
    if reference is None or ours is None:
        return None
    x = np.concatenate([np.asarray(scores, dtype=float) for scores in reference["logits"]])
    y = np.concatenate([np.asarray(scores, dtype=float) for scores in ours["logits"]])
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    left.scatter(x, y, s=6, alpha=0.6)
    low, high = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    left.plot([low, high], [low, high], color="black", linewidth=0.8)
    left.set_xlabel("fp32 reference logit (sentence-transformers)")
    left.set_ylabel(f"dheera_local logit ({ours.get('precision')}, {ours.get('kernels')})")
    right.scatter(x, y - x, s=6, alpha=0.6)
    right.axhline(0, color="black", linewidth=0.8)
    right.set_xlabel("fp32 reference logit")
    right.set_ylabel("dheera_local − fp32")
    summary = (
        f"{model}: {len(x)} pairs; max |Δ| {ours.get('max_abs_logit_diff', float('nan')):.4f}, "
        f"Kendall τ mean {ours.get('kendall_tau_mean', float('nan')):.4f}, {_fidelity_note(ours, judged=True)}"
    )
    figure.suptitle(summary, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
