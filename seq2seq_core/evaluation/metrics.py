"""Test-set scoring with sacrebleu: corpus metrics with signatures, per-length BLEU.

The evaluate stage that decodes the test set and writes these scores lives in ``stages.py``.

Scores are stored with their sacrebleu signatures and a hash of the test set, because a
BLEU number without both cannot be compared with another one (Post, 2018).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import sacrebleu

from seq2seq_core.data.cleaning import count_tokens
from seq2seq_core.runtime.markdown import cell, code_cell

# sacrebleu's tokenizer per target language: 13a assumes spaces between words.
_BLEU_TOKENIZERS = {"zh": "zh", "ja": "char", "ko": "char", "th": "char"}


def bleu_tokenizer(lang: str | None) -> str:
    return _BLEU_TOKENIZERS.get((lang or "").lower(), "13a")


def target_language(prepared_dir: Path, configured: str | None) -> str | None:
    """The target language the prepare stage detected (its report.json), else the
    configured ``data.tgt_lang``: what ``bleu_tokenizer`` is asked about."""
    report = prepared_dir / "report.json"
    if report.exists():
        langs = json.loads(report.read_text(encoding="utf-8")).get("languages") or {}
        if langs.get("tgt"):
            return langs["tgt"]
    return configured


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
