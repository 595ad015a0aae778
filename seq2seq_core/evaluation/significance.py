"""Is system B really better than system A on this test set? Paired bootstrap resampling
(Koehn 2004) through sacrebleu, and a guard against comparing incomparable scores.

The promotion gate calls both: a challenger replaces the champion only on the same test
set (same hash), scored the same way (same signatures), and by a significant margin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sacrebleu


class IncomparableScoresError(ValueError):
    """Two scores come from different test sets or different metric settings."""


@dataclass(frozen=True)
class SignificanceResult:
    baseline_bleu: float
    candidate_bleu: float
    delta: float  # candidate - baseline
    p_value: float  # share of resampled test sets where the candidate is not better
    resamples: int
    signature: str

    def significant(self, alpha: float) -> bool:
        return self.p_value < alpha


def paired_bootstrap(
    baseline: Sequence[str],
    candidate: Sequence[str],
    references: Sequence[str],
    *,
    resamples: int = 1000,
    tokenize: str = "13a",
    seed: int = 12345,
) -> SignificanceResult:
    """BLEU of both systems and a one-sided paired-bootstrap p-value (Koehn 2004).

    Both systems are scored on the same `resamples` test sets drawn with replacement;
    p = (resamples where the candidate does not beat the baseline + 1) / (resamples + 1).
    Two identical systems get p = 1. (sacrebleu's own `PairedTest` counts a zero
    difference as significant, which is the wrong answer for a promotion gate.) The
    per-sentence statistics and the corpus score are sacrebleu's, so BLEU matches
    `sacrebleu.BLEU(tokenize=...)` exactly."""
    if not len(baseline) == len(candidate) == len(references):
        raise IncomparableScoresError(
            f"paired test needs equal lengths: baseline {len(baseline)}, "
            f"candidate {len(candidate)}, references {len(references)}"
        )
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    bleu = sacrebleu.BLEU(tokenize=tokenize)
    refs = [list(references)]
    base_stats = np.asarray(bleu._extract_corpus_statistics(list(baseline), refs), np.float64)
    cand_stats = np.asarray(bleu._extract_corpus_statistics(list(candidate), refs), np.float64)
    base_score = bleu._compute_score_from_stats(base_stats.sum(0).tolist()).score
    cand_score = bleu._compute_score_from_stats(cand_stats.sum(0).tolist()).score
    rng = np.random.default_rng(seed)
    n = len(references)
    not_better = 0
    for _ in range(resamples):
        idx = rng.integers(0, n, n) if n else np.zeros(0, dtype=np.int64)
        b = bleu._compute_score_from_stats(base_stats[idx].sum(0).tolist()).score
        c = bleu._compute_score_from_stats(cand_stats[idx].sum(0).tolist()).score
        not_better += c <= b
    return SignificanceResult(
        baseline_bleu=round(float(base_score), 4),
        candidate_bleu=round(float(cand_score), 4),
        delta=round(float(cand_score - base_score), 4),
        p_value=(not_better + 1) / (resamples + 1),
        resamples=resamples,
        signature=f"{bleu.get_signature()}|test:paired-bs-1sided|n:{resamples}|seed:{seed}",
    )


# How the metrics are named in messages (sacrebleu's own spelling).
METRIC_LABELS = {"bleu": "BLEU", "chrf": "chrF", "ter": "TER"}


def comparable(
    baseline: Mapping[str, Any], candidate: Mapping[str, Any], *, baseline_name: str = "baseline"
) -> str | None:
    """Why two metric records (`metrics.json`'s `test` entries) cannot be compared, or None
    when both were computed on the same test set (sha256) with the same metric signatures.
    The reason names the candidate's value first, then `baseline_name`'s."""
    a_hash, b_hash = baseline.get("test_set_sha256"), candidate.get("test_set_sha256")
    if not a_hash or a_hash != b_hash:
        return (
            f"different test set (sha256 {str(b_hash)[:12]} vs {baseline_name}'s "
            f"{str(a_hash)[:12]})"
        )
    a_sigs, b_sigs = baseline.get("signatures") or {}, candidate.get("signatures") or {}
    for metric, label in METRIC_LABELS.items():
        ours, theirs = b_sigs.get(metric), a_sigs.get(metric)
        if ours != theirs:
            return f"different {label} signature ({ours!r} vs {baseline_name}'s {theirs!r})"
    return None


def check_comparable(baseline: Mapping[str, Any], candidate: Mapping[str, Any]) -> None:
    """Raise `IncomparableScoresError` with `comparable`'s reason when there is one."""
    reason = comparable(baseline, candidate)
    if reason is not None:
        raise IncomparableScoresError(reason)
