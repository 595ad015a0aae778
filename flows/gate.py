"""The promotion gate: should a challenger replace the champion? A pure decision on two
scored systems, with no MLflow in it (flows/registry.py reads the systems from the
registry, calls `decide_promotion` and writes `decision_tags` back).

A system is scored by its model-version tags (as `score_tags` writes them from the
evaluate stage's metrics.json) and, for the significance test, its test hypotheses. The
challenger passes only when, on the same test set (sha256) scored the same way (sacrebleu
signatures, `seq2seq_core.evaluation.significance.comparable`), its BLEU beats the champion's by at
least `register.min_bleu_gain`, a paired bootstrap test gives p < `register.p_value`, and
chrF drops by at most `register.max_chrf_drop`. `force` overrules a no and says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from seq2seq_core.config import RegisterConfig
from seq2seq_core.evaluation.significance import (
    METRIC_LABELS,
    IncomparableScoresError,
    comparable,
    paired_bootstrap,
)

# (champion hypotheses, challenger hypotheses, references) on the test set.
Systems = tuple[list[str], list[str], list[str]]


# Model-version tags of the test scores, written at registration and read by the gate,
# the champion's weekly evaluation and the run notes: the keys live here only.
TEST_BLEU_TAG = "test.bleu"
TEST_CHRF_TAG = "test.chrf"
TEST_TER_TAG = "test.ter"
TEST_SET_TAG = "test.test_set_sha256"
TEST_SENTENCES_TAG = "test.sentences"
SIGNATURE_TAG_PREFIX = "test.signature."


class MetricsFormatError(ValueError):
    """metrics.json lacks a key the registry needs; the message names it."""


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    bleu_delta: float | None = None
    chrf_delta: float | None = None
    p_value: float | None = None


def read_test_scores(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The ``test`` block of metrics.json, checked for what the registry gate reads."""
    test = metrics.get("test")
    if not isinstance(test, Mapping):
        raise MetricsFormatError("metrics: no 'test' section (run the evaluate stage)")
    for key in ("bleu", "chrf", "ter", "signatures", "test_set_sha256"):
        if key not in test:
            raise MetricsFormatError(f"metrics: 'test.{key}' is missing")
    if "bleu" not in test["signatures"]:
        raise MetricsFormatError("metrics: 'test.signatures.bleu' is missing")
    return dict(test)


def score_tags(metrics: Mapping[str, Any]) -> dict[str, str]:
    """Model-version tags the gate reads back from the registry."""
    test = read_test_scores(metrics)
    tags = {
        TEST_BLEU_TAG: str(float(test["bleu"])),
        TEST_CHRF_TAG: str(float(test["chrf"])),
        TEST_TER_TAG: str(float(test["ter"])),
        TEST_SET_TAG: str(test["test_set_sha256"]),
    }
    if "sentences" in test:
        tags[TEST_SENTENCES_TAG] = str(test["sentences"])
    for metric, sig in test["signatures"].items():
        tags[f"{SIGNATURE_TAG_PREFIX}{metric}"] = str(sig)
    return tags


def bleu_tokenize(signature: str) -> str:
    """The tokenizer a sacrebleu BLEU signature names (`...|tok:13a|...`); 13a if none."""
    parts = dict(p.split(":", 1) for p in signature.split("|") if ":" in p)
    return parts.get("tok", "13a")


def _scores(tags: Mapping[str, str]) -> dict[str, Any]:
    """`score_tags`' tags back as the metric record `significance.comparable` reads."""
    return {
        "test_set_sha256": tags.get(TEST_SET_TAG),
        "signatures": {m: tags.get(f"{SIGNATURE_TAG_PREFIX}{m}") for m in METRIC_LABELS},
    }


