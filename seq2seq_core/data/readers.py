"""Readers for user corpora: TSV, CSV, JSON Lines, Parquet and Moses-style paired text,
plain or gzipped, plus the dispatch on `data.format` / the file extension.

Readers stream line by line (a 1M-line TSV stays well under 1 GB) and stop at the first
bad line with a ``DataError`` naming the file, the 1-based line and the problem. They do
not clean: every raw row goes to the ingest stage, which keeps it or counts its drop.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from seq2seq_core.config import DataConfig
from seq2seq_core.data.bible import is_bible_source, read_bible
from seq2seq_core.data.errors import DataError, Row

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
    for pair in (("src", "tgt"), ("source", "target"), (cfg.src_lang or "", cfg.tgt_lang or "")):
        if pair[0] and pair[0].lower() in found and pair[1].lower() in found:
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
            record = record["translation"]
            keys = _translation_keys(f"{path}: line {n}", cfg, list(record))
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
        first = next((t for t in df["translation"] if t), {})
        src_key, tgt_key = _translation_keys(str(path), cfg, list(first))
        src = [(t or {}).get(src_key) for t in df["translation"]]
        tgt = [(t or {}).get(tgt_key) for t in df["translation"]]
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


def _translation_keys(where: str, cfg: DataConfig, found: list[str]) -> tuple[str, str]:
    """The two language keys of a `{"translation": {...}}` record, from data.*_lang."""
    if not cfg.src_lang or not cfg.tgt_lang:
        raise DataError(
            f'{where}: records use the {{"translation": {{...}}}} shape with languages '
            f"{', '.join(found)}; set data.src_lang and data.tgt_lang to pick two"
        )
    return cfg.src_lang, cfg.tgt_lang


def _paired_paths(prefix: Path, cfg: DataConfig) -> tuple[Path, Path] | None:
    if not cfg.src_lang or not cfg.tgt_lang:
        return None
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
    if is_bible_source(source):
        return "bible"
    if cfg.format != "auto":
        return cfg.format
    path = Path(source)
    if not path.exists():
        if _paired_paths(path, cfg) is not None:
            return "text"
        if not cfg.src_lang or not cfg.tgt_lang:
            raise DataError(
                f"{path}: file not found (for paired text files PREFIX.SRC + PREFIX.TGT, "
                "set data.src_lang and data.tgt_lang)"
            )
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
        return read_bible(source)
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
