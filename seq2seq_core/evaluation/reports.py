"""The report files people read after an evaluation: loss curves, per-length BLEU,
attention heatmaps and a samples table (PNG, CSV and Markdown)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from seq2seq_core.runtime.files import atomic_file, write_text
from seq2seq_core.runtime.markdown import cell


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_loss_curve(history: list[dict[str, Any]], path: Path) -> Path | None:
    if not history:
        return None
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_bleu) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h.get("train_loss") for h in history], marker="o", label="train")
    ax_loss.plot(epochs, [h.get("valid_loss") for h in history], marker="o", label="valid")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("cross-entropy per token")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    ax_bleu.plot(epochs, [h.get("valid_bleu") for h in history], marker="o", color="tab:green")
    ax_bleu.set_xlabel("epoch")
    ax_bleu.set_ylabel("validation BLEU (greedy)")
    ax_bleu.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def save_figure(fig: Any, path: Path) -> None:
    """``fig`` as a PNG at ``path``, written atomically, then closed."""
    try:
        with atomic_file(path) as handle:
            fig.savefig(handle, format="png", dpi=100)
    finally:
        _pyplot().close(fig)


def write_csv(df: pd.DataFrame, path: Path) -> None:
    """``df`` as CSV without its index, written atomically."""
    with atomic_file(path) as handle:
        df.to_csv(handle, index=False, encoding="utf-8")


def write_samples(df: pd.DataFrame, reports_dir: Path, n: int) -> Path:
    # A fixed, spread-out sample (every k-th row) so that runs can be compared row by row.
    step = max(1, len(df) // max(n, 1))
    columns = [c for c in ("id", "src", "ref", "greedy", "beam") if c in df.columns]
    sample = df.iloc[::step].head(n)[columns]
    path = reports_dir / "samples.csv"
    write_csv(sample, path)
    write_text(reports_dir / "samples.md", markdown_table(sample))
    return path


def markdown_table(df: pd.DataFrame) -> str:
    header = "| " + " | ".join(cell(c) for c in df.columns) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def save_length_plot(rows: list[dict[str, Any]], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [r["bucket"] for r in rows]
    ax.bar(labels, [r["bleu"] for r in rows], color="#4c72b0")
    for x, r in enumerate(rows):
        ax.annotate(f"n={r['sentences']}", (x, r["bleu"]), ha="center", va="bottom", fontsize=8)
    ax.set_xlabel("source length (tokens)")
    ax.set_ylabel("BLEU")
    fig.tight_layout()
    save_figure(fig, path)
    return path


def save_attention_heatmap(
    weights: Any, src_pieces: list[str], tgt_pieces: list[str], path: Path, title: str
) -> Path:
    """One (target x source) attention matrix; rows are output tokens."""
    plt = _pyplot()
    height = max(2.5, 0.28 * len(tgt_pieces) + 1.2)
    width = max(3.5, 0.28 * len(src_pieces) + 1.8)
    fig, ax = plt.subplots(figsize=(width, height))
    ax.imshow(weights, cmap="viridis", aspect="auto", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(src_pieces)), src_pieces, rotation=90, fontsize=7)
    ax.set_yticks(range(len(tgt_pieces)), tgt_pieces, fontsize=7)
    ax.set_title(title, fontsize=8)
    with warnings.catch_warnings():  # DejaVu Sans has no CJK glyphs: boxes, not an error
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.tight_layout()
        save_figure(fig, path)
    return path
