"""run_notes: the run's markdown keeps signatures and tags in their cells."""

from __future__ import annotations

from flows.run_notes import promotion_markdown, summary_markdown
from tests.support import SIGNATURE, table_cells


def test_summary_keeps_each_signature_in_one_cell() -> None:
    test = {"bleu": 29.21, "chrf": 48.5, "ter": 61.0,
            "signatures": {"bleu": SIGNATURE, "chrf": SIGNATURE, "ter": SIGNATURE}}  # fmt: skip
    registration = {"model_name": "m", "version": 2, "aliases": ["challenger"], "reason": "r"}
    rows = [r for r in summary_markdown(test, registration, {}).splitlines() if r.startswith("|")]
    assert all(len(table_cells(r)) == 3 for r in rows)
    assert "nrefs:1\\|case:mixed" in rows[2] and "version:2.5.1" in rows[2]


def test_promotion_tags_with_pipes_stay_in_their_cells() -> None:
    registration = {
        "model_name": "m", "version": 3, "promoted": False, "champion_version": 1,
        "reason": "not comparable", "tags": {"promotion.reason": "sig 'a|b' vs 'a|c'\nsecond"},
    }  # fmt: skip
    rows = [r for r in promotion_markdown(registration).splitlines() if r.startswith("| `")]
    assert [table_cells(r) for r in rows] == [
        ["`promotion.reason`", "sig 'a\\|b' vs 'a\\|c' second"]
    ]
