"""data.readers: every corpus format, its header and its errors naming the line."""

from __future__ import annotations

import csv
import gzip

import pandas as pd

from tests.support import error, prepare, rows, write


def test_translation_records_need_languages(tmp_path):
    path = write(tmp_path / "t.jsonl", '{"translation": {"de": "Hallo", "en": "Hello"}}\n')
    message = error(path, src_lang=None, tgt_lang=None)
    assert message == (
        f'{path}: line 1: records use the {{"translation": {{...}}}} shape with languages '
        "de, en; set data.src_lang and data.tgt_lang to pick two"
    )


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


def test_unknown_encoding(tmp_path):
    path = write(tmp_path / "c.tsv", "a\tb\n")
    assert error(path, encoding="utf-9") == "data.encoding: unknown encoding 'utf-9'"
