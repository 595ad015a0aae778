"""Human-readable views of the ingest report: a markdown table (Prefect artifact, MLflow)
and a length histogram, so a bad corpus is visible without opening report.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from seq2seq_core.runtime.markdown import cell, code_cell


def report_markdown(report: dict[str, Any]) -> str:
    """Counts per split, drops per reason and token-length percentiles as markdown."""
    langs = report.get("languages") or {}
    lines = [
        f"# Data report: {code_cell(report['source'])} ({langs.get('src')} -> {langs.get('tgt')})",
        "",
        f"{report['pairs_read']:,} pairs read, {report['pairs_kept']:,} kept.",
        "",
        "| split | pairs | src tokens p50 / p90 / p99 / max | tgt tokens p50 / p90 / p99 / max |",
        "| --- | ---: | --- | --- |",
    ]
    for split, stats in report["splits"].items():
        cells = [_percentiles(stats.get(f"{side}_tokens")) for side in ("src", "tgt")]
        lines.append(f"| {split} | {stats['pairs']:,} | {cells[0]} | {cells[1]} |")
    lines += ["", "| drop reason | pairs |", "| --- | ---: |"]
    lines += [f"| {cell(reason)} | {n:,} |" for reason, n in report["drops"].items() if n]
    if not any(report["drops"].values()):
        lines.append("| (none) | 0 |")
    return "\n".join(lines) + "\n"


def _percentiles(stats: dict[str, float] | None) -> str:
    if not stats:
        return "-"
    return " / ".join(str(int(stats[k])) for k in ("p50", "p90", "p99", "max"))


def plot_length_histogram(
    src_tokens: np.ndarray, tgt_tokens: np.ndarray, path: Path, title: str
) -> Path:
    """Source and target token-length histograms of the train split, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    for ax, values, side in zip(axes, (src_tokens, tgt_tokens), ("source", "target"), strict=True):
        if values.size:
            top = max(int(np.percentile(values, 99.5)), 1)
            ax.hist(np.minimum(values, top), bins=min(top, 60), color="#4c72b0")
        ax.set_xlabel(f"{side} tokens")
    axes[0].set_ylabel("pairs")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
