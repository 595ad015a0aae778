"""Test-set scoring with sacrebleu, plus the report files people read after a run.

Scores are stored with their sacrebleu signatures and a hash of the test set, because a
BLEU number without both cannot be compared with another one (Post, 2018).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import sacrebleu

from seq2seq_core.config import PipelineConfig
from seq2seq_core.data import read_prepared_split


def eval_set_digest(sources: list[str], references: list[str]) -> str:
    """Identifies the exact test data a score was computed on (order included)."""
    digest = hashlib.sha256()
    for src, ref in zip(sources, references, strict=True):
        digest.update(src.encode("utf-8") + b"\t" + ref.encode("utf-8") + b"\n")
    return digest.hexdigest()


def score_translations(hypotheses: list[str], references: list[str]) -> dict[str, Any]:
    """Corpus BLEU, chrF and TER on detokenised text, each with its signature."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    refs = [references]
    bleu, chrf, ter = sacrebleu.BLEU(), sacrebleu.CHRF(), sacrebleu.TER()
    bleu_score = bleu.corpus_score(hypotheses, refs)
    chrf_score = chrf.corpus_score(hypotheses, refs)
    ter_score = ter.corpus_score(hypotheses, refs)
    return {
        "bleu": round(bleu_score.score, 4),
        "chrf": round(chrf_score.score, 4),
        "ter": round(ter_score.score, 4),
        "bleu_brevity_penalty": round(bleu_score.bp, 4),
        "signatures": {
            "bleu": str(bleu.get_signature()),
            "chrf": str(chrf.get_signature()),
            "ter": str(ter.get_signature()),
        },
    }


def _save_loss_curve(history: list[dict[str, Any]], path: Path) -> Path | None:
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _write_samples(df: pd.DataFrame, reports_dir: Path, n: int) -> Path:
    # A fixed, spread-out sample (every k-th row) so that runs can be compared row by row.
    step = max(1, len(df) // max(n, 1))
    sample = df.iloc[::step].head(n)[["id", "src", "ref", "hyp"]]
    path = reports_dir / "samples.csv"
    sample.to_csv(path, index=False)
    (reports_dir / "samples.md").write_text(_markdown_table(sample), encoding="utf-8")
    return path


def _markdown_table(df: pd.DataFrame) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(df.columns) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def evaluate_split(cfg: PipelineConfig, split: str = "test") -> dict[str, Any]:
    """Decode a prepared split with the best checkpoint and write metrics, samples, plots."""
    from seq2seq_core.stages import write_json
    from seq2seq_core.translator import Translator

    reports_dir = Path(cfg.evaluate.reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = Path(cfg.train.checkpoint_dir)
    translator = Translator.load(
        checkpoint_dir / "best.pt", Path(cfg.vocab.out_dir), cfg.decode, device="cpu"
    )
    df = read_prepared_split(Path(cfg.data.prepared_dir), split).rename(columns={"tgt": "ref"})
    sources, references = df["src"].tolist(), df["ref"].tolist()

    start = time.perf_counter()
    hypotheses = translator.translate(sources)
    seconds = time.perf_counter() - start
    df["hyp"] = hypotheses

    scores = score_translations(hypotheses, references)
    metrics = {
        split: {
            **scores,
            "sentences": len(df),
            "test_set_sha256": eval_set_digest(sources, references),
            "decode": {"method": "greedy", "seconds": round(seconds, 3)},
            "sentences_per_s": round(len(df) / seconds, 2) if seconds > 0 else None,
        }
    }
    metrics_path = reports_dir / "metrics.json"
    write_json(metrics_path, metrics)
    samples_path = _write_samples(df, reports_dir, cfg.evaluate.samples)

    history_path = checkpoint_dir / "history.json"
    history = json.loads(history_path.read_text()) if history_path.exists() else []
    pd.DataFrame(history).to_csv(reports_dir / "train_history.csv", index=False)
    plots = [p for p in [_save_loss_curve(history, reports_dir / "plots" / "loss.png")] if p]
    return {
        "metrics_path": str(metrics_path),
        "metrics": metrics,
        "samples_path": str(samples_path),
        "plot_paths": [str(p) for p in plots],
    }
