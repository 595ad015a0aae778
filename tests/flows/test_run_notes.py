"""run_notes: the run's markdown keeps signatures and tags in their cells; the failure note
says what was and was not registered."""

from __future__ import annotations

from flows.run_notes import failure_markdown, promotion_markdown, summary_markdown
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


def _state(**kw: object) -> dict:
    return {"model_name": "m", "version": "3", "aliases": [], "champion": "2",
            "pending_move": None, **kw}  # fmt: skip


def test_failure_note_says_what_the_registry_holds() -> None:
    err = RuntimeError("killed")
    assert "Nothing was registered in this run" in failure_markdown("train", err, {"ingest": 1})
    none_yet = failure_markdown("register", err, {}, _state(version=None))
    assert "Nothing was registered in this run" in none_yet
    created = failure_markdown("register", err, {}, _state(aliases=["challenger"]))
    assert "Version 3 of `m` was created from this run (aliases: challenger)" in created
    assert "the `champion` alias was not moved to it (champion: v2)" in created
    moved = failure_markdown("register", err, {}, _state(champion="3", aliases=["champion"]))
    assert "it is the champion: the `champion` alias moved to it" in moved
    pending = _state(pending_move={"from": "2", "to": "3", "kind": "promotion"})
    half = failure_markdown("register", err, {}, pending)
    assert "its promotion over v2 was decided and recorded but not finished" in half
    assert "Nothing was registered" not in created + moved + half
