"""data.bible: `bible:<edition>-<edition>` sources from the bundled verse database."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from seq2seq_core.config import DataConfig
from seq2seq_core.data.prepare import (
    DataError,
    prepare_corpus,
    read_pairs,
    read_prepared_split,
    split_of,
)

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
