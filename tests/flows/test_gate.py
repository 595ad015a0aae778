"""The promotion gate as a pure function of two scored systems: every reason it gives,
with its numbers, and no MLflow anywhere (flows/registry.py does the I/O)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from flows import gate
from flows.gate import GateDecision
from seq2seq_core.config import RegisterConfig
from seq2seq_core.evaluation.metrics import score_translations
from tests.support import POOR, REFS

SHA = "c" * 64
SIGS = {"bleu": "nrefs:1|tok:13a", "chrf": "nrefs:1|nc:6", "ter": "nrefs:1|tok:tercom"}
WORSE = [" ".join(h.split()[:3]) for h in POOR]
SLIGHTLY_BETTER = [REFS[0], *POOR[1:]]  # one of 40 sentences fixed
DEFAULT = RegisterConfig()


def tags(bleu: float, chrf: float, sha: str = SHA, **sigs: str) -> dict[str, str]:
    """Version tags of a system scored `bleu`/`chrf` on test set `sha`; `sigs` override
    SIGS (e.g. `chrf_sig="..."`)."""
    signatures = {**SIGS, **{k.removesuffix("_sig"): v for k, v in sigs.items()}}
    test = {"bleu": bleu, "chrf": chrf, "ter": 50.0, "test_set_sha256": sha}
    return gate.score_tags({"test": {**test, "signatures": signatures}})


def scored(hyps: list[str]) -> dict[str, str]:
    """The tags of a system whose test hypotheses are `hyps` (real sacrebleu scores)."""
    return gate.score_tags({"test": {**score_translations(hyps, REFS), "test_set_sha256": SHA}})


def against_poor(hyps: list[str], settings: RegisterConfig = DEFAULT) -> GateDecision:
    """The gate for a challenger `hyps` against champion v3 = POOR, 300 resamples."""
    return gate.decide_promotion(
        scored(hyps),
        scored(POOR),
        champion_version=3,
        settings=settings,
        systems=(POOR, hyps, REFS),
        resamples=300,
    )


def test_the_first_version_is_promoted() -> None:
    decision = gate.decide_promotion(tags(1.0, 2.0), None, champion_version=None, settings=DEFAULT)
    assert decision == GateDecision(True, "no champion yet")


def test_a_significant_gain_is_promoted_with_its_p_value() -> None:
    decision = against_poor(REFS)
    assert decision == GateDecision(
        True,
        "test BLEU 100.00 beats champion v3's 9.55 by 90.45 (>= min_bleu_gain 0; "
        "paired bootstrap p=0.0033 < 0.05; chrF +69.89)",
        bleu_delta=90.4532,
        chrf_delta=69.8895,
        p_value=pytest.approx(1 / 301),  # better on every resampled test set
    )


def test_a_gain_that_is_not_significant_is_kept_as_challenger() -> None:
    decision = against_poor(SLIGHTLY_BETTER)
    assert not decision.promote
    assert decision.reason == (
        "BLEU gain 3.69 over champion v3 is not significant (paired bootstrap p=0.3555 >= 0.05)"
    )
    assert (decision.bleu_delta, decision.chrf_delta) == (3.6914, 2.2764)
    assert decision.p_value == pytest.approx(107 / 301)
    lenient = against_poor(SLIGHTLY_BETTER, RegisterConfig(p_value=0.5))
    assert lenient.promote and lenient.p_value == decision.p_value


def test_a_loss_or_a_gain_below_min_bleu_gain_is_not_promoted() -> None:
    worse = against_poor(WORSE)
    assert worse == GateDecision(
        False,
        "test BLEU 0.00 vs champion v3's 9.55: gain -9.55 is not a gain of at least "
        "min_bleu_gain 0",
        bleu_delta=-9.5468,
        chrf_delta=-21.9887,
    )
    small = against_poor(SLIGHTLY_BETTER, RegisterConfig(min_bleu_gain=5))
    assert small.reason == (
        "test BLEU 13.24 vs champion v3's 9.55: gain 3.69 is not a gain of at least min_bleu_gain 5"
    )
    assert (small.promote, small.p_value) == (False, None)  # no bootstrap needed
    equal = gate.decide_promotion(
        tags(20.0, 40.0), tags(20.0, 40.0), champion_version=1, settings=DEFAULT
    )
    assert equal.reason.endswith("gain 0.00 is not a gain of at least min_bleu_gain 0")


def test_a_chrf_drop_blocks_promotion() -> None:
    decision = gate.decide_promotion(
        tags(20.0, 40.0), tags(10.0, 41.5), champion_version=1, settings=DEFAULT
    )
    assert decision == GateDecision(
        False, "chrF drops by 1.50 (> max_chrf_drop 1)", bleu_delta=10.0, chrf_delta=-1.5
    )
    allowed = RegisterConfig(max_chrf_drop=2.0)
    decision = gate.decide_promotion(
        tags(20.0, 40.0), tags(10.0, 41.5), champion_version=1, settings=allowed
    )
    assert decision.reason == "no significance test possible: champion v1 has no test hypotheses"
    assert (decision.promote, decision.bleu_delta, decision.chrf_delta) == (False, 10.0, -1.5)


@pytest.mark.parametrize(
    ("champion", "challenger", "reason"),
    [
        (
            {"test.test_set_sha256": SHA},
            tags(20.0, 40.0),
            "champion v3 has no recorded test BLEU/test set",
        ),
        (
            tags(10.0, 40.0, sha="d" * 64),
            tags(20.0, 40.0),
            "different test set (sha256 cccccccccccc vs champion v3's dddddddddddd)",
        ),
        (
            tags(10.0, 40.0),
            tags(20.0, 40.0, bleu_sig="nrefs:1|tok:intl"),
            "different BLEU signature ('nrefs:1|tok:intl' vs champion v3's 'nrefs:1|tok:13a')",
        ),
        (
            tags(10.0, 40.0),
            tags(20.0, 40.0, chrf_sig="nrefs:1|nc:4"),
            "different chrF signature ('nrefs:1|nc:4' vs champion v3's 'nrefs:1|nc:6')",
        ),
        (
            {k: v for k, v in tags(10.0, 40.0).items() if k != "test.signature.ter"},
            tags(20.0, 40.0),
            "different TER signature ('nrefs:1|tok:tercom' vs champion v3's None)",
        ),
    ],
    ids=["no-scores", "test-set", "bleu-signature", "chrf-signature", "no-ter-signature"],
)
def test_incomparable_systems_are_not_promoted(champion, challenger, reason) -> None:
    decision = gate.decide_promotion(challenger, champion, champion_version=3, settings=DEFAULT)
    assert decision == GateDecision(False, f"not comparable: {reason}")


def test_systems_of_different_lengths_are_not_comparable() -> None:
    decision = gate.decide_promotion(
        scored(REFS),
        scored(POOR),
        champion_version=3,
        settings=DEFAULT,
        systems=(POOR, REFS[:-1], REFS),
    )
    assert not decision.promote and decision.reason == (
        "not comparable: paired test needs equal lengths: baseline 40, candidate 39, references 40"
    )


def test_the_bootstrap_tokenizes_as_the_bleu_signature_says() -> None:
    assert gate.bleu_tokenize("nrefs:1|case:mixed|eff:no|tok:intl|smooth:exp") == "intl"
    assert gate.bleu_tokenize("nrefs:1|case:mixed") == "13a"
    assert gate.bleu_tokenize("") == "13a"


def test_force_overrules_a_no_but_never_onto_the_champion_itself() -> None:
    no = GateDecision(False, "chrF drops by 1.50 (> max_chrf_drop 1)", 10.0, -1.5)
    forced = gate.overrule(no, force=True, already_champion=False)
    assert forced == GateDecision(
        True, "forced over the gate's decision: chrF drops by 1.50 (> max_chrf_drop 1)", 10.0, -1.5
    )
    assert gate.overrule(no, force=False, already_champion=False) is no
    assert gate.overrule(no, force=True, already_champion=True) is no
    yes = GateDecision(True, "no champion yet")
    assert gate.overrule(yes, force=True, already_champion=False) is yes


def test_decision_tags_record_the_decision_and_the_settings() -> None:
    decision = GateDecision(True, "test BLEU ...", bleu_delta=90.4532, chrf_delta=69.8895,
                            p_value=1 / 301)  # fmt: skip
    record = gate.decision_tags(
        decision,
        forced=False,
        previous_champion="3",
        settings=RegisterConfig(min_bleu_gain=0.5),
        trigger="prefect:nightly",
        now="2026-12-01T21:00:00+00:00",
    )
    assert record == {
        "promotion.decision": "promoted",
        "promotion.reason": "test BLEU ...",
        "promotion.at": "2026-12-01T21:00:00+00:00",
        "promotion.previous_champion": "3",
        "promotion.min_bleu_gain": "0.5",
        "promotion.p_value_threshold": "0.05",
        "promotion.forced": "false",
        "promotion.bleu_delta": "90.4532",
        "promotion.chrf_delta": "69.8895",
        "promotion.p_value": "0.0033",
        "promotion.trigger": "prefect:nightly",
    }
    first = gate.decision_tags(
        GateDecision(False, "not comparable: x"),
        forced=True,
        previous_champion=None,
        settings=DEFAULT,
        trigger="",
        now="t",
    )
    assert first["promotion.decision"] == "kept_challenger" and first["promotion.forced"] == "true"
    assert first["promotion.previous_champion"] == "none"
    assert not any(k in first for k in ("promotion.p_value", "promotion.trigger"))


def test_score_tags_need_a_complete_test_block() -> None:
    assert tags(20.0, 40.0) == {
        "test.bleu": "20.0",
        "test.chrf": "40.0",
        "test.ter": "50.0",
        "test.test_set_sha256": SHA,
        "test.signature.bleu": "nrefs:1|tok:13a",
        "test.signature.chrf": "nrefs:1|nc:6",
        "test.signature.ter": "nrefs:1|tok:tercom",
    }
    with pytest.raises(gate.MetricsFormatError, match="no 'test' section"):
        gate.score_tags({"valid": {}})
    with pytest.raises(gate.MetricsFormatError, match=r"'test\.test_set_sha256' is missing"):
        gate.score_tags({"test": {"bleu": 1, "chrf": 1, "ter": 1, "signatures": SIGS}})
    with pytest.raises(gate.MetricsFormatError, match=r"'test\.signatures\.bleu' is missing"):
        gate.score_tags({"test": {"bleu": 1, "chrf": 1, "ter": 1, "signatures": {},
                                  "test_set_sha256": SHA}})  # fmt: skip


def test_the_gate_imports_no_mlflow_or_prefect() -> None:
    code = (
        "import sys, flows.gate\n"
        "print(','.join(n for n in ('mlflow', 'prefect', 'dvc') if n in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
