"""data.cleaning: text normalisation, token counts and the drop reasons, counted."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from seq2seq_core.config import DataConfig
from seq2seq_core.data.prepare import (
    clean_text,
    count_tokens,
    filter_pairs,
    read_prepared_split,
)
from tests.support import messy_tsv, prepare, write

# --------------------------------------------------------------------------- cleaning


def test_clean_text_normalises_without_assuming_spaces():
    assert clean_text("  a\t\tb \u00a0 c\n") == "a b c"
    assert clean_text("Cafe\u0301") == "Caf\u00e9"  # NFC
    assert clean_text("\x00ab\x1fc\x7f\ufeff") == "abc"
    assert clean_text("Straße GROSS", lowercase=True) == "straße gross"
    assert clean_text("起初，神创造天地。") == "起初，神创造天地。"
    assert clean_text("\x00 \t\x07") == ""


def test_lowercase_and_max_chars_settings(tmp_path):
    report = prepare(tmp_path, messy_tsv(tmp_path), lowercase=True, max_chars=12)
    # Now also too long: "Guten Morgen.", "Coffee please.", "In the beginning." and line 13.
    assert report["drops"]["too_long"] == 5
    assert report["drops"]["length_ratio"] == 0
    train = read_prepared_split(tmp_path / "out", "train")
    assert train["src"].tolist() == ["hallo welt.", "danke."]
    assert train["tgt"].tolist() == ["hello world.", "thanks."]


def test_token_counts_do_not_assume_spaces():
    assert count_tokens("Im Anfang schuf Gott") == 4
    assert count_tokens("起初，神创造天地。") == 9  # one per character, punctuation too
    assert count_tokens("Au commencement, Dieu créa") == 4
    assert count_tokens("日本語 text とかな") == 7
    assert count_tokens("") == 0


def test_token_length_limits_are_counted(tmp_path):
    path = write(
        tmp_path / "c.tsv",
        "eins\tone\n"  # too_short with min_tokens=2
        "zwei Wörter\ttwo words\n"
        + "wort "
        * 10_000
        + "\tten thousand words\n"  # too_long (tokens and chars)
        "起初神创造天地\tIn the beginning God created\n",  # 7 tokens: kept
    )
    report = prepare(tmp_path, path, min_tokens=2, max_tokens=8, max_chars=100_000)
    assert report["drops"]["too_short"] == 1 and report["drops"]["too_long"] == 1
    assert report["pairs_kept"] == 2
    assert report["splits"]["train"]["src_tokens"]["max"] == 7


def test_cleaning_steps_can_be_switched_off(tmp_path):
    path = write(tmp_path / "c.tsv", "a\u00a0 b\tx\na\u00a0 b\tx\nﬁ\tfi\n")
    kept = prepare(tmp_path, path, max_length_ratio=0.0)
    assert kept["drops"]["duplicate"] == 1
    assert read_prepared_split(tmp_path / "out", "train")["src"].tolist() == ["a b", "ﬁ"]
    raw = prepare(
        tmp_path, path, drop_duplicates=False, collapse_whitespace=False,
        unicode_normalization="NFKC", max_length_ratio=0.0,
    )  # fmt: skip
    assert raw["drops"]["duplicate"] == 0
    # NFKC folds the no-break space and the ligature; no collapsing keeps the two spaces.
    assert read_prepared_split(tmp_path / "out", "train")["src"].tolist() == [
        "a  b", "a  b", "fi",
    ]  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.text(max_size=30), st.text(max_size=30)),
        max_size=30,
    ),
    st.booleans(),
)
def test_cleaning_never_loses_a_pair_without_counting_it(pairs, lowercase):
    cfg = DataConfig(lowercase=lowercase, max_chars=25)
    rows_in = [(f"p{i}", s, t, None) for i, (s, t) in enumerate(pairs)]
    kept = filter_pairs(rows_in, cfg, max_length_ratio=3.0)
    assert kept.read == len(pairs) == len(kept.ids) + sum(kept.drops.values())
    assert all(s and t for s, t in zip(kept.src, kept.tgt, strict=True))
    emptied = sum(
        1 for s, t in pairs if not clean_text(s, lowercase) or not clean_text(t, lowercase)
    )
    assert kept.drops["empty_source"] + kept.drops["empty_target"] == emptied
    assert all(clean_text(s, lowercase) == s for s in kept.src)  # cleaning is idempotent


def test_10000_char_line_in_paired_text_is_counted(tmp_path):
    write(tmp_path / "c.de", "kurz\n" + "lang " * 2000 + "\n")
    write(tmp_path / "c.en", "short\nlong\n")
    report = prepare(tmp_path, tmp_path / "c")
    assert report["drops"]["too_long"] == 1 and report["pairs_kept"] == 1
