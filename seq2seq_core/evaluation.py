"""Test-set scoring with sacrebleu and the evaluate stage's outputs.

Scores are stored with their sacrebleu signatures and a hash of the test set, because a
BLEU number without both cannot be compared with another one (Post, 2018).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import sacrebleu

from seq2seq_core import eval_reports
from seq2seq_core.cleaning import count_tokens
from seq2seq_core.config import PipelineConfig
from seq2seq_core.data import read_prepared_split
from seq2seq_core.markdown import cell, code_cell

# sacrebleu's tokenizer per target language: 13a assumes spaces between words.
_BLEU_TOKENIZERS = {"zh": "zh", "ja": "char", "ko": "char", "th": "char"}
HYPOTHESES_FILE = "test_hypotheses.txt"
REFERENCES_FILE = "test_references.txt"


def bleu_tokenizer(lang: str | None) -> str:
    return _BLEU_TOKENIZERS.get((lang or "").lower(), "13a")


def eval_set_digest(sources: list[str], references: list[str]) -> str:
    """Identifies the exact test data a score was computed on (order included)."""
    digest = hashlib.sha256()
    for src, ref in zip(sources, references, strict=True):
        digest.update(src.encode("utf-8") + b"\t" + ref.encode("utf-8") + b"\n")
    return digest.hexdigest()


def score_translations(
    hypotheses: list[str], references: list[str], tokenize: str = "13a"
) -> dict[str, Any]:
    """Corpus BLEU, chrF and TER on detokenised text, each with its signature."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    refs = [references]
    bleu = sacrebleu.BLEU(tokenize=tokenize)
    chrf = sacrebleu.CHRF()
    ter = sacrebleu.TER(asian_support=tokenize != "13a")
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