def decide_promotion(
    challenger: Mapping[str, str],
    champion: Mapping[str, str] | None,
    *,
    champion_version: str | int | None,
    settings: RegisterConfig,
    systems: Systems | None = None,
    resamples: int = 1000,
) -> GateDecision:
    """The gate on two versions' tags (as `score_tags` writes them) and, for the
    significance test, `systems` = (champion hyps, challenger hyps, references)."""
    if champion is None:
        return GateDecision(True, "no champion yet")
    who = f"champion v{champion_version}"
    if TEST_BLEU_TAG not in champion or TEST_SET_TAG not in champion:
        return GateDecision(False, f"not comparable: {who} has no recorded test BLEU/test set")
    mismatch = comparable(_scores(champion), _scores(challenger), baseline_name=who)
    if mismatch is not None:
        return GateDecision(False, f"not comparable: {mismatch}")
    new, old = float(challenger[TEST_BLEU_TAG]), float(champion[TEST_BLEU_TAG])
    bleu_delta = round(new - old, 4)
    chrf_delta = round(float(challenger[TEST_CHRF_TAG]) - float(champion[TEST_CHRF_TAG]), 4)
    deltas = {"bleu_delta": bleu_delta, "chrf_delta": chrf_delta}
    if bleu_delta <= 0 or bleu_delta < settings.min_bleu_gain:
        return GateDecision(
            False,
            f"test BLEU {new:.2f} vs {who}'s {old:.2f}: gain {bleu_delta:.2f} is not a gain of "
            f"at least min_bleu_gain {settings.min_bleu_gain:g}",
            **deltas,
        )
    if -chrf_delta > settings.max_chrf_drop:
        return GateDecision(
            False,
            f"chrF drops by {-chrf_delta:.2f} (> max_chrf_drop {settings.max_chrf_drop:g})",
            **deltas,
        )
    if systems is None:
        return GateDecision(
            False, f"no significance test possible: {who} has no test hypotheses", **deltas
        )
    try:
        test = paired_bootstrap(
            *systems,
            resamples=resamples,
            tokenize=bleu_tokenize(challenger.get(f"{SIGNATURE_TAG_PREFIX}bleu", "")),
        )
    except IncomparableScoresError as exc:
        return GateDecision(False, f"not comparable: {exc}", **deltas)
    if not test.significant(settings.p_value):
        return GateDecision(
            False,
            f"BLEU gain {bleu_delta:.2f} over {who} is not significant "
            f"(paired bootstrap p={test.p_value:.4f} >= {settings.p_value:g})",
            **deltas,
            p_value=test.p_value,
        )
    return GateDecision(
        True,
        f"test BLEU {new:.2f} beats {who}'s {old:.2f} by {bleu_delta:.2f} "
        f"(>= min_bleu_gain {settings.min_bleu_gain:g}; paired bootstrap p={test.p_value:.4f}"
        f" < {settings.p_value:g}; chrF {chrf_delta:+.2f})",
        **deltas,
        p_value=test.p_value,
    )


def overrule(decision: GateDecision, *, force: bool, already_champion: bool) -> GateDecision:
    """`force` turns the gate's no into a promotion whose reason says so; a version that
    already is the champion stays a no."""
    if decision.promote or not force or already_champion:
        return decision
    return dataclasses.replace(
        decision, promote=True, reason=f"forced over the gate's decision: {decision.reason}"
    )


def decision_tags(
    decision: GateDecision,
    *,
    forced: bool,
    previous_champion: str | None,
    settings: RegisterConfig,
    trigger: str,
    now: str,
) -> dict[str, str]:
    """The `promotion.*` tags that record `decision` on the challenger's version."""
    record = {
        "promotion.decision": "promoted" if decision.promote else "kept_challenger",
        "promotion.reason": decision.reason,
        "promotion.at": now,
        "promotion.previous_champion": previous_champion or "none",
        "promotion.min_bleu_gain": f"{settings.min_bleu_gain:g}",
        "promotion.p_value_threshold": f"{settings.p_value:g}",
        "promotion.forced": str(forced).lower(),
    }
    for key in ("bleu_delta", "chrf_delta", "p_value"):
        value = getattr(decision, key)
        if value is not None:
            record[f"promotion.{key}"] = f"{value:.4f}"
    if trigger:
        record["promotion.trigger"] = trigger
    return record
