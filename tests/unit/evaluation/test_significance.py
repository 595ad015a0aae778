"""Paired bootstrap between two systems, and refusing incomparable scores."""

import re

import pytest

from seq2seq_core.evaluation.metrics import score_translations
from seq2seq_core.evaluation.significance import (
    IncomparableScoresError,
    check_comparable,
    comparable,
    paired_bootstrap,
)
from tests.support import POOR, REFS


def test_copying_the_references_is_significant() -> None:
    result = paired_bootstrap(POOR, REFS, REFS, resamples=200)
    assert result.candidate_bleu == pytest.approx(100.0)
    assert result.delta > 50 and result.p_value < 0.01 and result.significant(0.05)
    assert result.p_value == pytest.approx(1 / 201)  # better on every resampled test set
    assert "tok:13a" in result.signature and "paired-bs-1sided|n:200|seed:12345" in result.signature
    bleu = score_translations(REFS, REFS)["bleu"]
    assert result.candidate_bleu == pytest.approx(bleu)


def test_identical_systems_are_not_significant() -> None:
    result = paired_bootstrap(POOR, list(POOR), REFS, resamples=200)
    assert result.delta == 0.0 and result.p_value == 1.0 and not result.significant(0.05)
    again = paired_bootstrap(POOR, list(POOR), REFS, resamples=200)
    assert again == result  # seeded: the same inputs give the same p-value


def test_unequal_lengths_are_refused() -> None:
    with pytest.raises(IncomparableScoresError, match="baseline 40, candidate 39"):
        paired_bootstrap(POOR, POOR[:-1], REFS, resamples=10)


def test_mismatched_signatures_and_test_sets_are_refused() -> None:
    base = {**score_translations(POOR, REFS), "test_set_sha256": "a" * 64}
    check_comparable(base, dict(base))
    assert comparable(base, dict(base)) is None
    other_set = {**base, "test_set_sha256": "b" * 64}
    reason = "different test set (sha256 bbbbbbbbbbbb vs baseline's aaaaaaaaaaaa)"
    assert comparable(base, other_set) == reason
    with pytest.raises(IncomparableScoresError, match=re.escape(reason)):
        check_comparable(base, other_set)
    zh = {**score_translations(POOR, REFS, tokenize="zh"), "test_set_sha256": "a" * 64}
    with pytest.raises(IncomparableScoresError, match=r"different BLEU signature \(.*tok:zh"):
        check_comparable(base, zh)
    assert comparable(base, zh, baseline_name="champion v2").endswith(
        f"vs champion v2's {base['signatures']['bleu']!r})"
    )


def test_each_signature_and_a_missing_test_set_are_named() -> None:
    sigs = {"bleu": "b", "chrf": "c", "ter": "t"}
    base = {"test_set_sha256": "a" * 64, "signatures": sigs}
    assert comparable(base, {**base, "signatures": {**sigs, "chrf": "c2"}}) == (
        "different chrF signature ('c2' vs baseline's 'c')"
    )
    assert comparable(base, {**base, "signatures": {**sigs, "ter": "t2"}}) == (
        "different TER signature ('t2' vs baseline's 't')"
    )
    assert comparable(base, {**base, "signatures": {"bleu": "b", "chrf": "c"}}) == (
        "different TER signature (None vs baseline's 't')"
    )
    # No recorded hash on either side is no evidence of the same test set.
    assert comparable({}, {}) == "different test set (sha256 None vs baseline's None)"