def bleu_by_length(
    sources: list[str],
    hypotheses: list[str],
    references: list[str],
    width: int,
    tokenize: str = "13a",
    max_buckets: int = 6,
) -> list[dict[str, Any]]:
    """Corpus BLEU per source-length bucket (language-agnostic tokens): 1-10, 11-20, ...,
    the last bucket open-ended ("51+"), empty buckets left out."""
    groups: dict[int, list[int]] = {}
    for i, src in enumerate(sources):
        index = min((max(count_tokens(src), 1) - 1) // width, max_buckets - 1)
        groups.setdefault(index, []).append(i)
    rows = []
    bleu = sacrebleu.BLEU(tokenize=tokenize)
    for index in sorted(groups):
        members = groups[index]
        low = index * width + 1
        label = f"{low}+" if index == max_buckets - 1 else f"{low}-{low + width - 1}"
        score = bleu.corpus_score(
            [hypotheses[i] for i in members], [[references[i] for i in members]]
        )
        rows.append({"bucket": label, "sentences": len(members), "bleu": round(score.score, 2)})
    return rows


def metrics_markdown(metrics: dict[str, Any]) -> str:
    """Scores with their signatures, one row per scored system (Prefect artifact)."""
    lines = [
        "| system | BLEU | chrF | TER | sentences/s | BLEU signature |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, entry in metrics.items():
        if not isinstance(entry, dict) or "bleu" not in entry:
            continue
        lines.append(
            f"| {cell(name)} | {entry['bleu']:.2f} | {entry['chrf']:.2f} | {entry['ter']:.2f} | "
            f"{entry.get('sentences_per_s') or '-'} | {code_cell(entry['signatures']['bleu'])} |"
        )
    sha = next((e["test_set_sha256"] for e in metrics.values() if "test_set_sha256" in e), "")
    return "\n".join(lines) + f"\n\nTest set sha256: `{sha}`\n"


def _target_language(cfg: PipelineConfig) -> str | None:
    report = Path(cfg.data.prepared_dir) / "report.json"
    if report.exists():
        langs = json.loads(report.read_text(encoding="utf-8")).get("languages") or {}
        if langs.get("tgt"):
            return langs["tgt"]
    return cfg.data.tgt_lang


def evaluate_split(cfg: PipelineConfig, split: str = "test") -> dict[str, Any]:
    """Decode a prepared split with the best checkpoint, greedy and (decode.beam_size > 1)
    beam search; write metrics, hypotheses, per-length BLEU, samples and plots."""
    from seq2seq_core.stages import write_json
    from seq2seq_core.translator import Translator

    reports_dir = Path(cfg.evaluate.reports_dir)
    plots_dir = reports_dir / "plots"
    reports_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_dir = Path(cfg.train.checkpoint_dir)
    # The input limit protects a server from abuse; the test set is scored whole.
    decode = dataclasses.replace(cfg.decode, max_input_tokens=sys.maxsize)
    translator = Translator.load(
        checkpoint_dir / "best.pt", Path(cfg.vocab.out_dir), decode, device="cpu",
        max_input_chars=sys.maxsize,
    )  # fmt: skip
    df = read_prepared_split(Path(cfg.data.prepared_dir), split).rename(columns={"tgt": "ref"})
    sources, references = df["src"].tolist(), df["ref"].tolist()
    tokenize = bleu_tokenizer(_target_language(cfg))
    digest = eval_set_digest(sources, references)

    systems = {"greedy": 1} | ({"beam": cfg.decode.beam_size} if cfg.decode.beam_size > 1 else {})
    metrics: dict[str, Any] = {}
    for name, beam in systems.items():
        start = time.perf_counter()
        df[name] = translator.translate(sources, beam_size=beam) if sources else []
        seconds = time.perf_counter() - start
        metrics[f"{split}_{name}"] = {
            **score_translations(df[name].tolist(), references, tokenize),
            "sentences": len(df),
            "test_set_sha256": digest,
            "decode": {"method": name, "beam_size": beam, "seconds": round(seconds, 3)}
            | ({"length_penalty": cfg.decode.length_penalty} if beam > 1 else {}),
            "sentences_per_s": round(len(df) / seconds, 2) if seconds > 0 else None,
        }
    primary = "beam" if "beam" in systems else "greedy"
    # `split` is the primary system, the one registered and compared by the promotion gate.
    metrics = {split: metrics[f"{split}_{primary}"], **metrics}
    metrics_path = reports_dir / "metrics.json"
    write_json(metrics_path, metrics)
    # One line per test pair, in test order: what the promotion gate's paired bootstrap
    # test compares between the champion and a challenger.
    for name, lines in ((HYPOTHESES_FILE, df[primary]), (REFERENCES_FILE, references)):
        (reports_dir / name).write_text(
            "".join(line.replace("\n", " ") + "\n" for line in lines), encoding="utf-8"
        )
    length_rows = bleu_by_length(
        sources, df[primary].tolist(), references, cfg.evaluate.length_bucket_width, tokenize
    )
    pd.DataFrame(length_rows, columns=["bucket", "sentences", "bleu"]).to_csv(
        reports_dir / "length_bleu.csv", index=False
    )
    samples_path = eval_reports.write_samples(df, reports_dir, cfg.evaluate.samples)

    history_path = checkpoint_dir / "history.json"
    history = json.loads(history_path.read_text()) if history_path.exists() else []
    pd.DataFrame(history).to_csv(reports_dir / "train_history.csv", index=False)
    plots = [eval_reports.save_loss_curve(history, plots_dir / "loss.png")]
    if length_rows:
        plots.append(eval_reports.save_length_plot(length_rows, plots_dir / "length_bleu.png"))
    plots += _attention_heatmaps(translator, sources, cfg.evaluate.heatmap_sentences, plots_dir)
    return {
        "metrics_path": str(metrics_path),
        "metrics": metrics,
        "samples_path": str(samples_path),
        "plot_paths": [str(p) for p in plots if p],
    }


def _attention_heatmaps(translator: Any, sources: list[str], n: int, out_dir: Path) -> list[Path]:
    """Greedy attention for the first `n` test sentences of at most 40 tokens (a fixed
    choice, so heatmaps of two runs show the same sentences)."""
    from seq2seq_core.decoding import greedy_decode

    if n <= 0 or translator.model.decoder.attention is None:
        return []
    for stale in out_dir.glob("attention_*.png"):
        stale.unlink()
    tok = translator.tokenizer
    chosen = [s for s in sources if count_tokens(s) <= 40][:n]
    src_ids = tok.encode_src(chosen)
    out = greedy_decode(
        translator.model,
        src_ids,
        batch_size=len(chosen) or 1,
        max_len_ratio=translator.decode.max_len_ratio,
        max_len_extra=translator.decode.max_len_extra,
        return_attention=True,
        precision=translator.decode.precision,
    )
    paths = []
    for i, (ids, out_ids, weights) in enumerate(
        zip(src_ids, out.ids, out.attention or [], strict=False)
    ):
        if weights is None or not out_ids:
            continue
        paths.append(
            eval_reports.save_attention_heatmap(
                weights.numpy(),
                tok.id_to_piece(ids, side="src"),
                tok.id_to_piece(out_ids, side="tgt"),
                out_dir / f"attention_{i + 1}.png",
                chosen[i][:80],
            )
        )
    return paths
