"""Parallel-corpus ingestion: read, clean, filter, deduplicate, split and report.

Every pair read is either written to one split or counted under exactly one drop reason,
so ``pairs_read == sum(split pairs) + sum(drops)`` holds in every report. Reasons are
checked in the order of ``DROP_REASONS``; a pair is counted under the first that applies.

Nothing is written until the whole corpus has been read, and outputs are renamed into
place, so a failure leaves the previous outputs untouched and no half-written file behind.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import itertools
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from seq2seq_core.config import DataConfig
from seq2seq_core.data.bible import bible_languages, is_bible_source
from seq2seq_core.data.cleaning import clean_text, clean_with, count_tokens, pair_drop_reason
from seq2seq_core.data.errors import DataError, Row
from seq2seq_core.data.readers import FORMATS, detect_format, read_pairs
from seq2seq_core.data.report import plot_length_histogram
from seq2seq_core.runtime.files import publish, staging_dir, write_json

__all__ = [
    "DROP_REASONS", "FORMATS", "SPLITS", "CleanPairs", "DataError", "Row", "clean_text",
    "count_tokens", "detect_format", "filter_pairs", "prepare_corpus", "read_pairs",
    "read_prepared_split", "resolve_languages", "split_of",
]  # fmt: skip

SPLITS = ("train", "valid", "test")
DROP_REASONS = (
    "unpaired_verse",  # Bible: the verse exists in one edition only
    "merged_verse",  # Bible: an edition merged this verse with its neighbours ("-")
    "omitted_verse",  # Bible: an edition omits the verse ("(*)", "[]": textual variants)
    "empty_source",
    "empty_target",
    "too_long",  # over data.max_chars characters or data.max_tokens tokens, either side
    "no_text",  # a side with no letter or digit in any script ("-", "[]", "(*)")
    "too_short",  # under data.min_tokens tokens, either side
    "duplicate",  # exact duplicate of an earlier pair from the same source
    "length_ratio",  # src/tgt char ratio over max_length_ratio x the corpus median
    "overlaps_eval",  # a train pair whose source sentence is also in valid or test
)
_WRITE_CHUNK = 50_000  # pairs per Parquet row group


def resolve_languages(cfg: DataConfig) -> DataConfig:
    """For the Bible corpus the editions decide the languages, so that changing only
    `data.source` (bible:l-4, bible:c-4) is enough; other sources keep data.*_lang."""
    if not is_bible_source(cfg.source):
        return cfg
    src_lang, tgt_lang = bible_languages(cfg.source)
    return dataclasses.replace(cfg, src_lang=src_lang, tgt_lang=tgt_lang)


def split_of(pair_id: str, valid_fraction: float, test_fraction: float) -> str:
    """Deterministic split from a 64-bit BLAKE2b hash of the stable pair id."""
    digest = hashlib.blake2b(pair_id.encode("utf-8"), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2.0**64
    if u < test_fraction:
        return "test"
    if u < test_fraction + valid_fraction:
        return "valid"
    return "train"


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
            src = clean_with(raw_src, cfg)
            tgt = clean_with(raw_tgt, cfg)
            reason = pair_drop_reason(src, tgt, cfg)
            if reason is None and cfg.drop_duplicates:
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


def _split_report(
    src: list[str], tgt: list[str], token_lengths: dict[str, np.ndarray] | None = None
) -> dict[str, Any]:
    """Pair count and length percentiles; `token_lengths` collects the arrays if given."""
    report: dict[str, Any] = {"pairs": len(src)}
    for side, texts in (("src", src), ("tgt", tgt)):
        report[f"{side}_chars"] = _length_stats(_lengths(texts))
        tokens = np.fromiter(map(count_tokens, texts), np.int64, count=len(texts))
        report[f"{side}_tokens"] = _length_stats(tokens)
        if token_lengths is not None:
            token_lengths[side] = tokens
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
    cfg = resolve_languages(cfg)
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
    if cfg.remove_eval_overlap and not all(train_keep):
        main.drops["overlaps_eval"] += train_keep.count(False)
        splits["train"] = tuple(list(itertools.compress(c, train_keep)) for c in splits["train"])
    drops = Counter(dict.fromkeys(DROP_REASONS, 0))
    for part in parts.values():
        drops.update(part.drops)
    pairs_read = sum(p.read for p in parts.values())
    if not splits["train"][0]:
        _raise_empty(cfg.source, pairs_read, drops)
    t_split = time.perf_counter()

    train_lengths: dict[str, np.ndarray] = {}
    report: dict[str, Any] = {
        "source": cfg.source,
        "valid_source": cfg.valid_source,
        "test_source": cfg.test_source,
        "languages": {"src": cfg.src_lang, "tgt": cfg.tgt_lang},
        "formats": {split: p.format for split, p in parts.items()},
        "pairs_read": pairs_read,
        "pairs_kept": sum(len(s[0]) for s in splits.values()),
        "drops": dict(drops),
        "drops_by_source": {split: dict(p.drops) for split, p in parts.items()},
        "splits": {
            split: _split_report(s[1], s[2], train_lengths if split == "train" else None)
            for split, s in splits.items()
        },
        "settings": {**dataclasses.asdict(cfg), "max_length_ratio": max_ratio},
    }
    _write_outputs(out_dir, splits, report, t0, t_read, t_split, train_lengths)
    return report


def _write_outputs(
    out_dir: Path,
    splits: dict[str, tuple[list[str], list[str], list[str]]],
    report: dict[str, Any],
    t0: float,
    t_read: float,
    t_split: float,
    train_lengths: dict[str, np.ndarray],
) -> None:
    """Write everything into a sibling temp dir, then rename into place (report last)."""
    with staging_dir(out_dir) as tmp:
        for split, columns in splits.items():
            _write_parquet(tmp / f"{split}.parquet", *columns)
        plot_length_histogram(
            train_lengths["src"],
            train_lengths["tgt"],
            tmp / "lengths.png",
            f"{report['source']}: train token lengths ({len(splits['train'][0]):,} pairs)",
        )
        t_write = time.perf_counter()
        total = t_write - t0
        report["timing"] = {
            "read_clean_s": round(t_read - t0, 3),
            "split_s": round(t_split - t_read, 3),
            "write_s": round(t_write - t_split, 3),
            "total_s": round(total, 3),
            "pairs_per_s": round(report["pairs_read"] / max(total, 1e-9), 1),
        }
        write_json(tmp / "report.json", report)
        names = [f"{s}.parquet" for s in SPLITS] + ["lengths.png", "report.json"]
        publish(tmp, out_dir, names)


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
