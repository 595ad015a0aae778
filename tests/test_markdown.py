"""Markdown artifacts keep each quoted value in its own table cell."""

from __future__ import annotations

import re

from flows.run_notes import promotion_markdown, summary_markdown
from seq2seq_core.runtime.markdown import cell, code_cell

SIGNATURE = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.5.1"


def _cells(row: str) -> list[str]:
    """Split a table row the way GitHub-flavoured markdown does: on unescaped pipes."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", row.strip())[1:-1]]


def test_cells_escape_pipes_and_fold_lines() -> None:
    assert cell("a|b\nc") == "a\\|b c"
    assert code_cell("x|`y`") == "`x\\|'y'`"
    assert _cells(f"| BLEU | {code_cell(SIGNATURE)} |") == ["BLEU", code_cell(SIGNATURE)]


def test_summary_keeps_each_signature_in_one_cell() -> None:
    test = {"bleu": 29.21, "chrf": 48.5, "ter": 61.0,
            "signatures": {"bleu": SIGNATURE, "chrf": SIGNATURE, "ter": SIGNATURE}}  # fmt: skip
    registration = {"model_name": "m", "version": 2, "aliases": ["challenger"], "reason": "r"}
    rows = [r for r in summary_markdown(test, registration, {}).splitlines() if r.startswith("|")]
    assert all(len(_cells(r)) == 3 for r in rows)
    assert "nrefs:1\\|case:mixed" in rows[2] and "version:2.5.1" in rows[2]


def test_promotion_tags_with_pipes_stay_in_their_cells() -> None:
    registration = {
        "model_name": "m", "version": 3, "promoted": False, "champion_version": 1,
        "reason": "not comparable", "tags": {"promotion.reason": "sig 'a|b' vs 'a|c'\nsecond"},
    }  # fmt: skip
    rows = [r for r in promotion_markdown(registration).splitlines() if r.startswith("| `")]
    assert [_cells(r) for r in rows] == [["`promotion.reason`", "sig 'a\\|b' vs 'a\\|c' second"]]
